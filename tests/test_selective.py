"""Selective transfer and the per-round diagnostics, on the Ray-free fake Grid."""

import json
import math

import numpy as np
import pytest

from fedsem_app import protocol as p
from fedsem_app.clients.evaluation import rouge_l
from fedsem_app.config.app import load_app_config
from fedsem_app.data.records import load_records
from fedsem_app.data.split import load_split
from fedsem_app.strategies.consensus import consensus
from fedsem_app.strategies.diagnostics import (
    category_experts,
    expert_metrics,
    label_rouge,
    most_relevant,
    winners,
)
from fedsem_app.strategies.fedsem import knows_best, standardise_relevance
from tests.test_fedsem_strategy import GOOD, GOOD_TOO, OFF_TOPIC, run


def scripted(text, relevance, info=None):
    """Answer every prompt with ``text`` and claim ``relevance`` for each."""

    def behaviour(prompts, ids):
        extra = {p.RELEVANCE: [relevance] * len(prompts)}
        return [text] * len(prompts), [-0.5] * len(prompts), ids, extra, info or {}

    return behaviour


# Clients 0 and 1 give the same answer and win every medoid vote; client 2 claims the
# highest relevance with an off-topic answer; client 3 paraphrases the winners.
# Medoid: GOOD scores (1 + cos(GOOD, OFF) + cos(GOOD, GOOD_TOO)) / 3, above GOOD_TOO's
# (2 cos(GOOD, GOOD_TOO) + cos(GOOD_TOO, OFF)) / 3 since 1 > cos(GOOD, GOOD_TOO).
FOUR = [
    scripted(GOOD, 0.1),
    scripted(GOOD, 0.2),
    scripted(OFF_TOPIC, 0.9),
    scripted(GOOD_TOO, 0.1),
]


def test_selective_transfer_withholds_labels_from_those_who_know_best(tmp_path):
    _, run_log, seen, _ = run(tmp_path, FOUR, **{"fedsem.selective": True})
    # Round 2: the winners (0, 1) and the most relevant (2) get no label; 3 gets all 4.
    assert [seen[k][1] for k in range(3)] == [[], [], []]
    assert seen[3][1] == [GOOD] * 4
    assert run_log.rows[1]["labels-withheld"] == 3 * 4


def test_without_selective_transfer_everyone_gets_every_label(tmp_path):
    strategy, run_log, seen, _ = run(tmp_path, FOUR)
    assert all(seen[k][1] == [GOOD] * 4 for k in range(4))
    assert "labels-withheld" not in run_log.rows[1]
    assert "withheld" not in strategy.state_dict()  # checkpoints as before


def test_selective_state_survives_a_checkpoint(tmp_path):
    strategy, _, _, _ = run(tmp_path, FOUR, **{"fedsem.selective": True})
    state = strategy.state_dict()
    fresh = type(strategy)(strategy.app, strategy.split, strategy.run_log)
    fresh.load_state_dict(state)
    assert fresh.withheld == strategy.withheld and len(fresh.withheld) == 4


def test_knows_best_by_hand():
    texts = [["a", "a", "b"], ["a", "b", "c"], ["x", "y", "z"]]
    index = np.array([0, 2, -1])
    relevance = np.array([[0.1, 0.2, 0.9], [0.5, 0.5, np.nan], [0.9, 0.1, 0.1]])
    mask = np.ones((3, 3), dtype=bool)
    # Prompt 0: winners {0, 1} ("a" twice), most relevant {2}; prompt 1: winner {2},
    # relevance tie {0, 1}; prompt 2: no label, nobody.
    assert knows_best(texts, index, relevance, mask) == [{0, 1, 2}, {0, 1, 2}, set()]
    assert winners(texts, index) == [{0, 1}, {2}, set()]
    assert most_relevant(relevance, mask) == [{2}, {0, 1}, {0}]
    assert most_relevant(np.full((1, 2), np.nan), np.ones((1, 2), dtype=bool)) == [set()]


# --- diagnostics -----------------------------------------------------------------------------


