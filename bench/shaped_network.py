"""Round time on shaped links: the real deployment at several bandwidths per node.

The deployment of ``deploy/`` (SuperLink with TLS, node authentication and the
Fleet-only proxy; registered SuperNodes) runs inside Linux network namespaces:

```
 namespace PREFIX-link                         namespace PREFIX-nI (one per SuperNode)
 nginx 0.0.0.0:PORT, flower-superlink           flower-supernode -> 10.213.I.1:PORT
 127.0.0.1:PORT+1, SuperExec, ServerApp,        its ClientApps (127.0.0.1, loopback)
 the operator's flwr run
      10.213.I.1 PREFIX-lI  <==== veth pair ====>  PREFIX-nI 10.213.I.2
                 tbf egress                        tbf egress
```

Each veth end's egress is shaped with a token-bucket filter (``tc qdisc tbf``) at
the bandwidth, so every node has its own link of that rate in both directions
(netem is not available here; tbf is). First the script measures the payload rate
a plain TCP socket achieves through each shaped link, both directions; then, at
each bandwidth and for each strategy, one ``flwr run`` on the same deployment, and
per round it records

* wall time (the ServerApp's ``round-seconds``: configure train to the end of
  evaluate),
* client compute: the slowest node's train + generate seconds plus the slowest
  node's evaluate seconds (the nodes run in parallel, each phase waits for the
  last reply), from the run's ``clients.jsonl``,
* server seconds (``server-seconds``: validation, embedding, consensus / FedAvg),
* bytes per node, both directions (the app's byte meter, ``metrics.json``),
* rest = wall - compute - server: transfer plus Flower's scheduling and the start
  of a ClientApp process per message (imports, model load from the cache). The
  same overhead exists without shaping, so the transfer share is estimated as
  ``rest - rest at the highest bandwidth`` (where the bytes take well under a
  second) plus the model's transfer time there.

Then the round-time model (``fedsem_app.tools.roundtime``) is checked against the
points, and the crossover bandwidth is computed for SmolLM2 (measured) and
projected for Llama-3.1-8B/70B/405B from the analytic adapter bytes and a stated
generation-speed assumption.

Run as root from the project root (needs ``ip netns``, ``tc``, nginx, openssl)::

    python bench/shaped_network.py                     # 1000,100,20,5 Mbit/s, both strategies
    python bench/shaped_network.py --bandwidths 100,5 --strategies fedsem --out /tmp/shaped
    python bench/shaped_network.py --report /tmp/shaped   # tables again from its results

Everything it starts (namespaces, veth pairs, processes) is removed on exit, also
on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    human_bytes,
    machine,
    markdown,
    output_folder,
    read_jsonl,
    write_results,
)
from fedsem_app.tools import analytic, roundtime  # noqa: E402
from fedsem_app.tools.compare import run_config_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
PATH = os.pathsep.join([str(BIN), os.environ["PATH"], "/usr/sbin"])
CONNECTION = "shaped"

# The setting both strategies run (small so that every point fits in minutes on 2 cores).
SETTING = {
    "num-server-rounds": 2,
    "model.names": "smollm2-135m",
    "train.local-steps": 2,
    "train.batch-size": 4,
    "train.max-seq-len": 96,
    # Two ClientApps share two cores: one torch thread each, no oversubscription.
    "train.num-threads": 1,
    "gen.max-new-tokens": 32,
    "fedsem.prompts-per-round": 8,
    "eval.num-prompts": 4,
    "eval.generate": False,
    "round-timeout": 900,
}

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

# Warm the model cache once, outside the timed runs (SmolLM2's GGUF conversion).
WARM_CODE = """
import sys
from pathlib import Path
from fedsem_app.clients import load_client
from fedsem_app.config import LoraConfig
load_client(sys.argv[1], LoraConfig(), device="cpu", cache_dir=Path(sys.argv[2]))
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


