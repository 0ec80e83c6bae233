"""One real `flwr run` of the quick profile (local simulation, three architectures)."""

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def toml_value(value):
    return (
        json.dumps(value)
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


def write_profile(base: Path, extra: dict, out: Path) -> Path:
    """conf/quick.toml plus extra flat keys, as one file (flwr takes one .toml)."""
    flat = {}
    for key, value in tomllib.loads(base.read_text()).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    flat.update(extra)
    out.write_text("".join(f'"{k}" = {toml_value(v)}\n' for k, v in flat.items()))
    return out


@pytest.mark.skipif(shutil.which("flwr") is None, reason="flwr CLI not on PATH")
def test_quick_profile_runs_through_flwr_with_a_failing_client(tmp_path, flwr_env):
    # A fourth node (partition 3, tiny-llama again) raises in every train round.
    profile = write_profile(
        ROOT / "conf" / "quick.toml",
        {
            "results-dir": str(tmp_path / "runs"),
            "run-name": "quick",
            "fault.mode": "raise",
            "fault.clients": "3",
        },
        tmp_path / "quick.toml",
    )
    env = flwr_env
    proc = subprocess.run(
        [
            "flwr",
            "run",
            ".",
            "--stream",
            "--run-config",
            str(profile),
            "--federation-config",
            "num-supernodes=4",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    folder = tmp_path / "runs" / "quick"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (folder / "summary.json").exists(), proc.stdout[-3000:]

    rows = json.loads((folder / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2]  # round 0: before any training
    assert rows[0]["eval-replies"] == 4 and 0.0 <= rows[0]["rouge-l"] <= 1.0
    assert rows[0]["nll-low"] <= rows[0]["nll"] <= rows[0]["nll-high"]
    rows = rows[1:]
    for row in rows:
        assert row["train-replies"] == 3 and row["dropped-replies"] == 1
        assert row["eval-replies"] == 4  # the failing node still evaluates
        assert row["bytes-up-train"] > 0 and row["bytes-down-evaluate"] > 0
        assert 0.0 <= row["rouge-l"] <= 1.0
        assert 0.0 <= row["truncated-share"] <= 1.0
        # three models, their pick-shares cover every labelled prompt
        shares = [v for k, v in row.items() if k.startswith("pick-share-")]
        assert len(shares) == 3 and abs(sum(shares) - 1.0) < 1e-9
    # Round 2 carries round 1's pseudo-labels, so it sends more than round 1.
    assert rows[1]["bytes-down-train"] > rows[0]["bytes-down-train"]
    samples = [json.loads(line) for line in (folder / "consensus_samples.jsonl").open()]
    models = {a["model"] for s in samples for a in s["answers"]}
    assert models == {"tiny-llama", "tiny-gpt2", "tiny-qwen2"}
    assert json.loads((folder / "config.json").read_text())["model.names"] == (
        "tiny-llama,tiny-gpt2,tiny-qwen2"
    )
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds"] == 2 and set(summary["gain-over-round-0"]) == {
        "rouge-l",
        "embed-sim",
        "nll",
    }
    for plot in ("quality.png", "bytes.png", "pick_share.png"):
        assert (folder / plot).stat().st_size > 1000
    # Every client saved its own final adapter into the run folder the server named.
    index = json.loads((folder / "final" / "index.json").read_text())
    assert [e["folder"] for e in index["adapters"]] == [f"client-{i}" for i in range(4)]
    assert [e["model-name"] for e in index["adapters"]] == [
        "tiny-llama",
        "tiny-gpt2",
        "tiny-qwen2",
        "tiny-llama",
    ]
    assert (folder / "final" / "client-2" / "adapter_model.safetensors").is_file()
    output = proc.stdout + proc.stderr
    assert "[round 2/2]" in output
    assert "partition-id 3: injected fault (fault.mode='raise')" in output
    check_console(output, num_nodes=4, num_rounds=2)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def check_console(output: str, num_nodes: int, num_rounds: int) -> None:
    """One line per event: no duplicates, no load bars, no known warnings, short records."""
    lines = [ANSI.sub("", line) for line in output.splitlines()]
    # Each node evaluates every round, round 0 included, and says so exactly once
    # (twice when a library configured Python's root logger: "INFO:flwr:...").
    for node in range(num_nodes):
        for rnd in range(num_rounds + 1):
            event = f"client with partition-id {node}: round {rnd}, evaluating on"
            assert sum(event in line for line in lines) == 1, (event, output[-3000:])
    assert not any("INFO:flwr:" in line for line in lines), output[-3000:]
    # Real progress stays: every training step of a client that trains.
    assert sum("tiny-gpt2: step 4/4, train loss" in line for line in lines) == num_rounds
    # No progress bar per model load, no warning the app can prevent.
    for noise in ("Loading weights", "Warning:", "warnings.warn(", "loss_type="):
        assert not any(noise in line for line in lines), (noise, output[-3000:])
    # Flower logs each round's aggregated records: numbers, not per-prompt score lists.
    records = [line for line in lines if "Aggregated MetricRecord" in line]
    assert len(records) == 2 * num_rounds  # train and evaluate
    for record in records:
        assert "[" not in record.split("Aggregated MetricRecord:", 1)[1], record
