import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsem_app.config.errors import ConfigError
from fedsem_app.config.sections import FedSemConfig
from fedsem_app.strategies.consensus import CONSENSUS_RULES, NoOptions, consensus, pairwise_cosine
from fedsem_app.strategies.consensus_rules import ClusterOptions, ConfidenceOptions


def threshold_options(rule, threshold):
    """The cluster rule's threshold; the other rules take their own (default) options."""
    return ClusterOptions(threshold) if rule == "cluster" else None


COS10 = math.cos(math.radians(10))  # 0.98481
COS80 = math.cos(math.radians(80))  # 0.17365
COS50 = math.cos(math.radians(50))  # 0.64279
COS110 = math.cos(math.radians(110))  # -0.34202


def unit(*degrees: float) -> np.ndarray:
    """2-D unit vectors at the given angles, as one prompt: shape (1, K, 2)."""
    rad = np.radians(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=-1)[None]


def all_valid(embeddings: np.ndarray) -> np.ndarray:
    return np.ones(embeddings.shape[:2], dtype=bool)


# Angles 0, 10, 90 degrees. Cosines: (0,10) = cos10, (0,90) = 0, (10,90) = cos80.
# Mean cosine to the others:
#   a0 = (cos10 + 0) / 2       = 0.49240
#   a1 = (cos10 + cos80) / 2   = 0.57923   <- highest
#   a2 = (0 + cos80) / 2       = 0.08682
TRIO = unit(0, 10, 90)
A0, A1 = (COS10 + 0) / 2, (COS10 + COS80) / 2


def test_rules_registry_matches_config_choices():
    # The config accepts exactly the registered rules: it asks the registry.
    for rule in CONSENSUS_RULES:
        assert FedSemConfig(consensus=rule, relevance="similarity").consensus == rule
    with pytest.raises(ConfigError, match="allowed values: " + ", ".join(sorted(CONSENSUS_RULES))):
        FedSemConfig(consensus="no-such-rule")