class Deployment:
    """The deploy/ scripts, each run in the namespace of the process it starts.

    Parameters
    ----------
    work : Path
        Folder for certificates, keys, PID files, logs, FLWR_HOME and run profiles.
    net : ShapedNet
        The namespaces.
    port : int
        The proxy's port in the link namespace (the SuperLink itself on ``port + 1``,
        each SuperNode's Runtime API on ``port + 2`` in its own namespace).
    """

    def __init__(self, work: Path, net: ShapedNet, port: int) -> None:
        self.work = work
        self.net = net
        self.port = port
        self.run_dir = work / "run"
        self.env = dict(
            os.environ,
            PATH=PATH,
            FLWR_HOME=str(work / "flwr"),
            FEDSEM_DEPLOY_DIR=str(self.run_dir),
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            # flwr reuses a local SuperLink on these ports; ours are in the namespace anyway.
            FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(port + 10),
            FLWR_LOCAL_CONTROL_API_PORT=str(port + 11),
            OMP_WAIT_POLICY="PASSIVE",
        )

    def script(self, ns: str | None, name: str, *args: str, timeout: float = 180) -> str:
        """Run ``deploy/NAME ARGS`` in namespace ``ns`` (None: this one); its stdout."""
        prefix = ["ip", "netns", "exec", ns] if ns else []
        cmd = [*prefix, str(DEPLOY / name), *args]
        return sh(*cmd, cwd=ROOT, env=self.env, timeout=timeout).stdout

    def start(self, model: str) -> None:
        """Certificates, node keys, SuperLink, connection, registration, SuperNodes."""
        net, certs, keys = self.net, self.work / "certs", self.work / "keys"
        names = [f"node{i}" for i in range(len(net.nodes))]
        ips = [net.link_ip(i) for i in range(len(net.nodes))]
        self.script(None, "make-certs.sh", "-o", str(certs), *ips)
        self.script(None, "make-node-keys.sh", "-o", str(keys), *names)
        log(f"starting the SuperLink (TLS, node auth, proxy) in namespace {net.link}")
        self.script(
            net.link, "start-superlink.sh",
            "--certs", str(certs), "--host", "0.0.0.0", "--port", str(self.port),
            "--local-port", str(self.port + 1), "--database", "memory",
        )  # fmt: skip
        self.script(
            None, "add-connection.sh", CONNECTION, f"127.0.0.1:{self.port + 1}",
            "--root-certificates", str(certs / "ca.crt"),
        )  # fmt: skip
        self.script(net.link, "register-nodes.sh", CONNECTION, *(f"{keys / n}.pub" for n in names))
        for i, (ns, name) in enumerate(zip(net.nodes, names, strict=True)):
            log(f"starting SuperNode {name} in namespace {ns} -> {ips[i]}:{self.port}")
            self.script(
                ns, "start-supernode.sh",
                "--superlink", f"{ips[i]}:{self.port}",
                "--root-certificates", str(certs / "ca.crt"),
                "--auth-supernode-private-key", str(keys / name),
                "--port", str(self.port + 2), "--name", name, "--wait", "120",
                "--model-name", model, "--partition-id", str(i),
                "--num-partitions", str(len(names)),
            )  # fmt: skip

    def flwr_run(self, profile: Path, timeout: float) -> float:
        """``flwr run`` in the link namespace (the Control API is on its loopback)."""
        cmd = ["ip", "netns", "exec", self.net.link, "flwr", "run", ".", CONNECTION]
        cmd += ["--stream", "--run-config", str(profile)]
        t0 = time.perf_counter()
        sh(*cmd, cwd=ROOT, env=self.env, timeout=timeout)
        return time.perf_counter() - t0

    def stop(self) -> None:
        """deploy/stop.sh, then SIGKILL to any process group a PID file still names."""
        if not self.run_dir.is_dir():
            return
        sh(str(DEPLOY / "stop.sh"), check=False, cwd=ROOT, env=self.env, timeout=120)
        for pid_file in self.run_dir.glob("*.pid"):
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError):
                pass


