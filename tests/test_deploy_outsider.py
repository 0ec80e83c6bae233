"""An outsider against the deployment as deploy/start-superlink.sh starts it.

Two registered SuperNodes run two FedSem rounds through the proxy while an outsider,
whose FLWR_HOME holds only ``ca.crt`` (every node has it; it is no secret), tries
what Flower's APIs offer: ``flwr ls``, ``flwr run`` of an app of its own (whose
ServerApp would write a marker file on the SuperLink machine), ``flwr supernode
register`` of its own key, a SuperNode with that key, direct HTTP requests to the
Control and Runtime APIs (also a ``..`` path through the Fleet prefix), and
clients that skip certificate checks. Every attempt must be refused and the
federation's run must finish with every reply.

``FEDSEM_OUTSIDER_HARDENING=0`` runs the same attempts against ``start-superlink.sh
--no-proxy`` (the SuperLink itself on the public port, TLS and node auth only).
There the test checks the opposite for the Control API: the outsider gets in, which
shows that the probes can tell the two apart. Each attempt's response is printed
(``pytest -s``).
"""

import json
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_deploy import (
    CONNECTION,
    MISSING,
    NODES,
    ROOT,
    Deployment,
    all_logs,
    flwr_run_command,
    run_profile,
    start_nodes,
    tail,
)

HARDENED = os.environ.get("FEDSEM_OUTSIDER_HARDENING", "1") != "0"
MODELS = ("tiny-llama", "tiny-gpt2")  # two of the deploy test's tiny models
OUTSIDER = "outsider"
PROTOBUF = {"content-type": "application/protobuf", "accept": "application/protobuf"}

OUTSIDER_APP = """
import getpass
import os
from pathlib import Path

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

app = ServerApp()
client = ClientApp()


@app.main()
def main(grid, context):
    # Proof of code execution on the SuperLink machine.
    Path({marker!r}).write_text(f"user={{getpass.getuser()}} cwd={{os.getcwd()}}")
"""