def test_pairwise_cosine_by_hand():
    sim = pairwise_cosine(torch.tensor(TRIO * 3.0))  # scaling must not matter
    expected = [[1, COS10, 0], [COS10, 1, COS80], [0, COS80, 1]]
    assert sim.shape == (1, 3, 3)
    np.testing.assert_allclose(sim[0].numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("rule", ["medoid", "centroid"])
def test_medoid_and_centroid_pick_the_most_agreed_answer(rule):
    # centroid: x_i . (x0 + x1 + x2) = 1 + (sum of a_i's cosines), same order as medoid
    result = consensus(rule, TRIO, all_valid(TRIO))
    assert result.index.tolist() == [1]
    assert result.agreement[0] == pytest.approx(A1)
    assert result.abstained.tolist() == [False]
    assert result.num_valid.tolist() == [3]


# Angles 0, 10, 60, 120 degrees. Cosines:
#   (0,10) = cos10 = 0.985, (0,60) = 0.5, (0,120) = -0.5,
#   (10,60) = cos50 = 0.643, (10,120) = cos110 = -0.342, (60,120) = 0.5
# medoid: a0 = (0.985 + 0.5 - 0.5) / 3 = 0.328
#         a1 = (0.985 + 0.643 - 0.342) / 3 = 0.429
#         a2 = (0.5 + 0.643 + 0.5) / 3 = 0.548   <- medoid
#         a3 = (-0.5 - 0.342 + 0.5) / 3 = -0.114
QUAD = unit(0, 10, 60, 120)
QUAD_MEDOID = (0.5 + COS50 + 0.5) / 3
QUAD_A1 = (COS10 + COS50 + COS110) / 3


def test_medoid_on_four_answers():
    result = consensus("medoid", QUAD, all_valid(QUAD))
    assert result.index.tolist() == [2]
    assert result.agreement[0] == pytest.approx(QUAD_MEDOID)


def test_cluster_picks_medoid_of_densest_neighbourhood():
    # threshold 0.6 links (0,10) and (10,60) only.
    # neighbourhood sizes (self included): a0 2, a1 3, a2 2, a3 1 -> anchor a1 = {0, 1, 2}
    # within {0, 1, 2}: a0 = (0.985 + 0.5) / 2 = 0.742, a1 = (0.985 + 0.643) / 2 = 0.814,
    # a2 = (0.5 + 0.643) / 2 = 0.571 -> a1; agreement over all valid answers = 0.429
    result = consensus("cluster", QUAD, all_valid(QUAD), options=ClusterOptions(0.6))
    assert result.index.tolist() == [1]
    assert result.agreement[0] == pytest.approx(QUAD_A1)


def test_cluster_ties_go_to_the_most_central_anchor_then_lowest_index():
    # TRIO, threshold 0.7 links only (0,10): sizes a0 2, a1 2, a2 1.
    # Anchors a0 and a1 tie on size; a1 is more central (0.579 > 0.492) -> {0, 1}.
    # Within {0, 1} both have cosine cos10 to the other: tie -> lowest index 0.
    result = consensus("cluster", TRIO, all_valid(TRIO), options=ClusterOptions(0.7))
    assert result.index.tolist() == [0]
    assert result.agreement[0] == pytest.approx(A0)


def test_cluster_without_any_link_falls_back_to_medoid():
    # threshold 0.99 > every cosine: singletons, anchor = most central = medoid's a2
    result = consensus("cluster", QUAD, all_valid(QUAD), options=ClusterOptions(0.99))
    assert result.index.tolist() == [2]


def test_mask_excludes_an_outlier_even_if_garbage():
    # Mask out the 90-degree answer and make it NaN: valid {0, 10} tie on cos10 -> index 0
    embeddings = TRIO.copy()
    embeddings[0, 2] = np.nan
    mask = np.array([[True, True, False]])
    for rule in ("medoid", "centroid", "cluster"):
        result = consensus(rule, embeddings, mask)
        assert result.index.tolist() == [0], rule
        assert result.agreement[0] == pytest.approx(COS10)
        assert result.num_valid.tolist() == [2]


def test_non_finite_row_counts_as_masked():
    embeddings = TRIO.copy()
    embeddings[0, 1] = [np.inf, 0.0]
    # valid {0, 90}: both means are cos(0, 90) = 0 -> tie -> index 0, agreement 0
    result = consensus("medoid", embeddings, all_valid(embeddings))
    assert result.index.tolist() == [0]
    assert result.agreement[0] == pytest.approx(0.0)
    assert result.num_valid.tolist() == [2]


def test_lone_valid_answer_has_agreement_one():
    mask = np.array([[False, True, False]])
    result = consensus("medoid", TRIO, mask, min_agreement=0.99)
    assert result.index.tolist() == [1]
    assert result.agreement.tolist() == [1.0]
    assert result.abstained.tolist() == [False]


@pytest.mark.parametrize("rule", sorted(CONSENSUS_RULES))
def test_all_masked_prompt_abstains(rule):
    embeddings = np.concatenate([TRIO, TRIO])
    mask = np.array([[True, True, True], [False, False, False]])
    confidences = np.zeros((2, 3))
    relevance = np.array([[0.9, 0.1, 0.1], [0.9, 0.1, 0.1]])  # client 0 stands out
    result = consensus(rule, embeddings, mask, confidences=confidences, relevance=relevance)
    assert result.index.tolist()[1] == -1
    assert result.abstained.tolist() == [False, True]
    assert result.agreement[1] == 0.0
    assert result.num_valid.tolist() == [3, 0]


def test_min_agreement_abstains_below_threshold():
    # prompt 0: TRIO, agreement 0.579 < 0.6 -> abstain
    # prompt 1: angles 0, 10, 20: a1 = (cos10 + cos10) / 2 = 0.985 >= 0.6 -> keep a1
    embeddings = np.concatenate([TRIO, unit(0, 10, 20)])
    result = consensus("medoid", embeddings, all_valid(embeddings), min_agreement=0.6)
    assert result.index.tolist() == [-1, 1]
    assert result.abstained.tolist() == [True, False]
    np.testing.assert_allclose(result.agreement, [A1, COS10])


def test_confidence_rule_flips_choice_when_weight_is_high():
    # medoid scores (TRIO): 0.492, 0.579, 0.087; confidence exp(-0.1) = 0.905, exp(-2) = 0.135
    # w = 0.05: a0 = 0.95*0.492 + 0.05*0.905 = 0.513, a1 = 0.95*0.579 + 0.05*0.135 = 0.557 -> a1
    # w = 0.8:  a0 = 0.2*0.492 + 0.8*0.905 = 0.822,  a1 = 0.2*0.579 + 0.8*0.135 = 0.224  -> a0
    confidences = np.array([[-0.1, -2.0, -2.0]])
    low = consensus(
        "confidence",
        TRIO,
        all_valid(TRIO),
        confidences=confidences,
        options=ConfidenceOptions(0.05),
    )
    high = consensus(
        "confidence", TRIO, all_valid(TRIO), confidences=confidences, options=ConfidenceOptions(0.8)
    )
    assert low.index.tolist() == [1]
    assert high.index.tolist() == [0]
    assert high.agreement[0] == pytest.approx(A0)  # agreement is rule-independent


def test_confidence_rule_requires_confidences():
    with pytest.raises(ValueError, match="confidences"):
        consensus("confidence", TRIO, all_valid(TRIO))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="unknown consensus rule"):
        consensus("vote", TRIO, all_valid(TRIO))
    with pytest.raises(ValueError, match="mask"):
        consensus("medoid", TRIO, np.ones((1, 2), dtype=bool))