def round_rows(folder: Path, strategy: str, mbit: float, goodput: float, nodes: int) -> list[dict]:
    """Per-round wall, compute, server, bytes per node and rest of one run folder."""
    metrics = json.loads((folder / "metrics.json").read_text())
    phases: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in read_jsonl(folder / "clients.jsonl"):
        if c["phase"] == "train":
            phases[c["round"]]["train"].append(c.get("train-seconds", 0.0))
            phases[c["round"]]["train+gen"].append(
                c.get("train-seconds", 0.0) + c.get("generate-seconds", 0.0)
            )
            phases[c["round"]]["gen"].append(c.get("generate-seconds", 0.0))
        else:
            phases[c["round"]]["eval"].append(c.get("eval-seconds", 0.0))
    rows = []
    for m in metrics:
        if m["round"] == 0:  # the evaluation before training
            continue
        p = phases[m["round"]]
        compute = max(p["train+gen"], default=0.0) + max(p["eval"], default=0.0)
        server = m.get("server-seconds", 0.0)
        up = (m.get("bytes-up-train", 0) + m.get("bytes-up-evaluate", 0)) / nodes
        down = (m.get("bytes-down-train", 0) + m.get("bytes-down-evaluate", 0)) / nodes
        rows.append(
            {
                "strategy": strategy,
                "mbit": mbit,
                "goodput-mbit": goodput,
                "round": m["round"],
                "wall-s": m["round-seconds"],
                "train-s": max(p["train"], default=0.0),
                "generate-s": max(p["gen"], default=0.0),
                "evaluate-s": max(p["eval"], default=0.0),
                "compute-s": compute,
                "server-s": server,
                "rest-s": m["round-seconds"] - compute - server,
                "bytes-up-node": up,
                "bytes-down-node": down,
                "model-transfer-s": roundtime.transfer_seconds(up + down, goodput * 1e6),
            }
        )
    return rows


def add_transfer(rows: list[dict]) -> None:
    """Transfer estimate: rest minus the overhead seen at the highest bandwidth.

    The overhead of a strategy (scheduling, ClientApp start-up) is its mean rest at
    the highest bandwidth minus the model's transfer time there.
    """
    for strategy in {r["strategy"] for r in rows}:
        mine = [r for r in rows if r["strategy"] == strategy]
        top = max(r["mbit"] for r in mine)
        base = [r["rest-s"] - r["model-transfer-s"] for r in mine if r["mbit"] == top]
        overhead = mean(base)
        for r in mine:
            r["overhead-s"] = overhead
            r["transfer-s"] = r["rest-s"] - overhead
            r["transfer-share"] = r["transfer-s"] / r["wall-s"]


def model_check(rows: list[dict]) -> list[dict]:
    """Predicted against measured round time, per point (strategy, bandwidth, round).

    Two predictions: with the round's own compute (checks the transfer part), and with
    the strategy's mean compute + server over all its rounds (a forecast from the
    measured throughput alone).
    """
    out = []
    for strategy in sorted({r["strategy"] for r in rows}):
        mine = [r for r in rows if r["strategy"] == strategy]
        mean_fixed = mean(r["compute-s"] + r["server-s"] for r in mine) + mine[0]["overhead-s"]
        for r in mine:
            own = roundtime.round_seconds(
                r["compute-s"] + r["server-s"] + r["overhead-s"],
                r["bytes-up-node"],
                r["bytes-down-node"],
                r["goodput-mbit"] * 1e6,
            )
            forecast = roundtime.round_seconds(
                mean_fixed, r["bytes-up-node"], r["bytes-down-node"], r["goodput-mbit"] * 1e6
            )
            out.append(
                {
                    "strategy": strategy,
                    "mbit": r["mbit"],
                    "round": r["round"],
                    "measured-s": r["wall-s"],
                    "predicted-own-s": own,
                    "error-own": own / r["wall-s"] - 1,
                    "predicted-mean-s": forecast,
                    "error-mean": forecast / r["wall-s"] - 1,
                }
            )
    return out


