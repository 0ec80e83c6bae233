"""Relevance scores: the rules that weigh who knows, their wire check and the estimators."""

import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, RecordDict

from fedsem_app import protocol as p
from fedsem_app.clients.relevance import (
    RELEVANCE_ESTIMATORS,
    relevance_scores,
    top_k_mean_cosine,
)
from fedsem_app.config.app import load_app_config
from fedsem_app.config.errors import ConfigError
from fedsem_app.config.sections import FedSemConfig
from fedsem_app.strategies.consensus import consensus, text_key
from fedsem_app.strategies.consensus_rules import (
    ExpertOptions,
    RelevanceOptions,
    cap_weights,
    relevance,
)
from fedsem_app.strategies.validation import check_answers

COS10 = math.cos(math.radians(10))  # 0.98481
COS80 = math.cos(math.radians(80))  # 0.17365
COS60 = 0.5


def unit(*degrees: float) -> np.ndarray:
    """2-D unit vectors at the given angles, as one prompt: shape (1, K, 2)."""
    rad = np.radians(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=-1)[None]


def valid(embeddings: np.ndarray) -> np.ndarray:
    return np.ones(embeddings.shape[:2], dtype=bool)


# Angles 0, 10, 90: answers 0 and 1 agree, answer 2 stands apart (medoid picks 1).
TRIO = unit(0, 10, 90)


# --- cap_weights --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "cap", "expected"),
    [
        # 0.7 -> 0.4; the other 0.6 split 2:1 between 0.2 and 0.1.
        ([0.7, 0.2, 0.1], 0.4, [0.4, 0.4, 0.2]),
        # 0.9 -> 0.5; 0.5 split 0.06 : 0.04 = 3:2.
        ([0.9, 0.06, 0.04], 0.5, [0.5, 0.3, 0.2]),
        # Cascade: 0.5 -> 0.4 leaves 0.6 split 9:1 = 0.54 (over) and 0.06; then 0.45 -> 0.4 too.
        ([0.5, 0.45, 0.05], 0.4, [0.4, 0.4, 0.2]),
        # The others underflowed to 0: they share the rest evenly.
        ([1.0, 0.0, 0.0], 0.4, [0.4, 0.3, 0.3]),
        # A cap below 1/n cannot be met: uniform.
        ([0.9, 0.05, 0.05], 0.2, [1 / 3, 1 / 3, 1 / 3]),
        # Nothing above the cap: unchanged.
        ([0.3, 0.3, 0.4], 0.5, [0.3, 0.3, 0.4]),
    ],
)
def test_cap_weights_by_hand(weights, cap, expected):
    w = torch.tensor([weights], dtype=torch.float64)
    capped = cap_weights(w, torch.ones_like(w, dtype=torch.bool), cap)
    np.testing.assert_allclose(capped[0].numpy(), expected, atol=1e-12)


