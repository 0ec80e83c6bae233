"""A real deployment on loopback: TLS, SuperNode authentication, three SuperNodes.

Everything goes through the deploy/ scripts and the installed Flower binaries:
certificates and node keys are made, a SuperLink starts with TLS and node
authentication on loopback behind the Fleet-only proxy, three registered
SuperNodes (each its own tiny model and partition) run two FedSem rounds
through `flwr run`, a SuperNode whose key was never registered is refused, and
a run goes on when one SuperNode dies mid-round and another one cannot load
its model. Ports are free ones picked at run time (picked again if another
process took one first) and every path (FLWR_HOME, PID files, logs, model
cache) is a temporary folder, so parallel runs do not collide. Every process
started here is stopped by PID at the end, also when a test fails, and the
module checks that none is left.
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
NODES = tuple(f"node{i}" for i in range(len(MODELS)))
BAD_NODES = ("badmodel", "baddata")  # registered, but misconfigured
CONNECTION = "fedsem-test"
PORT_ATTEMPTS = 3  # a free port may be taken by another process before we bind it
# Flower's binaries come from this interpreter's environment, first on PATH; nginx is
# in /usr/sbin, which not every user's PATH holds.
PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"], "/usr/sbin"])
NEEDED = (
    "flower-superlink",
    "flower-superexec",
    "flower-supernode",
    "flwr",
    "nginx",
    "openssl",
    "ssh-keygen",
    "setsid",
)
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
    """The temporary folders, environment and script runner of one loopback deployment.

    Parameters
    ----------
    base : Path
        Temporary folder for everything of this deployment.
    proxy : bool
        The default layout (the SuperLink on loopback behind the Fleet-only proxy);
        False starts it with ``--no-proxy`` (the SuperLink itself on the public port).
    """

    def __init__(self, base: Path, proxy: bool = True) -> None:
        self.base = base
        self.proxy = proxy
        self.run_dir = base / "run"  # PID files and logs (FEDSEM_DEPLOY_DIR)
        self.certs = base / "certs"
        self.keys = base / "keys"
        self.cache = base / "models"
        self.port = free_port()  # what SuperNodes dial: the proxy (or the SuperLink)
        self.local_port = free_port()  # the SuperLink itself on loopback, behind the proxy
        self.env = dict(
            os.environ,
            FLWR_HOME=str(base / "flwr"),
            FEDSEM_DEPLOY_DIR=str(self.run_dir),
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            PATH=PATH,
        )
        # Every port a process of ours binds, for the leftover check.
        self.ports = [self.port, self.local_port]

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

    @property
    def control_address(self) -> str:
        """Where the operator's ``flwr`` reaches the Control API (on this machine)."""
        return f"127.0.0.1:{self.local_port if self.proxy else self.port}"

    def start_superlink(self) -> None:
        """Start the SuperLink (TLS, node auth, proxy unless ``proxy=False``) on free ports."""
        for attempt in range(PORT_ATTEMPTS):
            proc = self.script(
                "start-superlink.sh",
                "--certs", str(self.certs),
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--local-port", str(self.local_port),
                "--database", "memory",
                *(() if self.proxy else ("--no-proxy",)),
                check=False,
            )  # fmt: skip
            logs = ("superlink.log", "superlink-proxy.log")
            if proc.returncode == 0 or not any(port_taken(self.run_dir / n) for n in logs):
                break
            if attempt + 1 < PORT_ATTEMPTS:
                self.port, self.local_port = free_port(), free_port()
                self.ports += [self.port, self.local_port]
        assert proc.returncode == 0, f"start-superlink.sh failed:\n{proc.stdout}\n{proc.stderr}"

    def start_authenticated(self, keys: list[str], registered: list[str]) -> None:
        """TLS certificates, node keys, the SuperLink, the connection, node registration."""
        self.script("make-certs.sh", "-o", str(self.certs), "localhost", "127.0.0.1")
        self.script("make-node-keys.sh", "-o", str(self.keys), *keys)
        self.start_superlink()
        self.script(
            "add-connection.sh",
            CONNECTION,
            self.control_address,
            "--root-certificates",
            str(self.certs / "ca.crt"),
        )
        self.script(
            "register-nodes.sh", CONNECTION, *(str(self.keys / f"{n}.pub") for n in registered)
        )

    def start_supernode(self, name: str, key: str, *node_args: str, check: bool = True):
        """Start a SuperNode with key ``key`` on a free local port; return the script's result."""
        for _ in range(PORT_ATTEMPTS):
            port = free_port()
            self.ports.append(port)
            proc = self.script(
                "start-supernode.sh",
                "--superlink", f"127.0.0.1:{self.port}",
                "--root-certificates", str(self.certs / "ca.crt"),
                "--auth-supernode-private-key", str(self.keys / key),
                "--port", str(port),
                "--name", name,
                "--wait", "90",
                *node_args,
                check=False,
            )  # fmt: skip
            if proc.returncode == 0 or not port_taken(self.run_dir / f"{name}.log"):
                break
        if check:
            assert proc.returncode == 0, f"start-supernode.sh failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def stop(self, *names: str) -> None:
        """Stop the named processes with deploy/stop.sh (by their PID files)."""
        self.script("stop.sh", *names, check=False, timeout=120)

    def stop_all(self) -> list[str]:
        """Stop everything by PID files with deploy/stop.sh; kill and return what is left.

        Returns
        -------
        list[str]
            Command lines of processes of this deployment that were still alive after
            deploy/stop.sh (they are killed); empty when it stopped everything.
        """
        try:
            self.stop()
        finally:
            for pid_file in self.run_dir.glob("*.pid"):
                try:
                    os.killpg(int(pid_file.read_text()), signal.SIGKILL)
                except (ProcessLookupError, PermissionError, ValueError):
                    pass
        return self.kill_leftovers()

    def kill_leftovers(self) -> list[str]:
        # Every Flower process of ours names one of our ports or folders on its command line.
        # Our own ancestors may name the folder too (a wrapper given it as an argument).
        markers = [f"127.0.0.1:{port}" for port in self.ports] + [str(self.base)]
        spare = ancestors()
        left = []
        for proc_dir in Path("/proc").glob("[0-9]*"):
            try:
                cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            flower = any(name in cmdline for name in ("flower-", "flwr", "nginx"))
            if int(proc_dir.name) not in spare and flower and any(m in cmdline for m in markers):
                left.append(f"{proc_dir.name}: {cmdline}")
                try:
                    os.kill(int(proc_dir.name), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        return left


def ancestors() -> set[int]:
    """This process and every process above it."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after "(comm)"
    return pids


def port_taken(log: Path) -> bool:
    # Uvicorn writes "address already in use", nginx "Address already in use".
    return "address already in use" in tail(log).lower()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A SuperLink with TLS and node auth, its connection, and five registered keys."""
    dep = Deployment(tmp_path_factory.mktemp("deploy"))
    left: list[str] = []
    try:
        # The intruder's key is made but never registered.
        dep.start_authenticated([*NODES, *BAD_NODES, "intruder"], [*NODES, *BAD_NODES])
        yield dep
    finally:
        left = dep.stop_all()
    assert not left, "processes left after deploy/stop.sh:\n" + "\n".join(left)


def test_unregistered_supernode_is_refused(deployment):
    proc = deployment.start_supernode("intruder", "intruder", check=False)

    assert proc.returncode != 0
    node_log = tail(deployment.run_dir / "intruder.log")
    link_log = tail(deployment.run_dir / "superlink.log", 200)
    assert "Failed to activate SuperNode" in node_log, node_log
    assert "No SuperNode found with the given public key" in link_log, link_log
    assert "exited during start-up" in proc.stderr


def test_supernode_with_a_missing_data_file_is_not_started(deployment):
    missing = deployment.base / "no-such-file.jsonl"

    proc = deployment.start_supernode(
        "nodata", "node0", "--data-path", str(missing), "--model-name", "tiny-llama", check=False
    )

    assert proc.returncode == 1
    assert f"error: --data-path '{missing}' does not exist" in proc.stderr
    assert not (deployment.run_dir / "nodata.pid").exists()


def prebuild_models(cache: Path, models: tuple[str, ...] = MODELS) -> None:
    """Build the tiny models and their shared tokenizer once, before the nodes start.

    Otherwise each node's first ClientApp process would train the same tokenizer.
    """
    from fedsem_app.clients import MODEL_REGISTRY

    for name in models:
        MODEL_REGISTRY[name].builder(cache)


def start_nodes(dep: Deployment, models: tuple[str, ...] = MODELS) -> None:
    """Start node0, node1, ..., one per model, each with its own tiny model and partition."""
    prebuild_models(dep.cache, models)
    for i, (name, model) in enumerate(zip(NODES, models, strict=False)):
        start_node(dep, name, model, i, num_partitions=len(models))


def start_node(
    dep: Deployment,
    name: str,
    model: str,
    partition: int,
    check: bool = True,
    num_partitions: int = len(MODELS),
):
    return dep.start_supernode(
        name,
        name,
        "--model-name", model,
        "--partition-id", str(partition),
        "--num-partitions", str(num_partitions),
        check=check,
    )  # fmt: skip


def run_profile(dep: Deployment, run_name: str, **extra) -> Path:
    """The quick profile for a deployment run, results under the temporary folder."""
    return write_profile(
        ROOT / "conf" / "quick.toml",
        {
            "results-dir": str(dep.base / "runs"),
            "run-name": run_name,
            "model.cache-dir": str(dep.cache),
            # Offline nodes are answered by the SuperLink within ~60 s (heartbeats); this
            # bounds a node that hangs, well inside the flwr run timeouts below.
            "round-timeout": 480,
            # Three ClientApp processes share two cores here: no oversubscription.
            "train.num-threads": 1,
            **extra,
        },
        dep.base / f"{run_name}.toml",
    )


def flwr_run_command(profile: Path) -> list[str]:
    return ["flwr", "run", ".", CONNECTION, "--stream", "--run-config", str(profile)]


def all_logs(dep: Deployment) -> str:
    return "\n".join(f"--- {p.name}\n{tail(p)}" for p in sorted(dep.run_dir.glob("*.log")))


# About 1.5 minutes on 2 idle cores (4 when busy): every message starts a ClientApp process.
@pytest.mark.slow
def test_two_fedsem_rounds_on_three_authenticated_supernodes(deployment):
    # Prepare: three registered SuperNodes, each with its own model and partition.
    dep = deployment
    try:
        start_nodes(dep)
        profile = run_profile(dep, "deploy", **{"min-clients": 3})

        # Execute
        t0 = time.perf_counter()
        proc = subprocess.run(
            flwr_run_command(profile),
            cwd=ROOT,
            env=dep.env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        seconds = time.perf_counter() - t0
    finally:
        dep.stop(*NODES)

    # Assert: the run finished and every node answered in every round.
    output = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, output + all_logs(dep)
    folder = dep.base / "runs" / "deploy"
    assert (folder / "summary.json").exists(), output + all_logs(dep)
    assert "[round 2/2]" in proc.stdout + proc.stderr
    rows = json.loads((folder / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2]  # round 0: evaluation before training
    assert rows[0]["eval-replies"] == 3, rows[0]
    rows = rows[1:]
    for row in rows:
        assert row["train-replies"] == 3 and row["eval-replies"] == 3, row
        assert row["dropped-replies"] == 0
    samples = [json.loads(line) for line in (folder / "consensus_samples.jsonl").open()]
    assert {a["model"] for s in samples for a in s["answers"]} == set(MODELS)
    assert len({a["node"] for s in samples for a in s["answers"]}) == 3
    print(f"deployment run: {seconds:.0f} s, rounds {[round(r['round-seconds']) for r in rows]} s")


def wait_for(path: Path, text: str, seconds: float, proc: subprocess.Popen, times: int = 1) -> None:
    """Wait for ``times`` lines of ``text`` in ``path`` while ``proc`` (the flwr run) runs."""
    deadline = time.monotonic() + seconds
    while (path.read_text(errors="replace") if path.exists() else "").count(text) < times:
        assert proc.poll() is None, f"flwr run ended before {text!r} appeared in {path.name}"
        assert time.monotonic() < deadline, f"{text!r} not in {path.name} after {seconds:.0f} s"
        time.sleep(0.5)


def kill_node(dep: Deployment, name: str) -> None:
    """SIGKILL a SuperNode with its ClientApps: a crash or power loss, no goodbye."""
    pid_file = dep.run_dir / f"{name}.pid"
    os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    pid_file.unlink()


def node_id(dep: Deployment, name: str) -> int:
    """The node id the SuperLink gave SuperNode ``name`` (from its log)."""
    for line in (dep.run_dir / f"{name}.log").read_text(errors="replace").splitlines():
        if "SuperNode ID" in line:
            return int(line.rsplit(":", 1)[1].strip())
    raise AssertionError(f"no node id in {name}.log:\n{tail(dep.run_dir / f'{name}.log')}")


# About 5 minutes on 2 idle cores: the SuperLink waits 2 x 30 s of missed heartbeats.
@pytest.mark.slow
def test_run_survives_a_node_dying_mid_round_and_misconfigured_nodes(deployment):
    # Prepare: node0..node2 as above, plus "badmodel" (a model name that does not exist)
    # and "baddata" (a data file that exists, with other field names than the run maps);
    # min-clients=2 of 5, three rounds.
    dep = deployment
    output_file = dep.base / "faults.out"
    wrong_fields = dep.base / "wrong-fields.jsonl"
    wrong_fields.write_text('{"question": "Q?", "response": "A."}\n')
    try:
        start_nodes(dep)
        dep.start_supernode(
            "badmodel",
            "badmodel",
            "--model-name", "no-such-model",
            "--partition-id", "3",
            "--num-partitions", "5",
        )  # fmt: skip
        dep.start_supernode(
            "baddata",
            "baddata",
            "--model-name", MODELS[0],
            "--data-path", str(wrong_fields),
            "--partition-id", "4",
            "--num-partitions", "5",
        )  # fmt: skip
        bad_ids = {name: node_id(dep, name) for name in BAD_NODES}
        profile = run_profile(dep, "faults", **{"min-clients": 2, "num-server-rounds": 3})

        # Execute: kill node2 once its round-1 ClientApp runs, restart it once the
        # SuperLink has given up on it, and let the run finish.
        with output_file.open("w") as out:
            run = subprocess.Popen(
                flwr_run_command(profile), cwd=ROOT, env=dep.env, stdout=out, stderr=out
            )
            try:
                # Every message starts a ClientApp process: the first is round 0's
                # evaluation, the second round 1's training.
                wait_for(
                    dep.run_dir / "node2.log", "Start `flwr-clientapp` process", 300, run, times=2
                )
                kill_node(dep, "node2")
                wait_for(output_file, "Node Unavailable", 300, run)
                restarted = start_node(dep, "node2", MODELS[2], 2, check=False)
                run.wait(timeout=900)
            finally:
                if run.poll() is None:
                    run.kill()
                    run.wait()
    finally:
        dep.stop(*NODES, *BAD_NODES)

    # Assert: the run finished; round 1 went on without the dead and the two bad nodes.
    output = output_file.read_text(errors="replace")
    assert run.returncode == 0, output[-6000:] + all_logs(dep)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    folder = dep.base / "runs" / "faults"
    rows = json.loads((folder / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    rows = rows[1:]  # round 0 only evaluates
    assert rows[0]["train-replies"] == 2 and rows[0]["dropped-replies"] == 3, rows[0]
    # The dead node's message is answered by the SuperLink; each bad node's reply names
    # the node (its id in the server's line, its partition in the error) and the value.
    assert "Error: Node Unavailable" in output
    assert (
        f"dropped reply of node {bad_ids['badmodel']}: client error (code 2)" in output
        and "node with partition-id 3: cannot load model-name 'no-such-model'" in output
    ), output[-6000:]
    assert (
        f"dropped reply of node {bad_ids['baddata']}: client error (code 2)" in output
        and f"node with partition-id 4: config key 'data.prompt-field': field 'prompt' "
        f"is not in file '{wrong_fields}'"
        in output
    ), output[-6000:]
    # node2 rejoined: by round 3 at the latest it trains and answers again.
    assert rows[2]["train-replies"] == 3 and rows[2]["dropped-replies"] == 2, rows[2]
    samples = [json.loads(line) for line in (folder / "consensus_samples.jsonl").open()]
    last = [a["model"] for s in samples if s["round"] == 3 for a in s["answers"]]
    assert set(last) == set(MODELS), last
    print(
        f"fault run: rounds {[round(r['round-seconds']) for r in rows]} s, "
        f"train replies {[r['train-replies'] for r in rows]}"
    )