# Projection assumptions (stated in the tables' notes).
CPU_BANDWIDTH = 39.8e9  # B/s, measured here (BENCHMARKS 4b)
CPU_FRACTION = 0.042  # SmolLM2, batch 16, float32 (BENCHMARKS 4b)
GPU_BANDWIDTH = 3.35e12  # B/s per GPU: H100 SXM HBM3, datasheet
GPU_FRACTION = 0.5  # assumed for batched decoding; not measured here
GPUS = {"SmolLM2-135M": 1, "Llama-3.1-8B": 1, "Llama-3.1-70B": 2, "Llama-3.1-405B": 16}
PROJECTED = ("Llama-3.1-8B", "Llama-3.1-70B", "Llama-3.1-405B")


def crossover_rows(rows: list[dict], setting: dict, shared_nodes: int) -> list[dict]:
    """Crossover bandwidth per model size: SmolLM2 measured, larger models projected.

    Measured, two ways: FedSem's extra fixed seconds per round as (a) the difference
    of compute + server + overhead (everything but the bytes, mean over rounds), and
    (b) of compute + server only (the overhead of a ClientApp process per message is
    the same for both strategies, two messages a round, so its difference is noise).
    Bytes per node and round: the measured means. Projected: FedSem bytes as
    measured (text does not grow with the model); FedAvg-LoRA bytes = the measured
    SmolLM2 bytes scaled by the analytic adapter size (rank 8, q/k/v/o, float32, as
    measured); FedSem's extra seconds = the projected generation of the model
    (``roundtime.decode_seconds``) plus the measured extra server work (embedding
    and consensus do not depend on the client model). Training and evaluation are
    the same code and steps for both strategies, so they cancel.
    """

    def mean_of(strategy: str, key) -> float:
        return mean(key(r) for r in rows if r["strategy"] == strategy)

    if not {"fedsem", "fedavg-lora"} <= {r["strategy"] for r in rows}:
        return []
    both = ("fedsem", "fedavg-lora")
    fixed = {
        s: mean_of(s, lambda r: r["compute-s"] + r["server-s"] + r["overhead-s"]) for s in both
    }
    work = {s: mean_of(s, lambda r: r["compute-s"] + r["server-s"]) for s in both}
    server = {s: mean_of(s, lambda r: r["server-s"]) for s in both}
    sent = {s: mean_of(s, lambda r: r["bytes-up-node"] + r["bytes-down-node"]) for s in both}
    generate = mean_of("fedsem", lambda r: r["generate-s"])
    rank, targets = 8, "attention"
    steps = int(setting["gen.max-new-tokens"])  # one batch: prompts <= gen.batch-size (16)

    def row(name: str, lora: float, extra: float, source: str, gen: float) -> dict:
        bw = roundtime.crossover_bandwidth(extra, sent["fedsem"], 0.0, lora)
        shared = roundtime.crossover_bandwidth(extra, sent["fedsem"], 0.0, lora, shared_nodes)
        return {
            "model": name,
            "source": source,
            "lora-bytes-node": lora,
            "fedsem-bytes-node": sent["fedsem"],
            "generate-s": gen,
            "extra-fixed-s": extra,
            "crossover-mbit": bw / 1e6,
            "crossover-shared-mbit": shared / 1e6,
        }

    lora = sent["fedavg-lora"]
    measured = (
        "SmolLM2-135M" if setting["model.names"] == "smollm2-135m" else setting["model.names"]
    )
    out = [
        row(measured, lora, fixed["fedsem"] - fixed["fedavg-lora"],
            "measured: compute + server + overhead", generate),
        row(measured, lora, work["fedsem"] - work["fedavg-lora"],
            "measured: compute + server", generate),
    ]  # fmt: skip
    if setting["model.names"] != "smollm2-135m":
        return out  # the projections scale SmolLM2's measured adapter bytes
    smol = analytic.get_architecture("SmolLM2-135M")
    smol_adapter = analytic.lora_parameters(smol, rank, targets)
    extra_server = server["fedsem"] - server["fedavg-lora"]
    # The model on these cores (float32, the measured fraction of the bound) as a check.
    gen = roundtime.decode_seconds(smol.num_parameters() * 4, steps, CPU_BANDWIDTH, CPU_FRACTION)
    out.append(row("SmolLM2-135M", lora, gen + extra_server, "model, these CPUs (check)", gen))
    for name in PROJECTED:
        arch = analytic.get_architecture(name)
        # bf16 weights spread over GPUS[name] GPUs (tensor parallel), assumed fraction.
        bandwidth = GPU_BANDWIDTH * GPUS[name]
        gen = roundtime.decode_seconds(arch.num_parameters() * 2, steps, bandwidth, GPU_FRACTION)
        scaled = lora * analytic.lora_parameters(arch, rank, targets) / smol_adapter
        label = f"projection, {GPUS[name]} GPU" + ("s" if GPUS[name] > 1 else "")
        out.append(row(name, scaled, gen + extra_server, label, gen))
    return out


