"""Consensus at every K, unfinished answers, pick-share, label memory, round 0, intervals."""

import json
import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedsem_app import protocol as p
from fedsem_app.clients.batching import mixed_batches
from fedsem_app.config.app import load_app_config
from fedsem_app.data.split import load_split
from fedsem_app.run.intervals import mean_interval, ratio_interval
from fedsem_app.run.meter import MeteredGrid
from fedsem_app.run.results import RunLog, make_run_folder
from fedsem_app.strategies import get_strategy_class
from fedsem_app.strategies.consensus import consensus, text_key
from fedsem_app.strategies.consensus_rules import ClusterOptions
from fedsem_app.strategies.fedsem import pick_shares
from fedsem_app.tools.comparison import RunRecord
from fedsem_app.tools.study import (
    first_reaching,
    gain_per_round,
    model_rows,
    paired_rows,
    study_rows,
)
from tests.fake_grid import FakeGrid


def pair(deg_a, deg_b):
    rad = np.radians([deg_a, deg_b])
    return np.stack([np.cos(rad), np.sin(rad)], axis=-1)[None]  # (1, 2, 2)


# --- two clients: no node order ---------------------------------------------------------


@pytest.mark.parametrize("rule", ["medoid", "centroid", "cluster"])
def test_two_answers_go_to_the_more_confident_one_in_either_node_order(rule):
    # Two answers 40 degrees apart: each has cosine cos40 to "the other", a tie for
    # medoid/centroid, and two singletons for cluster at threshold 0.9. Client B
    # (log-prob -0.2) is more confident than A (-1.0): B wins wherever it sits.
    emb, mask = pair(0, 40), np.ones((1, 2), bool)
    options = ClusterOptions(0.9) if rule == "cluster" else None
    ab = consensus(rule, emb, mask, confidences=[[-1.0, -0.2]], options=options)
    ba = consensus(rule, emb[:, ::-1], mask, confidences=[[-0.2, -1.0]], options=options)
    assert ab.index.tolist() == [1] and ba.index.tolist() == [0]
    assert ab.agreement[0] == pytest.approx(math.cos(math.radians(40)))


def test_equal_confidence_falls_back_to_the_text_key_not_the_node():
    emb, mask, conf = pair(0, 40), np.ones((1, 2), bool), [[-0.5, -0.5]]
    keys = [[0.2, 0.7]]  # the second text has the higher key
    ab = consensus("medoid", emb, mask, confidences=conf, text_keys=keys)
    ba = consensus("medoid", emb[:, ::-1], mask, confidences=conf, text_keys=[[0.7, 0.2]])
    assert ab.index.tolist() == [1] and ba.index.tolist() == [0]


def test_text_key_is_stable_and_spread():
    # sha256("a") starts with ca978112ca1bb: 0xca978112ca1bb / 16**13
    assert text_key("a") == pytest.approx(0xCA978112CA1BB / 16**13)
    assert text_key("a") == text_key("a") and text_key("a") != text_key("b")
    assert all(0 <= text_key(t) < 1 for t in ("", "x", "long answer " * 50))


def test_agreement_still_beats_confidence_with_three_answers():
    # 0, 10 and 90 degrees: the 10-degree answer is the medoid even if the outlier
    # is far more confident; confidence only breaks ties.
    rad = np.radians([0, 10, 90])
    emb = np.stack([np.cos(rad), np.sin(rad)], axis=-1)[None]
    result = consensus("medoid", emb, np.ones((1, 3), bool), confidences=[[-2.0, -2.0, -0.01]])
    assert result.index.tolist() == [1]


def test_pick_shares_split_identical_winners():
    texts = [["a", "b", "a"], ["c", "d", "e"], ["f", "g", "h"], ["i", "j", "k"]]
    index = np.array([0, 1, -1, 2])  # prompt 0: "a" given by clients 0 and 2; prompt 2 abstained
    # credit: client 0 = 0.5, client 1 = 1, client 2 = 0.5 + 1; over 3 labelled prompts
    np.testing.assert_allclose(pick_shares(texts, index), [0.5 / 3, 1 / 3, 1.5 / 3])
    assert pick_shares(texts, np.array([-1, -1, -1, -1])).tolist() == [0, 0, 0]