def test_category_experts_and_expert_metrics_by_hand():
    holdings = [{"roof": 5, "permit": 1}, {"roof": 1}, {"permit": 3, "roof": 5}]
    experts = category_experts(["roof", "permit", "garden", ""], holdings)
    assert experts == [{0, 2}, {2}, set(), set()]
    won = [{1}, {2}, {0}, {1}]  # prompt 0: a non-expert won; prompt 1: the expert
    top = [{0}, {1}, {0}, set()]  # relevance: right on prompt 0, wrong on prompt 1
    mask = np.ones((4, 3), dtype=bool)
    # Prompts with a present expert: 0 and 1 -> expert-share 1/2, hit 1/2.
    assert expert_metrics(experts, won, top, mask) == {
        "expert-prompts": 2,
        "expert-share": 0.5,
        "relevance-expert-hit": 0.5,
    }
    # The expert of prompt 1 gave no valid answer: it no longer counts there.
    mask[1, 2] = False
    assert expert_metrics(experts, won, top, mask) == {
        "expert-prompts": 1,
        "expert-share": 0.0,
        "relevance-expert-hit": 1.0,
    }


def test_label_rouge_by_hand():
    texts = [["the cat sat", "a dog ran"], ["x", "y"], ["same", "words"]]
    mask = np.ones((3, 2), dtype=bool)
    index = np.array([1, -1, 0])
    # Prompt 0: candidates score 1.0 and 0.0 (no common word), the worse one chosen.
    # Prompt 1: no label. Prompt 2: no reference, skipped.
    out = label_rouge(texts, mask, index, ["the cat sat", "x", ""])
    assert out == {"label-rouge-chosen": 0.0, "label-rouge-best": 1.0, "label-rouge-random": 0.5}
    assert label_rouge(texts, mask, np.array([-1, -1, -1]), ["r", "r", "r"]) == {}


def test_diagnostics_in_the_round_metrics(tmp_path):
    cfg = load_app_config({"fedsem.prompts-per-round": 4})
    prompts = load_split(cfg.data, cfg.seed).public[:4]  # round 1's prompts
    # Client 2 (off-topic, most relevant) holds most examples of every prompt's category.
    mine = sorted({q.category for q in prompts})
    lots = {p.CATEGORIES: mine, p.CATEGORY_COUNTS: [5] * len(mine)}
    few = {p.CATEGORIES: mine, p.CATEGORY_COUNTS: [1] * len(mine)}
    behaviour = [
        scripted(GOOD, 0.1, few),
        scripted(GOOD, 0.2, few),
        scripted(OFF_TOPIC, 0.9, lots),
        scripted(GOOD_TOO, 0.1, few),
    ]
    _, run_log, _, folder = run(tmp_path, behaviour, **{"fedsem.diagnostics": True})
    row = run_log.rows[1]
    # GOOD won all 4 prompts, and the expert (client 2) sent the highest relevance.
    assert row["expert-prompts"] == 4 and row["expert-share"] == 0.0
    assert row["relevance-expert-hit"] == 1.0
    refs = {q.id: q.answer for q in load_records(cfg.data)}
    references = [refs[q.id] for q in prompts]
    good = rouge_l([GOOD] * 4, references)
    cands = [rouge_l([t] * 4, references) for t in (GOOD, GOOD, OFF_TOPIC, GOOD_TOO)]
    assert row["label-rouge-chosen"] == pytest.approx(np.mean(good))
    assert row["label-rouge-best"] == pytest.approx(np.mean(np.max(cands, axis=0)))
    assert row["label-rouge-random"] == pytest.approx(np.mean(np.mean(cands, axis=0)))
    # The run's summary carries them too (both rounds alike here: expert-share 0).
    summary = run_log.finish()
    assert summary["diagnostics"]["expert-share"] == 0.0
    assert (
        json.loads((folder / "summary.json").read_text())["diagnostics"] == summary["diagnostics"]
    )


def test_no_diagnostics_by_default(tmp_path):
    _, run_log, _, _ = run(tmp_path, FOUR)
    assert not {"expert-share", "label-rouge-chosen"} & set(run_log.rows[1])


# --- standardised relevance ----------------------------------------------------------------