LINK_COLUMNS = [
    ("mbit", "tbf rate Mbit/s", ".0f"),
    ("burst", "burst", ""),
    ("up-mbit", "payload up Mbit/s", ".2f"),
    ("down-mbit", "payload down Mbit/s", ".2f"),
    ("ratio", "payload / rate", ".3f"),
]
ROUND_COLUMNS = [
    ("pass", "pass", ""),
    ("mbit", "Mbit/s", ".0f"),
    ("strategy", "strategy", ""),
    ("round", "round", ""),
    ("wall-s", "wall s", ".1f"),
    ("train-s", "train s", ".1f"),
    ("generate-s", "generate s", ".1f"),
    ("evaluate-s", "evaluate s", ".1f"),
    ("server-s", "server s", ".2f"),
    ("rest-s", "rest s", ".1f"),
    ("transfer-s", "transfer s", ".1f"),
    ("model-transfer-s", "bytes / goodput s", ".2f"),
    ("transfer-share-pct", "transfer share %", ".0f"),
    ("bytes", "bytes / node (up + down)", ""),
]
MEAN_COLUMNS = [
    ("mbit", "Mbit/s", ".0f"),
    ("strategy", "strategy", ""),
    ("wall-s", "round s", ".1f"),
    ("compute-s", "compute s", ".1f"),
    ("server-s", "server s", ".2f"),
    ("transfer-s", "transfer s", ".1f"),
    ("transfer-share-pct", "transfer share %", ".0f"),
    ("bytes", "bytes / node", ""),
]
CHECK_COLUMNS = [
    ("mbit", "Mbit/s", ".0f"),
    ("strategy", "strategy", ""),
    ("round", "round", ""),
    ("measured-s", "measured s", ".1f"),
    ("predicted-own-s", "predicted (own compute) s", ".1f"),
    ("error-own-pct", "error %", "+.1f"),
    ("predicted-mean-s", "predicted (mean compute) s", ".1f"),
    ("error-mean-pct", "error %", "+.1f"),
]
CROSS_COLUMNS = [
    ("model", "model", ""),
    ("source", "source", ""),
    ("lora", "FedAvg-LoRA bytes / node / round", ""),
    ("fedsem", "FedSem bytes / node / round", ""),
    ("generate-s", "generate s / round", ".2f"),
    ("extra-fixed-s", "FedSem extra fixed s / round", ".2f"),
    ("crossover", "crossover Mbit/s (own link per node)", ""),
    ("crossover-shared", "crossover Mbit/s (one link, K nodes)", ""),
]


