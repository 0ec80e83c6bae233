"""bench/compare_report.py on hand-made run folders (no timing assertions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import compare_report  # noqa: E402


def make_run(root: Path, strategy: str, down: int, up: int) -> Path:
    folder = root / "runs" / strategy
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"strategy": strategy}))
    rows = [
        {
            "round": r,
            "bytes-down-train": down * r,
            "bytes-up-train": up,
            "bytes-down-evaluate": 100,
            "bytes-up-evaluate": 10,
            "bytes-cumulative": (down * 1 + up + 110) + (down * 2 + up + 110) * (r - 1),
            "round-seconds": 50.0,
            "server-seconds": 2.0,
        }
        for r in (1, 2)
    ]
    (folder / "metrics.json").write_text(json.dumps(rows))
    clients = [
        {"round": r, "phase": "train", "train-seconds": 10.0, "generate-seconds": 5.0}
        | {"cpu-seconds": 20.0}
        for r in (1, 2)
        for _ in range(2)
    ] + [{"round": r, "phase": "evaluate", "eval-seconds": 3.0} for r in (1, 2) for _ in range(2)]
    (folder / "clients.jsonl").write_text("\n".join(json.dumps(c) for c in clients))
    return folder


def test_bytes_and_round_time_from_run_folders(tmp_path):
    make_run(tmp_path, "fedsem", down=1000, up=500)
    make_run(tmp_path, "fedavg-lora", down=1_000_000, up=1_000_000)
    folders = compare_report.run_folders([str(tmp_path)])
    assert [compare_report.strategy_of(f) for f in folders] == ["fedsem", "fedavg-lora"]

    fedsem = compare_report.bytes_rows(tmp_path / "runs" / "fedsem")
    # train down: rounds 1000 and 2000 -> mean 1500; up 500; evaluate 110 a round
    assert fedsem["down-train"] == 1500 and fedsem["up-train"] == 500
    assert fedsem["per-round"] == 1500 + 500 + 110
    assert fedsem["last-train"] == 2000 + 500

    (first, second) = compare_report.time_rows(tmp_path / "runs" / "fedsem")
    # two clients: train 2 x 10, generate 2 x 5, evaluate 2 x 3; server 2; wall 50
    assert (second["train-s"], second["generate-s"], second["evaluate-s"]) == (20, 10, 6)
    assert second["rest-s"] == pytest.approx(50 - 36 - 2)
    assert second["client-cpu-s"] == 40 and second["energy"] == "not measured"


def test_command_prints_ratio_to_fedsem(tmp_path, capsys):
    make_run(tmp_path, "fedsem", down=1000, up=500)
    make_run(tmp_path, "fedavg-lora", down=1_000_000, up=1_000_000)
    assert compare_report.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    # fedavg-lora train: (1.5 MB + 1 MB) / (1500 + 500 B) = 1250x
    assert "| 1250 |" in out
    rows = json.loads((tmp_path / "out" / "bytes.json").read_text())["rows"]
    assert {r["strategy"]: round(r["train-ratio"]) for r in rows} == {
        "fedavg-lora": 1250,
        "fedsem": 1,
    }
