"""Paired differences between strategies: bootstrap over test prompts within seeds."""

import json

import numpy as np
import pytest

from fedsem_app import protocol as p
from fedsem_app.run.intervals import PromptScores, paired_difference
from fedsem_app.tools.comparison import RunRecord
from fedsem_app.tools.study import paired_prompt_rows, read_prompt_scores, write_study

SCORES = np.array([[0.2, 0.5, 0.1, 0.9, 0.4], [0.3, 0.3, 0.6, 0.0, 0.8]])


# --- the pure function ------------------------------------------------------------------------


def test_identical_runs_differ_by_nothing():
    a = PromptScores.of(SCORES)
    assert paired_difference([(a, a)]) == (0.0, 0.0, 0.0)


def test_a_constant_shift_on_every_prompt_is_the_whole_interval():
    # The same shift on every prompt: every resample sees exactly that difference.
    base, shifted = PromptScores.of(SCORES), PromptScores.of(SCORES + 0.1)
    diff, low, high = paired_difference([(shifted, base)])
    assert (diff, low, high) == pytest.approx((0.1, 0.1, 0.1))


def test_nll_is_a_ratio_and_lower_is_better():
    # Token counts 1..5; the variant's summed NLL is lower by 0.2 per token on every
    # prompt, so its NLL (sum / tokens) is lower by 0.2 on any set of prompts: +0.2 better.
    tokens = np.array([[1.0, 2, 3, 4, 5]])
    sums = np.array([[2.0, 5.0, 5.0, 9.0, 12.0]])
    reference = PromptScores.of(sums, tokens)
    variant = PromptScores.of(sums - 0.2 * tokens, tokens)
    assert reference.overall() == pytest.approx(33.0 / 15.0)
    diff, low, high = paired_difference([(variant, reference)], sign=-1.0)
    assert (diff, low, high) == pytest.approx((0.2, 0.2, 0.2))


def test_seeds_are_averaged_not_resampled():
    # Seed 1: +0.2 on every prompt, seed 2: +0.4: every resample averages to +0.3.
    one, two = PromptScores.of(SCORES), PromptScores.of(SCORES[:, :3])
    pairs = [(PromptScores.of(SCORES + 0.2), one), (PromptScores.of(SCORES[:, :3] + 0.4), two)]
    assert paired_difference(pairs) == pytest.approx((0.3, 0.3, 0.3))


def test_two_prompts_one_better_by_hand():
    # Prompt differences [1, 0]: a resample of two prompts has mean 0, 0.5 or 1 with
    # probabilities 1/4, 1/2, 1/4, so the 2.5 % and 97.5 % quantiles are 0 and 1.
    variant, reference = PromptScores.of([1.0, 0.0]), PromptScores.of([0.0, 0.0])
    assert paired_difference([(variant, reference)]) == (0.5, 0.0, 1.0)


def test_scores_of_other_prompts_are_refused():
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference([(PromptScores.of([1.0, 0.0]), PromptScores.of([1.0]))])
    with pytest.raises(ValueError, match="no seed"):
        paired_difference([])


# --- from run folders -------------------------------------------------------------------------