def fmt_mbit(value: float) -> str:
    """A crossover bandwidth for a table cell."""
    if math.isinf(value):
        return "always faster"
    if value == 0:
        return "never faster"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def report(folder: Path) -> None:
    """Print and write the Markdown tables from ``folder/shaped_network.json``."""
    data = json.loads((folder / "shaped_network.json").read_text())
    meta, rows = data["meta"], data["rows"]
    # Derived numbers are recomputed from the measured rows (the model may have changed).
    add_transfer(rows)
    meta["model-check"] = model_check(rows)
    meta["crossover"] = crossover_rows(rows, meta["setting"], meta["shared-nodes"])
    write_results(folder, "shaped_network", rows, meta)
    links, checks, cross = meta["links"], meta["model-check"], meta["crossover"]
    for r in rows:
        r["transfer-share-pct"] = 100 * r["transfer-share"]
        r["bytes"] = human_bytes(r["bytes-up-node"] + r["bytes-down-node"])
    means = []
    for mbit in sorted({r["mbit"] for r in rows}, reverse=True):
        for strategy in meta["strategies"]:
            mine = [r for r in rows if r["mbit"] == mbit and r["strategy"] == strategy]
            if not mine:
                continue
            keys = ("wall-s", "compute-s", "server-s", "transfer-s", "bytes-up-node")
            avg = {k: mean(r[k] for r in mine) for k in (*keys, "bytes-down-node")}
            avg.update(mbit=mbit, strategy=strategy)
            avg["transfer-share-pct"] = 100 * avg["transfer-s"] / avg["wall-s"]
            avg["bytes"] = human_bytes(avg["bytes-up-node"] + avg["bytes-down-node"])
            means.append(avg)
    for c in checks:
        c["error-own-pct"] = 100 * c["error-own"]
        c["error-mean-pct"] = 100 * c["error-mean"]
    for c in cross:
        c["lora"] = human_bytes(c["lora-bytes-node"])
        c["fedsem"] = human_bytes(c["fedsem-bytes-node"])
        c["crossover"] = fmt_mbit(c["crossover-mbit"])
        c["crossover-shared"] = fmt_mbit(c["crossover-shared-mbit"])
    errors = [abs(c["error-own"]) for c in checks]
    forecast = [abs(c["error-mean"]) for c in checks]
    text = "\n\n".join(
        [
            "## links: payload rate of one TCP connection through each shaped veth pair",
            markdown(links, LINK_COLUMNS),
            "## rounds (compute = slowest node's train + generate, plus slowest evaluate)",
            markdown(rows, ROUND_COLUMNS if any("pass" in r for r in rows) else ROUND_COLUMNS[1:]),
            "## mean over rounds",
            markdown(means, MEAN_COLUMNS),
            "## model check: compute + server + overhead + bytes / goodput",
            markdown(checks, CHECK_COLUMNS),
            f"mean |error|: own compute {100 * mean(errors):.1f} % (max "
            f"{100 * max(errors):.1f} %), mean compute {100 * mean(forecast):.1f} % "
            f"(max {100 * max(forecast):.1f} %)"
            if checks
            else "",
            f"## crossover (K = {meta['shared-nodes']} nodes for the shared link)",
            markdown(cross, CROSS_COLUMNS) if cross else "(needs fedsem and fedavg-lora)",
        ]
    )
    (folder / "shaped_network.md").write_text(text + "\n")
    print(text)
    print(f"\nresults in {folder}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bandwidths", default="1000,100,20,5", help="Mbit/s per node, comma list")
    parser.add_argument("--strategies", default="fedsem,fedavg-lora", help="comma list")
    parser.add_argument("--nodes", type=int, default=2, help="SuperNodes (default 2)")
    parser.add_argument("--model", default="smollm2-135m", help="every node's model")
    parser.add_argument("--rounds", type=int, default=SETTING["num-server-rounds"])
    parser.add_argument("--out", help="output folder (default /tmp/fedsem-bench/shaped-...)")
    parser.add_argument("--cache-dir", help="model cache (default: the app's, ~/.fedsem/models)")
    parser.add_argument("--netns-prefix", default="fsbw", help="namespace/interface prefix")
    parser.add_argument("--subnet", default="10.213", help="first two octets of the links")
    parser.add_argument("--port", type=int, default=29400, help="proxy port (+1, +2 used too)")
    parser.add_argument(
        "--shared-nodes", type=int, default=10, help="K for the one-shared-link crossover column"
    )
    parser.add_argument("--report", metavar="DIR", help="only print the tables of a finished DIR")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Set up the namespaces and the deployment, run every point, write the tables."""
    args = parse_args(argv)
    if args.report:
        report(Path(args.report))
        return 0
    for cmd in ("ip", "tc", "nginx", "openssl", "ssh-keygen", "flwr"):
        if shutil.which(cmd, path=PATH) is None:
            raise SystemExit(f"{cmd} not found on PATH (see the docstring)")
    if os.geteuid() != 0:
        raise SystemExit("network namespaces and tc need root")
    bandwidths = [float(b) for b in args.bandwidths.split(",")]
    strategies = args.strategies.split(",")
    folder = output_folder("shaped", args.out)
    work = folder / "work"
    cache = Path(args.cache_dir) if args.cache_dir else Path.home() / ".fedsem" / "models"
    setting = {**SETTING, "num-server-rounds": args.rounds, "model.names": args.model}
    setting.update({"min-clients": args.nodes, "model.cache-dir": str(cache)})
    net = ShapedNet(args.netns_prefix, args.nodes, args.subnet)
    dep = Deployment(work, net, args.port)
    # SIGTERM (and SIGHUP) end the run like Ctrl-C, so the finally block cleans up.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    rows: list[dict] = []
    links: list[dict] = []
    meta = {"machine": machine(), "setting": setting, "strategies": strategies}
    meta.update({"nodes": args.nodes, "shared-nodes": args.shared_nodes})
    try:
        log(f"warming the model cache {cache} ({args.model})")
        sh(sys.executable, "-c", WARM_CODE, args.model, str(cache), cwd=ROOT, env=dep.env)
        log(f"creating namespaces {net.link}, {', '.join(net.nodes)}")
        net.create()
        goodput = {}
        for mbit in bandwidths:
            net.shape(mbit)
            size = int(min(max(mbit * 1e6 / 8 * 2, 1e6), 250e6))  # about 2 s of traffic
            up = measure_rate(net, 0, "up", size, args.port + 5)
            down = measure_rate(net, 0, "down", size, args.port + 5)
            goodput[mbit] = (up + down) / 2
            burst = human_bytes(burst_bytes(mbit * 1e6))
            links.append({"mbit": mbit, "burst": burst, "up-mbit": up, "down-mbit": down})
            links[-1]["ratio"] = goodput[mbit] / mbit
            log(f"link at {mbit:g} Mbit/s (burst {burst}): up {up:.2f}, down {down:.2f} Mbit/s")
        net.shape(max(bandwidths))
        dep.start(args.model)
        for mbit in bandwidths:
            net.shape(mbit)
            for strategy in strategies:
                name = f"{strategy}-{mbit:g}mbit"
                values = {**setting, "strategy": strategy, "run-name": name}
                values["results-dir"] = str(folder / "runs")
                profile = work / f"{name}.toml"
                profile.write_text(run_config_text(values))
                log(f"run {name}")
                drops = net.drops()
                seconds = dep.flwr_run(profile, timeout=3600)
                new = round_rows(folder / "runs" / name, strategy, mbit, goodput[mbit], args.nodes)
                for r in new:
                    r["tbf-drops"] = net.drops() - drops
                rows += new
                walls = ", ".join(f"{r['wall-s']:.1f}" for r in new)
                log(f"run {name} done in {seconds:.0f} s; rounds {walls} s")
    except KeyboardInterrupt:
        log(f"interrupted: tables of the {len(rows)} rounds finished so far")
    finally:
        log("stopping the deployment and removing the namespaces")
        dep.stop()
        net.destroy()
    if not rows:
        return 1
    meta["links"] = links
    meta["assumptions"] = {
        "cpu-bandwidth": CPU_BANDWIDTH,
        "cpu-fraction": CPU_FRACTION,
        "gpu-bandwidth": GPU_BANDWIDTH,
        "gpu-fraction": GPU_FRACTION,
        "gpus": GPUS,
    }
    write_results(folder, "shaped_network", rows, meta)
    report(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
