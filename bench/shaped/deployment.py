"""The deployment of ``deploy/`` (TLS, node authentication, proxy) inside the namespaces."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from bench.common import ROOT
from bench.shaped.net import ShapedNet, log, sh

DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
PATH = os.pathsep.join([str(BIN), os.environ["PATH"], "/usr/sbin"])
CONNECTION = "shaped"


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