def test_cap_weights_leaves_invalid_entries_at_zero():
    w = torch.tensor([[0.8, 0.0, 0.2], [0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    capped = cap_weights(w, mask, 0.6)
    # Two valid entries: cap 0.6 -> [0.6, 0, 0.4]; a row without valid entries stays 0.
    np.testing.assert_allclose(capped.numpy(), [[0.6, 0.0, 0.4], [0.0, 0.0, 0.0]], atol=1e-12)


# --- the relevance rule -------------------------------------------------------------------


def test_relevance_rule_follows_the_expert_unless_its_weight_is_capped():
    # Client 2 is by far the most relevant: r / T = [0, 0, 10].
    r = np.array([[0.0, 0.0, 1.0]])
    # No cap: w ~ [4.5e-5, 4.5e-5, 0.99991]; a2 scores ~1, a0 and a1 ~1e-4 -> a2.
    free = consensus("relevance", TRIO, valid(TRIO), relevance=r, options=RelevanceOptions(0.1, 1))
    # Cap 0.6: w = [0.2, 0.2, 0.6];
    #   a0 = 0.2 + 0.2 cos10 + 0           = 0.39696
    #   a1 = 0.2 cos10 + 0.2 + 0.6 cos80   = 0.50115
    #   a2 = 0 + 0.2 cos80 + 0.6           = 0.63473  <- still a2
    mid = consensus("relevance", TRIO, valid(TRIO), relevance=r, options=RelevanceOptions(0.1, 0.6))
    # Cap 0.4: w = [0.3, 0.3, 0.4];
    #   a0 = 0.3 + 0.3 cos10               = 0.59544
    #   a1 = 0.3 cos10 + 0.3 + 0.4 cos80   = 0.66490  <- the two who agree win
    #   a2 = 0.3 cos80 + 0.4               = 0.45209
    capped = consensus("relevance", TRIO, valid(TRIO), relevance=r)  # default cap 0.4
    assert free.index.tolist() == [2]
    assert mid.index.tolist() == [2]
    assert capped.index.tolist() == [1]
    scores = relevance(_inputs(TRIO, r), RelevanceOptions(0.1, 0.4))
    np.testing.assert_allclose(
        scores[0].numpy(),
        [0.3 + 0.3 * COS10, 0.3 * COS10 + 0.3 + 0.4 * COS80, 0.3 * COS80 + 0.4],
        atol=1e-12,
    )


def _inputs(embeddings, r):
    """ConsensusInputs as consensus() builds them (for scoring a rule directly)."""
    from fedsem_app.strategies.consensus import ConsensusInputs, normalise, pairwise_cosine

    e = torch.as_tensor(embeddings, dtype=torch.float64)
    mask = torch.ones(e.shape[:2], dtype=torch.bool)
    rel = torch.as_tensor(r, dtype=torch.float64)
    return ConsensusInputs(normalise(e), pairwise_cosine(e), mask, None, (), rel)


def test_relevance_rule_without_scores_votes_like_medoid():
    # No scores, or one lone score (missing ones count as the lowest, i.e. equal):
    # uniform weights, score_j = (1 + sum of cosines to the others) / 3 -> a1, as medoid.
    medoid = consensus("medoid", TRIO, valid(TRIO))
    for r in ([[np.nan] * 3], [[np.nan, np.nan, 5.0]], None):
        result = consensus("relevance", TRIO, valid(TRIO), relevance=r)
        assert result.index.tolist() == medoid.index.tolist() == [1]
        assert result.agreement[0] == pytest.approx(medoid.agreement[0])


def test_relevance_rule_counts_a_missing_score_as_the_lowest():
    # r = [0.5, NaN, 1.0] -> [0.5, 0.5, 1.0]; uncapped w = [e^-5, e^-5, 1] / (1 + 2e^-5)
    # = [0.00666, 0.00666, 0.98668]: a2 = 0.98668 + 0.00666 cos80 wins.
    r = np.array([[0.5, np.nan, 1.0]])
    result = consensus(
        "relevance", TRIO, valid(TRIO), relevance=r, options=RelevanceOptions(0.1, 1.0)
    )
    assert result.index.tolist() == [2]
    # Had the missing score been the highest instead (1.0), a1 would carry w = 0.49834
    # and win: a1 = 0.00332 cos10 + 0.49834 + 0.49834 cos80 = 0.58814 > a2 = 0.58487.
    swapped = consensus(
        "relevance",
        TRIO,
        valid(TRIO),
        relevance=np.array([[0.5, 1.0, 1.0]]),
        options=RelevanceOptions(0.1, 1.0),
    )
    assert swapped.index.tolist() == [1]


def test_relevance_rule_liar_never_beats_answers_the_others_share():
    # Three honest clients give the same answer (angle 0); a liar claims 1e9 relevance.
    # Its weight is capped at c: it wins only with c > 1/2. Liar at angle a, s = cos(a):
    #   honest = (1 - c) + c s, liar = c + (1 - c) s; liar - honest = (2c - 1)(1 - s).
    for angle in (90, 60, 30, 170):
        embeddings = unit(0, 0, 0, angle)
        r = np.array([[0.1, 0.2, 0.3, 1e9]])
        for cap, liar_wins in ((0.4, False), (0.49, False), (0.6, True), (0.9, True)):
            result = consensus(
                "relevance",
                embeddings,
                valid(embeddings),
                relevance=r,
                options=RelevanceOptions(0.1, cap),
            )
            assert (result.index[0] == 3) == liar_wins, (angle, cap)


def test_relevance_rule_liar_score_is_bounded_on_random_rounds():
    # Bound of the docstring: the liar's score <= c + (1 - c) s, s = its best cosine.
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(50, 5, 6))
    r = rng.normal(size=(50, 5))
    r[:, 4] = 1e300  # client 4 lies on every prompt
    inputs = _inputs(embeddings, r)
    scores = relevance(inputs, RelevanceOptions(0.1, 0.3))
    best = inputs.similarity[:, 4, :4].max(-1).values
    assert torch.all(scores[:, 4] <= 0.3 + 0.7 * best + 1e-12)


# --- the expert rule ----------------------------------------------------------------------


def test_expert_takes_the_most_relevant_answer_when_it_is_supported():
    # Client 2 is the expert (margin 0.9 - 0.3 = 0.6). Its answer's best cosine to the
    # others is cos80 = 0.174: below the default support 0.3 -> no label; at 0.1 -> a2.
    r = np.array([[0.2, 0.3, 0.9]])
    unsupported = consensus("expert", TRIO, valid(TRIO), relevance=r)
    supported = consensus(
        "expert", TRIO, valid(TRIO), relevance=r, options=ExpertOptions(0.05, 0.1)
    )
    assert unsupported.index.tolist() == [-1] and unsupported.abstained.tolist() == [True]
    # A declined prompt reports the best agreement among its answers: a1's (cos10 + cos80) / 2.
    assert unsupported.agreement[0] == pytest.approx((COS10 + COS80) / 2)
    assert supported.index.tolist() == [2] and supported.abstained.tolist() == [False]
    assert supported.agreement[0] == pytest.approx((0 + COS80) / 2)  # the usual measure


def test_expert_abstains_on_a_small_margin():
    # Margin 0.90 - 0.88 = 0.02: abstain at the default margin 0.05, keep at 0.01.
    r = np.array([[0.2, 0.88, 0.9]])
    small = consensus("expert", TRIO, valid(TRIO), relevance=r, options=ExpertOptions(0.05, -1))
    enough = consensus("expert", TRIO, valid(TRIO), relevance=r, options=ExpertOptions(0.01, -1))
    assert small.index.tolist() == [-1] and small.abstained.tolist() == [True]
    assert enough.index.tolist() == [2]


def test_expert_with_missing_scores():
    no_check = ExpertOptions(0.05, -1)
    # No score at all: nobody stands out, even with margin 0.
    for r in ([[np.nan] * 3], None):
        for options in (no_check, ExpertOptions(0.0, -1)):
            result = consensus("expert", TRIO, valid(TRIO), relevance=r, options=options)
            assert result.abstained.tolist() == [True]
    # A lone score: the missing ones count as equal to it -> margin 0 -> abstain.
    lone = consensus(
        "expert", TRIO, valid(TRIO), relevance=[[np.nan, np.nan, 0.9]], options=no_check
    )
    assert lone.abstained.tolist() == [True]
    # A missing score is the lowest: [NaN, 0.1, 0.9] -> [0.1, 0.1, 0.9], expert 2.
    some = consensus("expert", TRIO, valid(TRIO), relevance=[[np.nan, 0.1, 0.9]], options=no_check)
    assert some.index.tolist() == [2]
    # Infinite claims are no scores either: [inf, 0.1, 0.9] -> [0.1, 0.1, 0.9].
    inf = consensus("expert", TRIO, valid(TRIO), relevance=[[np.inf, 0.1, 0.9]], options=no_check)
    assert inf.index.tolist() == [2]


def test_expert_ties_in_relevance_go_to_confidence_not_node_order():
    r = np.array([[0.9, 0.1, 0.9]])  # clients 0 and 2 tie
    confidences = np.array([[-2.0, -0.1, -0.5]])  # client 2 is the more confident
    options = ExpertOptions(0.0, -1)  # margin 0: a tie stands out "enough"
    result = consensus(
        "expert", TRIO, valid(TRIO), relevance=r, confidences=confidences, options=options
    )
    assert result.index.tolist() == [2]


def test_expert_liar_only_wins_where_another_client_wrote_something_close():
    # Client 3 claims the highest relevance on every prompt. Honest answers at 0/10/20
    # degrees. Prompt 0: the liar sends garbage (90 degrees, best cosine cos70 = 0.342
    # to the 20-degree answer... use 120: best cosine cos100 < 0); prompt 1: a payload
    # at 60 degrees (best cosine cos40 = 0.766 >= 0.3: close to an honest answer, kept);
    # prompt 2: garbage at 200 degrees (best cosine cos160 < 0).
    embeddings = np.concatenate([unit(0, 10, 20, 120), unit(0, 10, 20, 60), unit(0, 10, 20, 200)])
    r = np.array([[0.5, 0.2, 0.1, 1.0]] * 3)
    result = consensus("expert", embeddings, valid(embeddings), relevance=r)
    assert result.index.tolist() == [-1, 3, -1]
    # medoid ignores relevance and never picks the outlying liar.
    assert 3 not in consensus("medoid", embeddings, valid(embeddings)).index.tolist()


def test_expert_lone_valid_answer_needs_support_unless_switched_off():
    mask = np.array([[False, True, False]])
    r = np.array([[0.1, 0.9, 0.2]])
    default = consensus("expert", TRIO, mask, relevance=r)
    off = consensus("expert", TRIO, mask, relevance=r, options=ExpertOptions(0.05, -1))
    assert default.abstained.tolist() == [True]
    assert off.index.tolist() == [1]


# --- order-freedom ---------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["relevance", "expert"])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_new_rules_do_not_depend_on_client_order(rule, k):
    rng = np.random.default_rng(k)
    num_prompts = 12
    embeddings = rng.normal(size=(num_prompts, k, 4))
    embeddings[0, -1] = embeddings[0, 0]  # identical answers
    mask = rng.random((num_prompts, k)) < 0.85
    relevance_scores_ = rng.random((num_prompts, k)).round(1)  # rounding makes ties
    relevance_scores_[1, 0] = np.nan
    confidences = -rng.random((num_prompts, k))
    keys = rng.random((num_prompts, k))
    options = ExpertOptions(0.0, 0.0) if rule == "expert" else RelevanceOptions(0.2, 0.5)
    base = consensus(
        rule,
        embeddings,
        mask,
        relevance=relevance_scores_,
        confidences=confidences,
        text_keys=keys,
        options=options,
    )
    for _ in range(6):
        perm = rng.permutation(k)
        permuted = consensus(
            rule,
            embeddings[:, perm],
            mask[:, perm],
            relevance=relevance_scores_[:, perm],
            confidences=confidences[:, perm],
            text_keys=keys[:, perm],
            options=options,
        )
        original = np.where(permuted.index >= 0, perm[permuted.index], -1)
        np.testing.assert_array_equal(original, base.index)
        np.testing.assert_array_equal(permuted.abstained, base.abstained)
        np.testing.assert_allclose(permuted.agreement, base.agreement, atol=1e-12)
    assert (base.index >= 0).any()  # the test must exercise choices, not only abstentions


# --- config ------------------------------------------------------------------------------


def test_rules_that_need_relevance_are_refused_without_an_estimator():
    with pytest.raises(ConfigError, match="fedsem.relevance.*'expert'.*lift, similarity"):
        load_app_config({"fedsem.consensus": "expert"})
    with pytest.raises(ConfigError, match="fedsem.relevance.*'relevance'"):
        FedSemConfig(consensus="relevance")
    cfg = load_app_config(
        {
            "fedsem.consensus": "expert",
            "fedsem.relevance": "similarity",
            "fedsem.expert-margin": 0.1,
        }
    )
    assert cfg.fedsem.consensus_options == ExpertOptions(0.1, 0.3)
    with pytest.raises(ConfigError, match="fedsem.relevance"):
        load_app_config({"fedsem.relevance": "guess"})
    with pytest.raises(ConfigError, match="fedsem.relevance-max-weight"):
        load_app_config({"fedsem.relevance-max-weight": 0.0})
    with pytest.raises(ConfigError, match="fedsem.similarity-top-k"):
        load_app_config({"fedsem.similarity-top-k": 0})


# --- the wire: relevance in the answers record ---------------------------------------------


def answers_record(**extra):
    return RecordDict(
        {
            p.ANSWERS: ConfigRecord(
                {
                    p.IDS: [1, 2, 3],
                    p.TEXTS: ["a", "b", "c"],
                    p.CONFIDENCES: [-0.1, -0.2, -0.3],
                    **extra,
                }
            )
        }
    )


def test_relevance_on_the_wire():
    # Absent: no score anywhere.
    answers, reason = check_answers(answers_record(), [1, 2, 3], 100)
    assert reason is None and np.isnan(answers.relevance).all()
    # Non-finite: no score for that prompt, the answer still votes.
    scores = [0.5, float("nan"), float("inf")]
    answers, reason = check_answers(answers_record(**{p.RELEVANCE: scores}), [1, 2, 3], 100)
    assert reason is None
    assert answers.relevance[0] == 0.5 and np.isnan(answers.relevance[1:]).all()
    assert answers.valid.tolist() == [True, True, True]
    # Wrong length or type: the reply is refused, as for confidences.
    for bad in ([0.5, 0.5], ["high", "low", "low"], [True, False, True]):
        answers, reason = check_answers(answers_record(**{p.RELEVANCE: bad}), [1, 2, 3], 100)
        assert answers is None and "'relevance' must be one number per text" in reason


# --- estimators --------------------------------------------------------------------------


def test_top_k_mean_cosine_by_hand():
    queries = np.array([[1.0, 0.0], [0.0, 1.0]])
    private = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    # q0 cosines [1, 0.6, 0] -> top 2 mean 0.8; q1 cosines [0, 0.8, 1] -> 0.9.
    np.testing.assert_allclose(top_k_mean_cosine(queries, private, 2), [0.8, 0.9])
    # k above the number of private prompts: all of them, (1 + 0.6 + 0) / 3.
    np.testing.assert_allclose(top_k_mean_cosine(queries, private, 5), [1.6 / 3, 1.8 / 3])
    # No private prompt: no score.
    assert np.isnan(top_k_mean_cosine(queries, np.zeros((0, 2)), 3)).all()


def test_estimator_none_sends_nothing_and_the_registry_names_the_key():
    assert relevance_scores("none", None, ["q"], ["x"], FedSemConfig()) is None
    assert sorted(RELEVANCE_ESTIMATORS) == ["lift", "none", "similarity"]
    with pytest.raises(ConfigError, match="fedsem.relevance"):
        relevance_scores("oracle", None, ["q"], ["x"], FedSemConfig())


def test_similarity_estimator_ranks_a_private_topic_first():
    private = [
        "How long must concrete cure before loading?",
        "What strength does concrete reach after 28 days?",
        "Can I pour concrete in freezing weather?",
    ]
    prompts = ["How long does concrete take to cure?", "Which bank offers the best mortgage rate?"]
    scores = relevance_scores("similarity", None, prompts, private, FedSemConfig())
    assert len(scores) == 2 and all(-1 <= s <= 1 for s in scores)
    assert scores[0] > scores[1] + 0.2, scores


def test_text_key_is_used_for_identical_relevance_and_confidence():
    # Two clients tie in relevance and confidence: the higher text key wins, in any order.
    texts = ["first answer", "second answer"]
    keys = np.array([[text_key(t) for t in texts]])
    winner = int(np.argmax(keys[0]))
    embeddings = unit(0, 90, 45)[:, :2]
    result = consensus(
        "expert",
        embeddings,
        valid(embeddings),
        relevance=[[0.5, 0.5]],
        confidences=[[-1.0, -1.0]],
        text_keys=keys,
        options=ExpertOptions(0.0, -1),
    )
    assert result.index.tolist() == [winner]


# --- lift on a tiny model ------------------------------------------------------------------


def test_lift_is_zero_before_training_and_positive_on_trained_prompts(tmp_path):
    from fedsem_app.clients import clear_client_cache, load_client
    from fedsem_app.config.sections import LoraConfig, TrainConfig

    clear_client_cache()
    client = load_client("tiny-llama", LoraConfig(rank=4, alpha=8, dropout=0.0), cache_dir=tmp_path)
    pairs = [
        ("How long must concrete cure before loading?", "Concrete must cure 28 days first."),
        ("What is a building permit?", "A building permit is the municipality's approval."),
    ]
    prompts = [q for q, _ in pairs] + ["Which bank offers the best mortgage rate?"]
    # A fresh LoRA adapter is the identity (B = 0): with and without it agree exactly.
    np.testing.assert_allclose(client.prompt_lift(prompts), 0.0, atol=1e-6)
    client.train(pairs, TrainConfig(local_steps=30, batch_size=2, learning_rate=1e-2), seed=0)
    scores = relevance_scores("lift", client, prompts, [], FedSemConfig())
    # The trained prompts became more likely; the unrelated prompt less so than them.
    assert scores[0] > 0 and scores[1] > 0, scores
    assert min(scores[:2]) > scores[2], scores
    # disable_adapter left the adapter on: scoring again gives the same numbers.
    np.testing.assert_allclose(client.prompt_lift(prompts), scores, atol=1e-6)
    clear_client_cache()
