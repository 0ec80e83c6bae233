"""A real `flwr run` of the quick profile: 2 rounds, then resumed from its checkpoint to 4.

The first run ends by itself after round 2 (``num-server-rounds = 2``), so the
checkpoint it leaves is the one of round 2, with no race against a stop request;
the resumed run raises the total to 4, as ``checkpoint/resume.toml`` says to.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_flwr_run import ROOT, write_profile

# The files of a finished fedsem run folder (see fedsem_app.run.results, .checkpoint
# and fedsem_app.final), without the final adapters' own files.
FINISHED_LAYOUT = [
    "bytes.png",
    "checkpoint/resume.toml",
    "checkpoint/state.json",
    "clients.jsonl",
    "config.json",
    "consensus_samples.jsonl",
    "final/README.md",
    "final/index.json",
    "metrics.csv",
    "metrics.json",
    "pick_share.png",
    "prompt_scores.jsonl",
    "quality.png",
    "run-token",
    "summary.json",
]
FEDERATION = ["--federation-config", "num-supernodes=3"]


def flwr_run(profile: Path, env) -> str:
    proc = subprocess.run(
        ["flwr", "run", ".", "--stream", "--run-config", str(profile), *FEDERATION],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    return output


def checkpoint_round(folder: Path) -> int:
    return json.loads((folder / "checkpoint" / "state.json").read_text())["round"]


def layout(folder: Path) -> list[str]:
    files = sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file())
    return [f for f in files if not f.startswith("final/client-")]


# About 2 minutes on 2 idle cores: two quick runs of 2 rounds each.
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("flwr") is None, reason="flwr CLI not on PATH")
def test_quick_run_of_2_rounds_resumes_to_round_4(tmp_path, flwr_env):
    # Prepare: the quick profile, 2 rounds, run to its end.
    folder = tmp_path / "runs" / "resume"
    profile = write_profile(
        ROOT / "conf" / "quick.toml",
        {"results-dir": str(tmp_path / "runs"), "run-name": "resume", "num-server-rounds": 2},
        tmp_path / "quick2.toml",
    )
    first = flwr_run(profile, flwr_env)
    assert "[round 2/2]" in first
    assert checkpoint_round(folder) == 2
    assert json.loads((folder / "summary.json").read_text())["rounds"] == 2
    before = json.loads((folder / "metrics.json").read_text())
    assert [r["round"] for r in before] == [0, 1, 2]

    # Execute: resume with the profile the checkpoint wrote, the total raised to 4.
    resume = write_profile(
        folder / "checkpoint" / "resume.toml", {"num-server-rounds": 4}, tmp_path / "resume4.toml"
    )
    output = flwr_run(resume, flwr_env)

    # Assert: rounds 3 and 4 only, after the checkpoint's rounds 0..2, each once.
    assert f"resuming {folder} at round 3 of 4" in output
    assert "[round 3/4]" in output and "[round 4/4]" in output
    assert "[round 1/4]" not in output and "[round 2/4]" not in output
    rows = json.loads((folder / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[:3] == before  # the first run's rows, as the checkpoint kept them
    assert all(r["eval-replies"] == 3 for r in rows)
    assert all(r["train-replies"] == 3 for r in rows[1:]) and "train-replies" not in rows[0]
    # Byte counts go on from the checkpoint's totals.
    cumulative = [r["bytes-cumulative"] for r in rows]
    assert cumulative == sorted(cumulative) and cumulative[-1] == sum(
        r["bytes-down"] + r["bytes-up"] for r in rows
    )
    assert layout(folder) == FINISHED_LAYOUT
    clients = [json.loads(line) for line in (folder / "clients.jsonl").open()]
    per_round = [sum(1 for c in clients if c["round"] == r) for r in range(5)]
    assert per_round == [3, 6, 6, 6, 6]  # 3 evaluate (+ 3 train) lines, none twice
    samples = [json.loads(line) for line in (folder / "consensus_samples.jsonl").open()]
    assert sorted({s["round"] for s in samples}) == [1, 2, 3, 4]
    assert json.loads((folder / "summary.json").read_text())["rounds"] == 4
    assert checkpoint_round(folder) == 4
    # Each client saved its final adapter again, after round 4.
    index = json.loads((folder / "final" / "index.json").read_text())
    assert [e["model-name"] for e in index["adapters"]] == ["tiny-llama", "tiny-gpt2", "tiny-qwen2"]
