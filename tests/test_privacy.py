"""Privacy attack pieces (fedsem_app.tools.privacy) with hand-worked expectations."""

import json
import math

import numpy as np
import pytest

from fedsem_app.run.intervals import two_sample_interval
from fedsem_app.tools.privacy import (
    auc,
    auc_interval,
    exposure,
    mid_ranks,
    secret_rank,
    verbatim_hits,
)


def test_mid_ranks_share_the_mean_rank_of_a_tie():
    # The two 3s hold ranks 2 and 3: each gets 2.5.
    assert mid_ranks([3, 1, 3]).tolist() == [2.5, 1.0, 2.5]
    assert mid_ranks([5, 4, 4, 4, 0]).tolist() == [5.0, 3.0, 3.0, 3.0, 1.0]


def test_auc_of_scripted_scores():
    # Every member above every non-member: a perfect attack; the reverse: 0.
    assert auc([3, 2], [1, 0]) == 1.0
    assert auc([0], [1]) == 0.0
    # Members {1, 2} vs non-members {1, 0}: of the 4 pairs, (1,1) ties (1/2) and the
    # other three are wins: 3.5 / 4 = 0.875.
    assert auc([1, 2], [1, 0]) == 0.875
    # All scores equal: a guess.
    assert auc([7, 7, 7], [7, 7]) == 0.5
    # Members {0.2, 0.9, 0.5} vs {0.4, 0.1}: wins 0.2>0.1, 0.9>both, 0.5>both = 5 of 6.
    assert math.isclose(auc([0.2, 0.9, 0.5], [0.4, 0.1]), 5 / 6)


def test_auc_needs_both_groups():
    with pytest.raises(ValueError, match="at least one member"):
        auc([], [1.0])


def test_auc_interval_of_a_perfect_attack_is_a_point_and_brackets_the_estimate():
    assert auc_interval([5, 6, 7], [1, 2]) == (1.0, 1.0)
    rng = np.random.default_rng(0)
    members, non_members = rng.normal(0.5, 1, 40), rng.normal(0, 1, 40)
    low, high = auc_interval(members, non_members)
    assert low < auc(members, non_members) < high
    assert 0.0 <= low < high <= 1.0


def test_two_sample_interval_resamples_each_group_within_itself():
    # Each group is constant, so every resample sees the same difference of means.
    low, high = two_sample_interval(
        np.full(5, 3.0), np.full(8, 1.0), lambda a, b: a.mean() - b.mean()
    )
    assert (low, high) == (2.0, 2.0)


def test_secret_rank_counts_ties_as_half():
    # Scores of the others: one better (6), one tie (5), two worse: 1 + 1 + 0.5.
    assert secret_rank(5.0, [6, 5, 4, 3]) == 2.5
    assert secret_rank(10.0, [1, 2, 3]) == 1.0
    assert secret_rank(0.0, [1, 2, 3]) == 4.0


def test_exposure_in_bits():
    # 5 candidates, rank 2.5: log2(5) - log2(2.5) = log2(2) = 1 bit.
    assert math.isclose(exposure(5.0, [6, 5, 4, 3]), 1.0)
    # Ranked first among 4: the maximum, log2(4) = 2; ranked last: 0.
    assert exposure(10.0, [1, 2, 3]) == 2.0
    assert exposure(0.0, [1, 2, 3]) == 0.0
    # 100 candidates, rank 1: log2(100) = 6.64 bits.
    assert math.isclose(exposure(0.0, [-1.0] * 99), math.log2(100))


def test_verbatim_hits_count_texts_holding_the_secret():
    texts = ["the code is 519817.", "519-817", "x519817y", "", "519817 and 519817"]
    assert verbatim_hits(texts, "519817") == 3
    assert verbatim_hits([], "519817") == 0


def test_bench_plants_every_canary_in_client_0_and_asks_them_first(tmp_path):
    import argparse

    from bench.privacy import NUM_CLIENTS, build_data
    from fedsem_app.config.sections import DataConfig
    from fedsem_app.data.partition import load_partition
    from fedsem_app.data.split import load_split

    args = argparse.Namespace(
        seed=42, records=260, canaries=5, copies=3, rounds=2, prompts_per_round=24, non_members=60
    )
    layout = build_data(args, tmp_path)
    cfg = DataConfig(path=str(layout.path), partitioner="iid")
    secrets = {c.secret for c in layout.canaries}
    for k in range(NUM_CLIENTS):
        rows = load_partition(cfg, 42, NUM_CLIENTS, k)
        planted = [r for r in rows if any(s in r.answer for s in secrets)]
        assert len(planted) == (15 if k == 0 else 0)
    public = load_split(cfg, 42).public
    assert [q.prompt for q in public[24:29]] == [c.paraphrase for c in layout.canaries]
    # Probe questions: half of client 0's own, half from nobody's data; members and
    # non-members of the loss attack are disjoint.
    assert len(layout.probe_members) == 20 and len(layout.probe_non_members) == 18
    assert not {q for q, _ in layout.members} & {q for q, _ in layout.non_members}
    # No non-member pair is in the file. The FAQ repeats 6 questions with different
    # answers, and one of them falls on both sides (noted in BENCHMARKS.md).
    in_file = {(r["prompt"], r["answer"]) for r in map(json.loads, layout.path.open())}
    assert not in_file & set(layout.non_members)
    shared = {q for q, _ in in_file} & {q for q, _ in layout.non_members}
    assert shared == {"What are BAS-P and BAS-U?"}