# --- batches with a pseudo-label share --------------------------------------------------


def test_mixed_batches_hold_the_pseudo_share():
    rng = np.random.default_rng(0)
    batches = mixed_batches(
        rng, num_private=10, num_pseudo=3, batch_size=4, steps=6, pseudo_share=0.5
    )
    assert all(len(b) == 4 for b in batches)
    # round(0.5 * 4) = 2 pseudo-labelled (indices 10..12) and 2 private (0..9) per batch
    assert all(sum(i >= 10 for i in b) == 2 for b in batches)
    # 6 batches x 2 = 12 draws from 3 labels: each label 4 times (whole passes first)
    pseudo = [i for b in batches for i in b if i >= 10]
    assert sorted(pseudo) == [10] * 4 + [11] * 4 + [12] * 4


def test_mixed_batches_without_a_share_draw_from_the_union():
    a = mixed_batches(np.random.default_rng(1), 5, 2, 7, 1, 0.0)
    assert sorted(a[0]) == list(range(7))  # one full pass over 5 + 2 examples
    only = mixed_batches(np.random.default_rng(1), 5, 2, 4, 2, 1.0)
    assert all(i >= 5 for b in only for i in b)


# --- intervals over prompts ---------------------------------------------------------------


def test_intervals_by_hand():
    assert mean_interval(np.full(8, 0.3)) == pytest.approx((0.3, 0.3))
    # Two prompts scoring 0 and 1: a resample's mean is 0, 0.5 or 1 with probabilities
    # 1/4, 1/2, 1/4, so the 2.5 % and 97.5 % quantiles are 0 and 1.
    assert mean_interval(np.array([0.0, 1.0])) == pytest.approx((0.0, 1.0))
    # Ratios: every prompt has NLL sum 2 over 4 tokens -> 0.5 whatever the resample.
    sums, tokens = np.full((2, 5), 2.0), np.full((2, 5), 4.0)
    assert ratio_interval(sums, tokens) == pytest.approx((0.5, 0.5))
    # Two clients, per-prompt mean over clients is constant 0.5 -> a point interval.
    assert mean_interval(np.array([[0.0, 1.0], [1.0, 0.0]])) == pytest.approx((0.5, 0.5))


# --- gain over round 0, cost to target ---------------------------------------------------


def rows(nlls, bytes_per_round=10):
    return [
        {"round": r, "nll": v, "bytes-cumulative": bytes_per_round * r, "elapsed-seconds": 5.0 * r}
        for r, v in enumerate(nlls)
    ]


def test_gain_and_first_round_reaching_a_target():
    r = rows([3.0, 2.8, 2.5])
    assert gain_per_round(r, "nll") == pytest.approx({1: 0.2, 2: 0.5})
    assert first_reaching(r, "nll", 0.45) == {"round": 2, "bytes": 20, "seconds": 10.0}
    assert first_reaching(r, "nll", 0.6) is None
    assert gain_per_round(r[1:], "nll") == {}  # no round 0, no gain


def test_study_rows_spread_and_cost_to_target():
    runs = [
        RunRecord("pooled", None, rows([3.0, 2.6, 2.0]), {"ok": 1}),
        RunRecord("pooled", None, rows([3.0, 2.6, 2.2]), {"ok": 1}),
        RunRecord("local", None, rows([3.0, 2.9, 2.8], 1), {"ok": 1}),
    ]
    table = {r["label"]: r for r in study_rows(runs)}
    # pooled gains 1.0 and 0.8: mean 0.9, sample std sqrt(0.02) = 0.1414
    assert table["pooled"]["nll-gain"] == pytest.approx(0.9)
    assert table["pooled"]["nll-gain-std"] == pytest.approx(math.sqrt(0.02))
    # target 0.9 x 0.9 = 0.81: the first pooled run reaches it in round 2 (gain 1.0)
    assert table["pooled"]["target-reached"] == "1/2"
    assert table["pooled"]["bytes-to-target"] == 20
    assert table["local"]["target-reached"] == "0/1" and table["local"]["nll-gain-std"] is None
    assert table["local"]["bytes-per-round"] == pytest.approx(1.0)