def test_empty_round():
    result = consensus("medoid", np.zeros((0, 3, 2)), np.zeros((0, 3), dtype=bool))
    assert result.index.shape == (0,)


@pytest.mark.parametrize("rule", sorted(CONSENSUS_RULES))
def test_batched_equals_per_prompt(rule):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(6, 5, 8))
    mask = rng.random((6, 5)) < 0.7
    confidences = -rng.random((6, 5)) * 3
    relevance = rng.random((6, 5))
    relevance[0, 1] = np.nan
    options = {"options": threshold_options(rule, 0.2), "min_agreement": 0.0}
    batched = consensus(
        rule, embeddings, mask, confidences=confidences, relevance=relevance, **options
    )
    for p in range(6):
        single = consensus(
            rule,
            embeddings[p : p + 1],
            mask[p : p + 1],
            confidences=confidences[p : p + 1],
            relevance=relevance[p : p + 1],
            **options,
        )
        assert single.index[0] == batched.index[p]
        assert single.abstained[0] == batched.abstained[p]
        assert single.agreement[0] == pytest.approx(batched.agreement[p], abs=1e-12)


@st.composite
def rounds(draw):
    p, k, d = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    values = st.floats(-10, 10, allow_nan=False)
    embeddings = draw(arrays(np.float64, (p, k, d), elements=values))
    mask = draw(arrays(np.bool_, (p, k)))
    confidences = draw(arrays(np.float64, (p, k), elements=st.floats(-20, 0)))
    relevance = draw(arrays(np.float64, (p, k), elements=st.floats(allow_nan=True, width=32)))
    return embeddings, mask, confidences, relevance


@settings(max_examples=60, deadline=None)
@given(
    data=rounds(),
    rule=st.sampled_from(sorted(CONSENSUS_RULES)),
    threshold=st.floats(-1, 1),
    min_agreement=st.floats(-1, 1),
)
def test_property_choice_is_a_valid_answer(data, rule, threshold, min_agreement):
    embeddings, mask, confidences, relevance = data
    result = consensus(
        rule,
        embeddings,
        mask,
        confidences=confidences,
        relevance=relevance,
        options=threshold_options(rule, threshold),
        min_agreement=min_agreement,
    )
    assert np.all(np.isfinite(result.agreement))
    assert np.all(np.abs(result.agreement) <= 1.0 + 1e-9)
    for p, index in enumerate(result.index):
        assert (index == -1) == result.abstained[p]
        if index != -1:
            assert mask[p, index]
            assert result.agreement[p] >= min_agreement


# --- a new rule with an option: one function and its options -----------------------


def test_a_new_rule_with_an_option_needs_no_other_edit(monkeypatch):
    """A rule registered with its options class is configurable by fedsem.<rule>-<option>."""
    from dataclasses import dataclass

    from fedsem_app.config.app import known_keys, load_app_config
    from fedsem_app.strategies.consensus import ConsensusRule

    @dataclass(frozen=True)
    class PickOptions:
        k: int = 0

    def pick(inputs, options):  # the answer of client k wins
        return (torch.arange(inputs.valid.shape[1]) == options.k).double().expand_as(inputs.valid)

    monkeypatch.setitem(CONSENSUS_RULES, "pick", ConsensusRule(pick, PickOptions))
    assert "fedsem.pick-k" in known_keys()
    cfg = load_app_config({"fedsem.consensus": "pick", "fedsem.pick-k": 2}).fedsem
    assert cfg.consensus_options == PickOptions(k=2)
    result = consensus(cfg.consensus, QUAD, all_valid(QUAD), options=cfg.consensus_options)
    assert result.index.tolist() == [2]
    # Its default applies when the key is not set; other rules keep theirs.
    assert load_app_config({"fedsem.consensus": "pick"}).fedsem.consensus_options.k == 0
    assert load_app_config({}).fedsem.consensus_options == NoOptions()


def test_rule_options_are_checked_and_must_belong_to_the_rule():
    from fedsem_app.config.app import load_app_config

    with pytest.raises(ConfigError, match="fedsem.cluster-threshold"):
        load_app_config({"fedsem.cluster-threshold": 1.5})
    with pytest.raises(ConfigError, match="fedsem.confidence-weight"):
        load_app_config({"fedsem.confidence-weight": "high"})
    with pytest.raises(ValueError, match="takes ClusterOptions, got ConfidenceOptions"):
        consensus("cluster", QUAD, all_valid(QUAD), options=ConfidenceOptions(0.5))
    cfg = load_app_config({"fedsem.consensus": "cluster", "fedsem.cluster-threshold": 0.6})
    assert cfg.fedsem.consensus_options == ClusterOptions(0.6)
    assert cfg.to_flat()["fedsem.cluster-threshold"] == 0.6  # what a checkpoint stores