def write_run(folder, label, seed, rouge, ids=(10, 11, 12, 13), extra=None):
    """A finished run whose last round (2) scored ``rouge`` per prompt on two clients."""
    folder.mkdir(parents=True)
    rows = [{"round": 0, "nll": 2.5}, {"round": 1, "evaluated": False}, {"round": 2, "nll": 2.0}]
    for row in rows:
        row.update({"bytes-cumulative": 100 * row["round"], "elapsed-seconds": row["round"]})
    (folder / "metrics.json").write_text(json.dumps(rows))
    (folder / "summary.json").write_text(json.dumps({"strategy": label}))
    (folder / "config.json").write_text(json.dumps({"strategy": label, "seed": seed}))
    lines = []
    for node in (2, 1):  # written in any order: read back by node
        lines.append(
            {
                "round": 2,
                "node": node,
                "ids": list(ids),
                p.PER_PROMPT[p.ROUGE_L]: [r + 0.01 * node for r in rouge],
                p.NLL_SUMS: [2.0] * len(ids),
                p.NLL_TOKENS: [1.0] * len(ids),
                **(extra or {}),
            }
        )
    # An earlier evaluated round: not the final one, never read.
    lines.append({"round": 0, "node": 1, "ids": list(ids), p.PER_PROMPT[p.ROUGE_L]: [9.0] * 4})
    (folder / "prompt_scores.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return RunRecord(label, folder, rows, {"strategy": label}, {"seed": seed})


def test_read_prompt_scores_takes_the_last_round_in_node_order(tmp_path):
    run = write_run(tmp_path / "r", "local", 1, [0.1, 0.2, 0.3, 0.4])
    scores = read_prompt_scores(run)
    ids, rouge = scores[p.ROUGE_L]
    assert ids == [10, 11, 12, 13]
    np.testing.assert_allclose(rouge.values, [[0.11, 0.21, 0.31, 0.41], [0.12, 0.22, 0.32, 0.42]])
    assert scores[p.NLL][1].overall() == pytest.approx(2.0)
    assert p.EMBED_SIM not in scores  # not generated: no list, no row


def test_every_variant_against_local_and_fedavg_lora(tmp_path, monkeypatch):
    # A metric added to PER_PROMPT later is picked up like the others.
    monkeypatch.setitem(p.PER_PROMPT, "fact-accuracy", "fact-accuracy-per-prompt")
    runs = []
    for seed, shift in ((1, 0.1), (2, 0.3)):
        fact = {"fact-accuracy-per-prompt": [0.0, 0.0, 0.0, 0.0]}
        base = [0.1, 0.2, 0.3, 0.4]
        runs.append(write_run(tmp_path / f"local-{seed}", "local", seed, base, extra=fact))
        fact = {"fact-accuracy-per-prompt": [1.0, 1.0, 0.0, 0.0]}
        better = [r + shift for r in base]
        runs.append(write_run(tmp_path / f"fedsem-{seed}", "fedsem", seed, better, extra=fact))
    # fedavg-lora, seed 1 only, with the prompts listed in another order: aligned by id.
    runs.append(
        write_run(tmp_path / "fedavg", "fedavg-lora", 1, [0.4, 0.3, 0.2, 0.1], ids=(13, 12, 11, 10))
    )

    rows = {(r["label"], r["reference"], r["metric"]): r for r in paired_prompt_rows(runs)}

    rouge = rows[("fedsem", "local", p.ROUGE_L)]
    # +0.1 on every prompt in seed 1, +0.3 in seed 2: mean 0.2, std 0.141, interval [0.2, 0.2].
    assert rouge["seeds"] == 2 and rouge["better"] == 2
    assert rouge["per-seed"] == pytest.approx({1: 0.1, 2: 0.3})
    assert (rouge["diff"], rouge["low"], rouge["high"]) == pytest.approx((0.2, 0.2, 0.2))
    assert rouge["diff-std"] == pytest.approx(np.sqrt(0.02))
    assert rows[("fedsem", "local", p.NLL)]["diff"] == pytest.approx(0.0)
    fact = rows[("fedsem", "local", "fact-accuracy")]
    assert fact["diff"] == pytest.approx(0.5) and 0.0 <= fact["low"] < 0.5 < fact["high"] <= 1.0
    # Against fedavg-lora: only seed 1 is paired; same scores per prompt id: +0.1.
    versus = rows[("fedsem", "fedavg-lora", p.ROUGE_L)]
    assert versus["seeds"] == 1 and versus["diff"] == pytest.approx(0.1)
    assert rows[("fedavg-lora", "local", p.ROUGE_L)]["diff"] == pytest.approx(0.0)
    assert ("local", "local", p.ROUGE_L) not in rows

    write_study(runs, tmp_path / "out", {"seeds": "1,2"}, {"fedsem": "local"})
    text = (tmp_path / "out" / "study.md").read_text()
    assert "| fedsem | local | rouge-l | 2 | 2/2 | +0.200 ± 0.141 | [+0.200, +0.200] |" in text
    assert (tmp_path / "out" / "paired.csv").read_text().startswith("label,reference,metric")
