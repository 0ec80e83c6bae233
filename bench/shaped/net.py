"""Network namespaces for the SuperLink and each SuperNode, joined by shaped veth pairs."""

from __future__ import annotations

import subprocess
import sys
import time

# Receiver / sender of the link check: bytes over one TCP connection, payload rate.
RATE_CODE = """
import socket, sys, time
role, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if role == "recv":
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port)); srv.listen(1); print("ready", flush=True)
    conn, _ = srv.accept(); n = 0
    while True:
        chunk = conn.recv(1 << 20)
        if not chunk: break
        n += len(chunk)
    conn.sendall(b"k"); conn.close()
else:
    size = int(sys.argv[4]); sock = socket.create_connection((host, port), timeout=120)
    buf = b"x" * 65536; sent = 0; t0 = time.perf_counter()
    while sent < size:
        sock.sendall(buf); sent += len(buf)
    sock.shutdown(socket.SHUT_WR); sock.recv(1)  # the receiver has read everything
    print(sent, time.perf_counter() - t0)
"""


def log(msg: str) -> None:
    """A progress line on stdout, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command, output captured; raise with its output if it fails."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc


def burst_bytes(rate_bps: float) -> int:
    """Burst of the token bucket: 10 ms at the rate, at least 64 kB.

    veth has a 1500-byte MTU (no 64 kB loopback packets), so small bursts pass; a
    burst below rate / HZ would cap the rate at high bandwidths.
    """
    return max(64 * 1024, int(rate_bps / 8 * 0.01))


class ShapedNet:
    """Network namespaces for the SuperLink and each SuperNode, joined by shaped veth pairs.

    Parameters
    ----------
    prefix : str
        Namespace and interface name prefix (names must stay within 15 characters).
    nodes : int
        Number of SuperNode namespaces.
    subnet : str
        First two octets; node ``i`` gets ``SUBNET.i.2``, its link end ``SUBNET.i.1``.
    """

    def __init__(self, prefix: str, nodes: int, subnet: str = "10.213") -> None:
        self.prefix = prefix
        self.link = f"{prefix}-link"
        self.nodes = [f"{prefix}-n{i}" for i in range(nodes)]
        self.subnet = subnet
        self.created: list[str] = []

    def link_ip(self, i: int) -> str:
        """Address of node ``i``'s link end in the link namespace."""
        return f"{self.subnet}.{i}.1"

    def node_ip(self, i: int) -> str:
        """Address of node ``i`` in its own namespace."""
        return f"{self.subnet}.{i}.2"

    def devices(self) -> list[tuple[str, str]]:
        """``(namespace, device)`` of every veth end (both ends of every pair)."""
        out = []
        for i, ns in enumerate(self.nodes):
            out += [(self.link, f"{self.prefix}-l{i}"), (ns, f"{self.prefix}-n{i}")]
        return out

    def create(self) -> None:
        """Create the namespaces and veth pairs (unshaped) and bring them up."""
        for ns in [self.link, *self.nodes]:
            if ns in sh("ip", "netns", "list").stdout.split():
                raise RuntimeError(f"namespace {ns} exists; remove it (ip netns del {ns})")
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for i, ns in enumerate(self.nodes):
            a, b = f"{self.prefix}-l{i}", f"{self.prefix}-n{i}"
            # Created inside the link namespace, so no interface ever shows up in the root one.
            sh("ip", "-n", self.link, "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "-n", self.link, "link", "set", b, "netns", ns)
            sh("ip", "-n", self.link, "addr", "add", f"{self.link_ip(i)}/24", "dev", a)
            sh("ip", "-n", ns, "addr", "add", f"{self.node_ip(i)}/24", "dev", b)
            sh("ip", "-n", self.link, "link", "set", a, "up")
            sh("ip", "-n", ns, "link", "set", b, "up")

    def shape(self, mbit: float) -> None:
        """Shape the egress of every veth end with tbf: ``mbit`` Mbit/s each way on each link."""
        rate = mbit * 1e6
        for ns, dev in self.devices():
            sh(
                "ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
                "rate", f"{int(rate)}bit", "burst", str(burst_bytes(rate)), "latency", "400ms",
            )  # fmt: skip

    def drops(self) -> int:
        """Packets the tbf qdiscs dropped so far (all veth ends)."""
        total = 0
        for ns, dev in self.devices():
            out = sh("ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", dev).stdout
            words = out.replace(",", " ").replace("(", " ").split()
            if "dropped" in words:
                total += int(words[words.index("dropped") + 1])
        return total

    def destroy(self) -> None:
        """Remove the namespaces this object created."""
        # Deleting a namespace deletes the veth ends inside it (and so their peers).
        for ns in reversed(self.created):
            sh("ip", "netns", "del", ns, check=False)
        self.created.clear()


def measure_rate(net: ShapedNet, i: int, direction: str, size: int, port: int) -> float:
    """Payload Mbit/s of one TCP transfer of ``size`` bytes over node ``i``'s link."""
    if direction == "up":  # node -> SuperLink
        recv_ns, recv_ip, send_ns = net.link, net.link_ip(i), net.nodes[i]
    else:
        recv_ns, recv_ip, send_ns = net.nodes[i], net.node_ip(i), net.link
    py = sys.executable
    recv = subprocess.Popen(
        ["ip", "netns", "exec", recv_ns, py, "-c", RATE_CODE, "recv", recv_ip, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        recv.stdout.readline()  # "ready"
        out = sh(
            "ip", "netns", "exec", send_ns, py, "-c", RATE_CODE, "send", recv_ip, str(port),
            str(size), timeout=300,
        ).stdout.split()  # fmt: skip
    finally:
        recv.wait(timeout=30)
    sent, seconds = int(out[0]), float(out[1])
    return sent * 8 / seconds / 1e6