def test_paired_by_seed_against_the_baseline():
    runs = [
        RunRecord("local", None, rows([3.0, 2.50]), {}, {"seed": 1}),
        RunRecord("local", None, rows([3.0, 2.70]), {}, {"seed": 2}),
        RunRecord("fedsem", None, rows([3.0, 2.45]), {}, {"seed": 1}),
        RunRecord("fedsem", None, rows([3.0, 2.72]), {}, {"seed": 2}),
        RunRecord("fedsem", None, rows([3.0, 2.00]), {}, {"seed": 3}),  # no local s3: unpaired
    ]
    (row,) = paired_rows(runs, {"fedsem": "local", "pooled": "local"})  # no pooled runs
    # NLL is lower-better: s1 2.50 - 2.45 = +0.05, s2 2.70 - 2.72 = -0.02
    assert row["per-seed"] == pytest.approx({1: 0.05, 2: -0.02})
    assert row["seeds"] == 2 and row["better"] == 1
    assert row["diff"] == pytest.approx(0.015)
    assert row["diff-std"] == pytest.approx(math.sqrt(2 * 0.035**2))  # sample std of 2 values


def test_per_model_gain_against_the_same_model_trained_alone(tmp_path):
    def run(label, seed, nll, share=None):
        folder = tmp_path / f"{label}-{seed}"
        folder.mkdir()
        lines = [
            {"round": r, "phase": phase, "model": m, "nll": v}
            for r, per_model in ((0, {"a": [3.0, 3.2], "b": [4.0]}), (2, nll))
            for m, values in per_model.items()
            for v in values
            for phase in ("train", "evaluate")
        ]
        (folder / "clients.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        summary = {"pick-share": share} if share else {}
        return RunRecord(label, folder, rows([3.0, 2.0]), summary, {"seed": seed})

    runs = [
        run("local-hetero", 1, {"a": [2.6, 2.8], "b": [3.5]}),
        run("fedsem-hetero", 1, {"a": [2.5, 2.5], "b": [3.6]}, {"a": 0.75, "b": 0.25}),
    ]
    table = {
        (r["label"], r["model"]): r for r in model_rows(runs, {"fedsem-hetero": "local-hetero"})
    }
    fa, fb = table[("fedsem-hetero", "a")], table[("fedsem-hetero", "b")]
    # model a: round 0 mean 3.1, final 2.5 -> gain 0.6; local's a ends at 2.7 -> +0.2
    assert fa["final"] == pytest.approx(2.5) and fa["gain"] == pytest.approx(0.6)
    assert fa["vs-baseline"] == pytest.approx(0.2) and fa["better"] == "1/1"
    # model b: 4.0 -> 3.6, gain 0.4, worse than local's 3.5 by 0.1
    assert fb["gain"] == pytest.approx(0.4) and fb["vs-baseline"] == pytest.approx(-0.1)
    assert fb["better"] == "0/1" and fb["pick-share"] == 0.25
    assert "vs-baseline" not in table[("local-hetero", "a")]


# --- the strategy: unfinished answers, memory, round 0 ------------------------------------


def scripted(answers):
    """answers[partition] -> (text, confidence, finished) for every prompt."""
    pseudo_seen = []

    def app(msg: Message, ctx) -> Message:
        part = ctx.node_config["partition-id"]
        if msg.metadata.message_type == p.EVALUATE:
            metrics = {
                p.NUM_EXAMPLES: 3,
                p.ROUGE_L: 0.1,
                p.EMBED_SIM: 0.5,
                p.NLL: 2.0 - part,
                p.NLL_SUMS: [1.0, 2.0, 3.0],
                p.NLL_TOKENS: [1.0, 1.0, 1.0],
            }
            return Message(content=RecordDict({p.METRICS: MetricRecord(metrics)}), reply_to=msg)
        pseudo = msg.content[p.PSEUDO]
        pseudo_seen.append(
            (
                list(pseudo.get(p.IDS, [])),
                list(pseudo.get(p.TEXTS, [])),
                list(pseudo.get(p.FINISHED, [])),
            )
        )
        ids = list(msg.content[p.PUBLIC][p.IDS])
        text, conf, done = answers[part]
        record = {
            p.IDS: ids,
            p.TEXTS: [text] * len(ids),
            p.CONFIDENCES: [conf] * len(ids),
            p.FINISHED: [done] * len(ids),
        }
        content = RecordDict(
            {
                p.ANSWERS: ConfigRecord(record),
                p.METRICS: MetricRecord({p.NUM_EXAMPLES: 10, p.TRAIN_LOSS: 1.0}),
                p.INFO: ConfigRecord({p.MODEL_NAME: f"m{part % 2}"}),
            }
        )
        return Message(content=content, reply_to=msg)

    return app, pseudo_seen


def run_fedsem(tmp_path, answers, **overrides):
    cfg = load_app_config(
        {"fedsem.prompts-per-round": 4, "eval.num-prompts": 3, "num-server-rounds": 3, **overrides}
    )
    app, seen = scripted(answers)
    grid = MeteredGrid(FakeGrid(app, len(answers), cfg.to_flat()))
    run_log = RunLog(
        make_run_folder(tmp_path, "t", "fedsem"), {}, cfg.num_server_rounds, grid.snapshot
    )
    strategy = get_strategy_class("fedsem")(cfg, load_split(cfg.data, cfg.seed), run_log)
    strategy.start(
        grid=grid, initial_arrays=strategy.initial_arrays(), num_rounds=cfg.num_server_rounds
    )
    return strategy, run_log, seen


GOOD = "Concrete needs about 28 days to reach its design strength."
CUT = "It takes roughly 28 days for concrete to reach full"
OFF = "Bananas are yellow and rich in potassium."


def test_two_clients_pick_the_confident_one_and_cut_labels_travel_flagged(tmp_path):
    # Client 0 is cut off at the cap but more confident; client 1 finished.
    strategy, run_log, seen = run_fedsem(tmp_path, [(CUT, -0.1, False), (GOOD, -0.9, True)])
    row = run_log.rows[1]
    assert row["truncated-share"] == pytest.approx(0.5)  # 4 of 8 answers
    assert row["pick-share-m0"] == 1.0 and row["pick-share-m1"] == 0.0
    # Round 2 trains on round 1's labels: all client 0's text, flagged unfinished.
    ids, texts, finished = seen[2]
    assert texts == [CUT] * 4 and finished == [False] * 4
    assert row["pseudo-unfinished"] == 4


def test_vote_unfinished_off_leaves_cut_answers_out(tmp_path):
    _, run_log, seen = run_fedsem(
        tmp_path, [(CUT, -0.1, False), (GOOD, -0.9, True)], **{"fedsem.vote-unfinished": False}
    )
    ids, texts, finished = seen[2]
    assert texts == [GOOD] * 4 and finished == [True] * 4
    assert run_log.rows[1]["pick-share-m1"] == 1.0


def test_label_memory_keeps_every_prompt_answered_so_far(tmp_path):
    answers = [(GOOD, -0.5, True), (GOOD, -0.5, True), (OFF, -0.5, True)]
    _, _, plain = run_fedsem(tmp_path / "a", answers)
    _, _, memory = run_fedsem(tmp_path / "b", answers, **{"fedsem.label-memory": True})
    # 3 clients x 3 rounds of train messages; round r's messages are seen[3(r-1):3r].
    sizes = [len(plain[i][0]) for i in (0, 3, 6)]
    assert sizes == [0, 4, 4]  # last round's 4 labels only
    sizes = [len(memory[i][0]) for i in (0, 3, 6)]
    assert sizes == [0, 4, 8]  # rounds 1 and 2: 8 distinct public prompts
    assert memory[6][1] == [GOOD] * 8


def test_round_zero_evaluates_before_training_and_summary_has_the_gain(tmp_path):
    _, run_log, _ = run_fedsem(tmp_path, [(GOOD, -0.5, True), (OFF, -0.4, True)])
    first = run_log.rows[0]
    assert first["round"] == 0 and first["eval-replies"] == 2 and "train-replies" not in first
    # both clients: NLL sums 1, 2, 3 over 3 tokens -> a resample's NLL lies in [1, 3]
    assert 1.0 <= first["nll-low"] <= first["nll-high"] <= 3.0
    summary = run_log.finish()
    assert summary["rounds"] == 3
    assert summary["gain-over-round-0"]["nll"] == 0.0  # scripted NLL never changes
    # Two different answers always tie on agreement: the more confident one (m1) wins.
    assert summary["pick-share"] == pytest.approx({"m0": 0.0, "m1": 1.0})
