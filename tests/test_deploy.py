"""A real deployment on loopback: TLS, SuperNode authentication, three SuperNodes.

Everything goes through the deploy/ scripts and the installed Flower binaries:
certificates and node keys are made, a SuperLink starts with TLS and node
authentication, three registered SuperNodes (each its own tiny model and
partition) run two FedSem rounds through `flwr run`, and a SuperNode whose key
was never registered is refused. Ports are free ones picked at run time and
every path (FLWR_HOME, PID files, logs, model cache) is a temporary folder, so
parallel runs do not collide. Every process started here is stopped at the end,
also when a test fails.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_flwr_run import write_profile

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
MODELS = ("tiny-llama", "tiny-gpt2", "tiny-qwen2")
CONNECTION = "fedsem-test"
# Flower's binaries come from this interpreter's environment, first on PATH.
PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
NEEDED = ("flower-superlink", "flower-supernode", "flwr", "openssl", "ssh-keygen", "setsid")
MISSING = [cmd for cmd in NEEDED if shutil.which(cmd, path=PATH) is None]

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"not on PATH: {', '.join(MISSING)}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )


class Deployment:
    """The temporary folders, environment and script runner of one loopback deployment."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.run_dir = base / "run"  # PID files and logs (FEDSEM_DEPLOY_DIR)
        self.certs = base / "certs"
        self.keys = base / "keys"
        self.cache = base / "models"
        self.port = free_port()
        self.env = dict(
            os.environ,
            FLWR_HOME=str(base / "flwr"),
            FEDSEM_DEPLOY_DIR=str(self.run_dir),
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            PATH=PATH,
        )

    def script(self, name: str, *args: str, check: bool = True, timeout: float = 120):
        proc = subprocess.run(
            [str(DEPLOY / name), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def start_supernode(self, name: str, key: str, *node_args: str, check: bool = True):
        return self.script(
            "start-supernode.sh",
            "--superlink", f"127.0.0.1:{self.port}",
            "--root-certificates", str(self.certs / "ca.crt"),
            "--auth-supernode-private-key", str(self.keys / key),
            "--port", str(free_port()),
            "--name", name,
            "--wait", "90",
            *node_args,
            check=check,
        )  # fmt: skip

    def stop_all(self) -> None:
        """Stop by PID files with deploy/stop.sh, then kill any process group left."""
        try:
            self.script("stop.sh", check=False, timeout=120)
        finally:
            for pid_file in self.run_dir.glob("*.pid"):
                try:
                    os.killpg(int(pid_file.read_text()), signal.SIGKILL)
                except (ProcessLookupError, PermissionError, ValueError):
                    pass


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A SuperLink with TLS and node auth, its connection, and three registered keys."""
    dep = Deployment(tmp_path_factory.mktemp("deploy"))
    try:
        dep.script("make-certs.sh", "-o", str(dep.certs), "localhost", "127.0.0.1")
        dep.script("make-node-keys.sh", "-o", str(dep.keys), "node0", "node1", "node2", "intruder")
        dep.script(
            "start-superlink.sh",
            "--certs", str(dep.certs),
            "--host", "127.0.0.1",
            "--port", str(dep.port),
            "--database", "memory",
        )  # fmt: skip
        dep.script(
            "add-connection.sh",
            CONNECTION,
            f"127.0.0.1:{dep.port}",
            "--root-certificates",
            str(dep.certs / "ca.crt"),
        )
        # The intruder's key is made but never registered.
        dep.script(
            "register-nodes.sh", CONNECTION, *(str(dep.keys / f"node{i}.pub") for i in range(3))
        )
        yield dep
    finally:
        dep.stop_all()


def test_unregistered_supernode_is_refused(deployment):
    proc = deployment.start_supernode("intruder", "intruder", check=False)

    assert proc.returncode != 0
    node_log = tail(deployment.run_dir / "intruder.log")
    link_log = tail(deployment.run_dir / "superlink.log", 200)
    assert "Failed to activate SuperNode" in node_log, node_log
    assert "No SuperNode found with the given public key" in link_log, link_log
    assert "exited during start-up" in proc.stderr


def prebuild_models(cache: Path) -> None:
    """Build the tiny models and their shared tokenizer once, before the nodes start.

    Otherwise each node's first ClientApp process would train the same tokenizer.
    """
    from fedsem_app.clients import MODEL_REGISTRY

    for name in MODELS:
        MODEL_REGISTRY[name].builder(cache)


# About 3.5-4.5 minutes on 2 busy cores: every message starts a fresh ClientApp process.
@pytest.mark.slow
def test_two_fedsem_rounds_on_three_authenticated_supernodes(deployment):
    # Prepare: three registered SuperNodes, each with its own model and partition.
    dep = deployment
    prebuild_models(dep.cache)
    for i, model in enumerate(MODELS):
        dep.start_supernode(
            f"node{i}",
            f"node{i}",
            "--model-name", model,
            "--partition-id", str(i),
            "--num-partitions", str(len(MODELS)),
        )  # fmt: skip
    profile = write_profile(
        ROOT / "conf" / "quick.toml",
        {
            "results-dir": str(dep.base / "runs"),
            "run-name": "deploy",
            "model.cache-dir": str(dep.cache),
            "min-clients": 3,
            # Offline nodes are answered by the SuperLink within ~60 s (heartbeats); this
            # bounds a node that hangs, well inside the flwr run timeout below.
            "round-timeout": 480,
            # Three ClientApp processes share two cores here: no oversubscription.
            "train.num-threads": 1,
        },
        dep.base / "deploy.toml",
    )

    # Execute
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["flwr", "run", ".", CONNECTION, "--stream", "--run-config", str(profile)],
        cwd=ROOT,
        env=dep.env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    seconds = time.perf_counter() - t0

    # Assert: the run finished and every node answered in every round.
    logs = "\n".join(f"--- {p.name}\n{tail(p)}" for p in sorted(dep.run_dir.glob("*.log")))
    output = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, output + logs
    folder = dep.base / "runs" / "deploy"
    assert (folder / "summary.json").exists(), output + logs
    assert "[round 2/2]" in proc.stdout + proc.stderr
    rows = json.loads((folder / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert row["train-replies"] == 3 and row["eval-replies"] == 3, row
        assert row["dropped-replies"] == 0
    samples = [json.loads(line) for line in (folder / "consensus_samples.jsonl").open()]
    assert {a["model"] for s in samples for a in s["answers"]} == set(MODELS)
    assert len({a["node"] for s in samples for a in s["answers"]}) == 3
    print(f"deployment run: {seconds:.0f} s, rounds {[round(r['round-seconds']) for r in rows]} s")