OUTSIDER_PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "outsider"
version = "1.0.0"
description = "Someone else's app"
license = "Apache-2.0"
dependencies = ["flwr>=1.41"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "outsider"

[tool.flwr.app.components]
serverapp = "outsider_app:app"
clientapp = "outsider_app:client"
"""


def one_line(text: str, limit: int = 200) -> str:
    """Squeeze a CLI or HTTP response into one line (rich's boxes and colours removed)."""
    for char in "╭╮╰╯│─━┃┏┓┗┛┡┩└┘┌┐├┤┼╇┳┻╋":
        text = text.replace(char, " ")
    text = " ".join(text.split())
    # A CLI's error box is what matters; what it printed before is context.
    text = text[text.find("Error ") :] if "Error " in text else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Outsider:
    """Someone who reaches the public port and holds ``ca.crt``, nothing else."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.home = dep.base / "outsider"
        self.home.mkdir()
        self.ca = self.home / "ca.crt"
        self.ca.write_bytes((dep.certs / "ca.crt").read_bytes())
        self.public = f"127.0.0.1:{dep.port}"
        self.env = dict(dep.env, FLWR_HOME=str(self.home / "flwr"), COLUMNS="200")
        self.marker = dep.base / "outsider-was-here.txt"
        self.results: list[tuple[str, bool, str]] = []  # (attempt, got in, response)
        config = self.home / "flwr" / "config.toml"
        config.parent.mkdir()
        config.write_text(
            f'[superlink.{OUTSIDER}]\naddress = "{self.public}"\n'
            f'root-certificates = "{self.ca}"\n\n'
            f'[superlink.{OUTSIDER}-plain]\naddress = "{self.public}"\ninsecure = true\n'
        )

    def record(self, attempt: str, got_in: bool, response: str) -> None:
        self.results.append((attempt, got_in, one_line(response)))

    def flwr(self, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["flwr", *args], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=120
        )

    def try_flwr_ls(self, connection: str, attempt: str) -> None:
        proc = self.flwr("ls", connection)
        got_in = proc.returncode == 0 and "Run ID" in proc.stdout
        self.record(attempt, got_in, proc.stdout + proc.stderr)

    def try_flwr_run(self) -> None:
        app = self.home / "app"
        app.mkdir()
        (app / "pyproject.toml").write_text(OUTSIDER_PYPROJECT)
        (app / "outsider_app.py").write_text(OUTSIDER_APP.format(marker=str(self.marker)))
        proc = self.flwr("run", ".", OUTSIDER, cwd=app)
        # Accepted means a run id came back; whether its ServerApp ran shows in the marker.
        got_in = proc.returncode == 0 and "Successfully started run" in proc.stdout
        self.record("flwr run (own app)", got_in, proc.stdout + proc.stderr)

    def try_register(self, key: Path) -> None:
        proc = self.flwr("supernode", "register", str(key), OUTSIDER)
        got_in = "registered successfully" in proc.stdout
        self.record("flwr supernode register (own key)", got_in, proc.stdout + proc.stderr)

    def try_supernode(self) -> None:
        proc = self.dep.start_supernode(
            "intruder", "intruder", "--model-name", MODELS[0], "--wait", "40", check=False
        )
        log = tail(self.dep.run_dir / "intruder.log", 200)
        reason = next(
            (line for line in log.splitlines() if "code:" in line or "SuperNode ID" in line),
            proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "",
        )
        self.record("SuperNode with the outsider's key", proc.returncode == 0, reason)

    def try_http(self, attempt: str, path: str, body: bytes, verify) -> None:
        import httpx

        try:
            if isinstance(verify, Path):
                verify = ssl.create_default_context(cafile=str(verify))
            with httpx.Client(verify=verify, timeout=30) as client:
                resp = client.post(f"https://{self.public}{path}", content=body, headers=PROTOBUF)
            text = resp.text if "protobuf" not in resp.headers.get("content-type", "") else ""
            response = f"HTTP {resp.status_code} {text or repr(resp.content[:60])}"
            self.record(attempt, resp.status_code == 200, response)
        except httpx.HTTPError as err:
            self.record(attempt, False, f"{type(err).__name__}: {err}")

    def try_raw_path(self, attempt: str, path: str) -> None:
        """Send ``path`` exactly as written (HTTP clients resolve ``..`` before sending)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        host, port = self.public.split(":")
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/protobuf\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        with socket.create_connection((host, int(port)), timeout=30) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(request.encode())
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
        status = data.split(b"\r\n", 1)[0].decode(errors="replace")
        body = data.split(b"\r\n\r\n", 1)[-1][:80]
        self.record(attempt, " 200 " in f"{status} ", f"{status} {body!r}")

    def try_fleet_unsigned(self) -> None:
        """A Fleet call without a node signature (what a client without a key sends)."""
        from flwr.proto.fleet_pb2 import PullMessagesRequest

        body = PullMessagesRequest().SerializeToString()
        self.try_http(
            "Fleet API, unsigned, certificate checks skipped",
            "/v1/fleet/pull-messages",
            body,
            False,
        )


def attack(dep: Deployment) -> Outsider:
    """Every attempt of the outsider, in an order where each could build on the last."""
    from flwr.proto.control_pb2 import ListRunsRequest
    from flwr.proto.runtime_pb2 import AcquireTaskRequest

    out = Outsider(dep)
    out.try_flwr_ls(OUTSIDER, "flwr ls")
    out.try_flwr_ls(f"{OUTSIDER}-plain", "flwr ls over plain HTTP (insecure = true)")
    out.try_flwr_run()
    out.try_register(dep.keys / "intruder.pub")
    out.try_supernode()  # with the key it just tried to register
    list_runs = ListRunsRequest().SerializeToString()
    acquire = AcquireTaskRequest().SerializeToString()
    out.try_http("HTTP POST /v1/control/list-runs", "/v1/control/list-runs", list_runs, out.ca)
    out.try_http("HTTP POST /v1/runtime/acquire-task", "/v1/runtime/acquire-task", acquire, out.ca)
    out.try_raw_path("HTTP POST /v1/fleet/../control/list-runs", "/v1/fleet/../control/list-runs")
    out.try_http(
        "HTTP /v1/control/list-runs, certificate checks skipped",
        "/v1/control/list-runs",
        list_runs,
        False,
    )
    out.try_fleet_unsigned()
    return out


def operator_flwr(dep: Deployment, *args: str) -> str:
    proc = subprocess.run(
        ["flwr", *args, CONNECTION, "--format", "json"],
        cwd=ROOT,
        env=dep.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


# About 3 minutes on 2 idle cores.
@pytest.mark.slow
@pytest.mark.skipif(bool(MISSING), reason=f"not on PATH: {', '.join(MISSING)}")
def test_outsider_with_only_the_ca_certificate_is_refused(tmp_path):
    # Prepare: the deployment as the scripts start it, two registered SuperNodes, the
    # outsider's key made but not registered.
    dep = Deployment(tmp_path, proxy=HARDENED)
    left: list[str] = []
    try:
        dep.start_authenticated([*NODES, "intruder"], list(NODES[: len(MODELS)]))
        start_nodes(dep, MODELS)
        profile = run_profile(dep, "federation", **{"min-clients": len(MODELS)})
        output_file = dep.base / "federation.out"

        # Execute: the federation's run, and the outsider's attempts while it runs.
        t0 = time.perf_counter()
        with output_file.open("w") as output:
            run = subprocess.Popen(
                flwr_run_command(profile), cwd=ROOT, env=dep.env, stdout=output, stderr=output
            )
            try:
                out = attack(dep)
                run.wait(timeout=900)
            finally:
                if run.poll() is None:
                    run.kill()
                    run.wait()
        seconds = time.perf_counter() - t0
        # A ServerApp that was let in writes its marker within seconds.
        deadline = time.monotonic() + (5 if HARDENED else 60)
        while not out.marker.exists() and time.monotonic() < deadline:
            time.sleep(1)
        runs = json.loads(operator_flwr(dep, "ls"))
        nodes = json.loads(operator_flwr(dep, "supernode", "ls"))
    finally:
        left = dep.stop_all()

    # Report: what each attempt got back.
    layout = "proxy (default)" if HARDENED else "--no-proxy (hardening off)"
    print(f"\noutsider against {layout}; federation run {seconds:.0f} s")
    for attempt, got_in, response in out.results:
        print(f"  {'GOT IN ' if got_in else 'refused'} | {attempt} | {response}")
    marker = out.marker.read_text() if out.marker.exists() else "(no marker)"
    print(f"  outsider's ServerApp on the SuperLink machine: {marker}")
    print(
        f"  runs the operator sees: {len(runs.get('runs', []))}; "
        f"nodes: {len(nodes.get('nodes', []))}"
    )

    # Assert: the federation's run finished with every reply, nothing left running.
    federation = output_file.read_text(errors="replace")
    assert not left, "processes left after deploy/stop.sh:\n" + "\n".join(left)
    assert run.returncode == 0, federation[-6000:] + all_logs(dep)
    rows = json.loads((dep.base / "runs" / "federation" / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2]  # round 0: evaluation before training
    rows = rows[1:]
    if HARDENED:
        for row in rows:
            assert row["train-replies"] == len(MODELS), row
            assert row["eval-replies"] == len(MODELS) and row["dropped-replies"] == 0, row
        # Every attempt refused, and nothing of the outsider's arrived.
        let_in = [(a, r) for a, got_in, r in out.results if got_in]
        assert not let_in, f"the outsider got in: {let_in}"
        assert len(out.results) == 10
        assert not out.marker.exists(), marker
        assert len(runs["runs"]) == 1, runs
        assert len(nodes["nodes"]) == len(MODELS), nodes
    else:
        # Hardening off: the Control API is open to anyone with ca.crt.
        got_in = {a for a, ok, _ in out.results if ok}
        assert {"flwr ls", "flwr run (own app)", "flwr supernode register (own key)"} <= got_in
        assert "HTTP POST /v1/control/list-runs" in got_in
        assert out.marker.exists()


def test_one_line_squeezes_rich_boxes():
    boxed = "╭─ Error ─╮\n│ Client error '404 Not Found' │\n╰──────────╯"

    assert one_line("Listing runs... " + boxed) == "Error Client error '404 Not Found'"
    assert one_line("x" * 200, limit=20) == "x" * 17 + "..."
