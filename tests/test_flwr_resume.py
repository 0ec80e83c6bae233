"""A real `flwr run` of the quick profile, stopped after round 2 of 4 and resumed to the end."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_flwr_run import ROOT, write_profile

# The files of a finished fedsem run folder (see fedsem_app.run.results and .checkpoint).
FINISHED_LAYOUT = [
    "bytes.png",
    "checkpoint/resume.toml",
    "checkpoint/state.json",
    "clients.jsonl",
    "config.json",
    "consensus_samples.jsonl",
    "metrics.csv",
    "metrics.json",
    "quality.png",
    "summary.json",
]


def flwr(*args, timeout=900, env=None):
    return subprocess.run(
        ["flwr", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def checkpoint_round(folder: Path) -> int:
    try:
        return json.loads((folder / "checkpoint" / "state.json").read_text())["round"]
    except (OSError, ValueError):
        return 0  # not written yet (or being replaced right now)


def run_status(run_id: str, env) -> str:
    proc = flwr("ls", "--run-id", run_id, "--format", "json", timeout=120, env=env)
    return json.loads(proc.stdout)["runs"][0]["status"] if proc.returncode == 0 else ""


def control_client():
    """A Control API client to the SuperLink `flwr run` used, as `flwr stop` builds it.

    `flwr stop` itself takes longer to start on a busy 2-core machine than a quick
    round takes, so the stop request is sent from here, ready before it is needed.
    """
    from flwr.cli.flower_config import read_superlink_connection
    from flwr.cli.utils import init_http_client_from_connection

    return init_http_client_from_connection(read_superlink_connection(None))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("flwr") is None, reason="flwr CLI not on PATH")
def test_quick_run_stopped_after_round_2_resumes_to_round_4(tmp_path):
    # Prepare: the quick profile for 4 rounds, submitted without streaming
    folder = tmp_path / "runs" / "resume"
    profile = write_profile(
        ROOT / "conf" / "quick.toml",
        {"results-dir": str(tmp_path / "runs"), "run-name": "resume", "num-server-rounds": 4},
        tmp_path / "quick4.toml",
    )
    env = dict(os.environ, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    federation = ["--federation-config", "num-supernodes=3"]
    submitted = flwr("run", ".", "--run-config", str(profile), *federation, "--format", "json")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    run_id = str(json.loads(submitted.stdout)["run-id"])

    # Execute 1: stop the run as soon as round 2 is checkpointed (a round takes seconds)
    from flwr.proto.control_pb2 import StopRunRequest

    client = control_client()
    deadline = time.monotonic() + 600
    while checkpoint_round(folder) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.StopRun(request=StopRunRequest(run_id=int(run_id))).success
    client.close()
    while not run_status(run_id, env).startswith("finished") and time.monotonic() < deadline:
        time.sleep(1)
    assert run_status(run_id, env) == "finished:stopped"
    assert checkpoint_round(folder) == 2
    assert not (folder / "summary.json").exists()

    # Execute 2: resume with the profile the checkpoint wrote
    resumed = flwr(
        "run",
        ".",
        "--stream",
        "--run-config",
        str(folder / "checkpoint" / "resume.toml"),
        *federation,
        env=env,
    )
    output = resumed.stdout + resumed.stderr

    # Assert: rounds 1..4, each once, in the layout of a run that went straight through
    assert resumed.returncode == 0, output[-3000:]
    assert f"resuming {folder} at round 3 of 4" in output
    assert "[round 4/4]" in output
    rows = json.loads((folder / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert all(r["train-replies"] == 3 and r["eval-replies"] == 3 for r in rows)
    cumulative = [r["bytes-cumulative"] for r in rows]
    assert cumulative == sorted(cumulative) and cumulative[-1] == sum(
        r["bytes-down"] + r["bytes-up"] for r in rows
    )
    files = sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file())
    assert files == FINISHED_LAYOUT
    clients = [json.loads(line) for line in (folder / "clients.jsonl").open()]
    per_round = [sum(1 for c in clients if c["round"] == r) for r in (1, 2, 3, 4)]
    assert per_round == [6, 6, 6, 6]  # 3 train + 3 evaluate lines, none twice
    assert json.loads((folder / "summary.json").read_text())["rounds"] == 4
    assert checkpoint_round(folder) == 4