def test_standardise_relevance_by_hand():
    relevance = np.array(
        [
            [1.0, 1.0, np.nan, 5.0],
            [2.0, 1.0, 0.5, 1.0],
            [3.0, 1.0, 1.5, 3.0],
        ]
    )
    mask = np.ones((3, 4), dtype=bool)
    mask[0, 3] = False  # client 3's first answer is invalid: its 5.0 does not count
    z = standardise_relevance(relevance, mask)
    # Client 0: mean 2, std sqrt(2/3) -> -/+ sqrt(3/2). Client 1 claims 1.0 everywhere:
    # no spread, no score. Client 2: [0.5, 1.5] -> mean 1, std 0.5 -> -1, +1. Client 3: idem.
    r = math.sqrt(1.5)
    expected = [[-r, np.nan, np.nan, np.nan], [0, np.nan, -1, -1], [r, np.nan, 1, 1]]
    np.testing.assert_allclose(z, expected, atol=1e-12)
    # An offset or a scale on one client's scores changes nothing.
    shifted = relevance.copy()
    shifted[:, 0] = 10 + 3 * shifted[:, 0]
    np.testing.assert_allclose(standardise_relevance(shifted, mask), z, atol=1e-12)


def test_standardised_relevance_silences_a_constant_liar_under_expert():
    # Three prompts, four clients; the honest expert differs per prompt (client p on
    # prompt p) and every answer agrees with the others enough to be supported.
    # Client 3 claims the top score 1.0 on every prompt: raw, it is the expert
    # everywhere; standardised it has no score, and the honest experts win.
    rng = np.random.default_rng(0)
    embeddings = np.repeat(rng.normal(size=(1, 1, 8)), 3, axis=0).repeat(4, axis=1)
    embeddings = embeddings + 0.1 * rng.normal(size=embeddings.shape)
    honest = np.array([[0.9, 0.2, 0.3], [0.3, 0.8, 0.2], [0.2, 0.3, 0.7]])
    relevance = np.concatenate([honest, np.ones((3, 1))], axis=1)
    mask = np.ones((3, 4), dtype=bool)
    raw = consensus("expert", embeddings, mask, relevance=relevance)
    z = consensus("expert", embeddings, mask, relevance=standardise_relevance(relevance, mask))
    assert raw.index.tolist() == [3, 3, 3]
    assert z.index.tolist() == [0, 1, 2]


def test_standardise_relevance_config_key(tmp_path):
    # The vote uses z-scores; the samples keep what the clients sent.
    _, run_log, _, folder = run(
        tmp_path, FOUR, **{"fedsem.standardise-relevance": True, "fedsem.selective": True}
    )
    samples = [json.loads(line) for line in (folder / "consensus_samples.jsonl").open()]
    assert [a["relevance"] for a in samples[0]["answers"]] == [0.1, 0.2, 0.9, 0.1]
    # Every client claims one score on every prompt: standardised, nobody has a score,
    # so only the winners (clients 0 and 1) are withheld: 2 x 4 labels.
    assert run_log.rows[1]["labels-withheld"] == 2 * 4


def test_diagnostic_totals_weigh_each_round_by_what_it_covers():
    from fedsem_app.run.results import diagnostic_totals

    rows = [
        {"round": 0},
        {
            "round": 1,
            "expert-share": 1.0,
            "expert-prompts": 1,
            "prompts-labelled": 4,
            "label-rouge-chosen": 0.2,
            "relevance-expert-hit": 0.5,
        },
        {
            "round": 2,
            "expert-share": 0.0,
            "expert-prompts": 3,
            "prompts-labelled": 0,
            "label-rouge-chosen": 0.9,
            "relevance-expert-hit": 1.0,
        },
    ]
    # expert-share (1 x 1 + 3 x 0) / 4; the rouge of a round without labels weighs 0.
    assert diagnostic_totals(rows) == {
        "expert-share": 0.25,
        "relevance-expert-hit": 0.75,
        "label-rouge-chosen": 0.2,
    }
    assert diagnostic_totals([{"round": 1, "nll": 2.0}]) == {}
