"""bench/label_quality.py: consensus choices scored against the dataset's references."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import label_quality  # noqa: E402
from fedsem_app.config.app import load_app_config  # noqa: E402
from fedsem_app.data.records import load_records  # noqa: E402


def test_chosen_against_mean_and_best_candidate():
    def cand(prompt, model, score, chosen):
        return {
            "run": "r",
            "round": 1,
            "prompt-id": prompt,
            "model": model,
            "chosen": chosen,
            "rouge-l": score,
        }

    rows = [
        cand(1, "a", 0.6, True),
        cand(1, "b", 0.2, False),
        cand(1, "b", 0.1, False),
        cand(2, "a", 0.1, False),
        cand(2, "b", 0.3, True),
    ]
    out = label_quality.summarise(rows, "rouge-l")
    # prompt 1: chosen 0.6, mean 0.3, best 0.6; prompt 2: chosen 0.3, mean 0.2, best 0.3
    assert out["chosen"][0] == pytest.approx(0.45)
    assert out["mean candidate"][0] == pytest.approx(0.25)
    assert out["best candidate"][0] == pytest.approx(0.45)
    assert out["chosen - mean candidate"][0] == pytest.approx(0.2)
    assert out["answers of a"][0] == pytest.approx(0.35)  # (0.6 + 0.1) / 2
    assert out["answers of b"][0] == pytest.approx(0.2)  # (0.2 + 0.1 + 0.3) / 3
    low, high = out["chosen - mean candidate"][1:]
    assert low == pytest.approx(0.1) and high == pytest.approx(0.3)  # two prompts: 0.3 and 0.1


def test_a_run_folder_is_scored_against_the_dataset_references(tmp_path):
    config = {"seed": 1}
    records = load_records(load_app_config(config).data)
    q = records[7]
    (tmp_path / "config.json").write_text(json.dumps({**config, "flwr-run-id": 7}))
    sample = {
        "round": 1,
        "prompt-id": q.id,
        "answers": [
            {"model": "a", "text": q.answer, "valid": True, "finished": True},
            {"model": "b", "text": "zzz qqq", "valid": True, "finished": False},
            {"model": "c", "text": "left out", "valid": False, "finished": True},
        ],
        "chosen": 1,
        "abstained": False,
    }
    skipped = {**sample, "round": 2, "abstained": True}
    (tmp_path / "consensus_samples.jsonl").write_text(
        json.dumps(sample) + "\n" + json.dumps(skipped) + "\n"
    )
    rows = label_quality.score_samples(tmp_path)
    assert [(r["model"], r["chosen"]) for r in rows] == [("a", False), ("b", True)]
    assert rows[0]["rouge-l"] == pytest.approx(1.0) and rows[0]["embed-sim"] == pytest.approx(1.0)
    assert rows[1]["rouge-l"] == 0.0


def test_fact_labels_round_by_round():
    def cand(rnd, prompt, text, chosen, value):
        return {"run": "r", "round": rnd, "prompt-id": prompt, "text": text, "chosen": chosen,
                "value": value}  # fmt: skip

    rows = [
        cand(1, 1, "She lives in Oslo.", True, "Oslo"),
        cand(1, 1, "She lives in Rome.", False, "Oslo"),
        cand(1, 2, "Born in 1750.", True, "1800"),
        cand(1, 2, "Born in 1750.", False, "1800"),
        cand(1, 3, "No value here.", True, ""),  # not a fact: left out
        cand(2, 1, "She lives in Rome.", True, "Oslo"),
        cand(2, 1, "In Oslo.", False, "Oslo"),
        cand(2, 2, "Born in 1750.", True, "1800"),
        cand(2, 2, "Born in 1800.", False, "1800"),
    ]
    first, second = label_quality.fact_rounds(rows)
    # round 1: prompt 1's label right, prompt 2's wrong and no candidate has 1800
    assert first["prompts"] == 2 and first["label right"] == 0.5
    assert first["some candidate right"] == 0.5 and first["others right"] == 0.0
    assert first["label changed"] != first["label changed"]  # NaN: no round before
    # round 2: both labels wrong, both others right; prompt 1's label text changed
    assert second["label right"] == 0.0 and second["some candidate right"] == 1.0
    assert second["others right"] == 1.0 and second["label changed"] == 0.5
