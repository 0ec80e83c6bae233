"""The consensus rules: ``fedsem.consensus`` values, each a scoring function and its options.

Runs on the server. Conventions every rule shares (normalised cosines, ties,
agreement, abstention) are in :mod:`fedsem_app.strategies.consensus`. A new rule is
one function here (or in a module listed in ``CONSENSUS_RULES``' modules), decorated
with :func:`~fedsem_app.strategies.consensus.consensus_rule` and, if it takes
options, a frozen options class whose fields become ``fedsem.<rule>-<field>`` keys
(their defaults go into pyproject.toml, as Flower requires of every run-config key).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsem_app.config.errors import check
from fedsem_app.strategies.consensus import (
    TIE_TOLERANCE,
    ConsensusInputs,
    NoOptions,
    choose,
    consensus_rule,
    mean_similarity_to_others,
    normalise,
)


@consensus_rule("medoid")
def medoid(inputs: ConsensusInputs, options: NoOptions | None = None) -> torch.Tensor:
    """Score answers by mean cosine to the other valid answers.

    The text analogue of FedCT's majority vote: the answer the others agree with most.

    Parameters
    ----------
    inputs
        The round's embeddings, cosines and mask.

    Returns
    -------
    torch.Tensor
        ``(P, K)`` scores.

    """
    return mean_similarity_to_others(inputs.similarity, inputs.valid)


@consensus_rule("centroid")
def centroid(inputs: ConsensusInputs, options: NoOptions | None = None) -> torch.Tensor:
    """Score answers by cosine to the mean of the valid embeddings.

    With unit embeddings this ranks answers like ``medoid``: ``x_i . sum_j x_j
    = 1 + sum_{j != i} cos(x_i, x_j)``, so both rules pick the same answer; it is
    kept as the literal "nearest to the mean" rule for comparison. A zero mean
    (answers cancelling out) gives every answer score 0, hence the lowest valid index.

    Parameters
    ----------
    inputs
        The round's embeddings and mask.

    Returns
    -------
    torch.Tensor
        ``(P, K)`` scores.

    """
    mean = normalise(inputs.embeddings.sum(1))  # invalid rows are zero
    return torch.einsum("pkd,pd->pk", inputs.embeddings, mean)


@dataclass(frozen=True)
class ClusterOptions:
    """Options of the ``cluster`` rule.

    Attributes
    ----------
    threshold
        Cosine at or above which two answers are neighbours
        (``fedsem.cluster-threshold``).
    """

    threshold: float = 0.7

    def __post_init__(self) -> None:
        check(-1 <= self.threshold <= 1, "fedsem.cluster-threshold", "must be in [-1, 1]")


@consensus_rule("cluster", ClusterOptions)
def cluster(inputs: ConsensusInputs, options: ClusterOptions) -> torch.Tensor:
    """Medoid of the densest neighbourhood under ``options.threshold``.

    1. Two valid answers are neighbours when their cosine is ``>= threshold``;
       an answer's neighbourhood includes itself.
    2. The anchor is the answer with the most neighbours; among equally large
       neighbourhoods, the one with the highest ``medoid`` score, then the
       general tie-break (confidence, text key; never node order alone).
    3. Within the anchor's neighbourhood (not necessarily a clique: neighbours of
       the anchor need not be neighbours of each other), the answer with the highest
       mean cosine to the other members wins.

    Without any pair above the threshold every neighbourhood is a singleton, so the
    rule falls back to ``medoid``'s choice.

    Parameters
    ----------
    inputs
        The round's cosines and mask.
    options
        The neighbourhood threshold.

    Returns
    -------
    torch.Tensor
        ``(P, K)`` scores: members of the anchor's neighbourhood get their mean
        cosine to the other members, everyone else ``-inf``.

    """
    valid = inputs.valid
    both_valid = valid[:, :, None] & valid[:, None, :]
    # Self-links via the diagonal: membership must not depend on cos(x, x) rounding to 1.
    linked = (inputs.similarity >= options.threshold) & both_valid
    linked = linked | torch.diag_embed(valid)
    size = linked.sum(-1)  # (P, K), invalid answers have 0
    largest = valid & (size == size.max(-1, keepdim=True).values)
    centrality = mean_similarity_to_others(inputs.similarity, valid)
    anchor = choose(torch.where(largest, centrality, -torch.inf), inputs.tie_keys)  # (P,)
    members = linked[torch.arange(len(anchor)), anchor]  # (P, K) the anchor's row
    within = mean_similarity_to_others(inputs.similarity, members)
    return torch.where(members, within, -torch.inf)


@dataclass(frozen=True)
class ConfidenceOptions:
    """Options of the ``confidence`` rule.

    Attributes
    ----------
    weight
        Weight of the clients' confidence against agreement, in ``[0, 1]``
        (``fedsem.confidence-weight``).
    """

    weight: float = 0.5

    def __post_init__(self) -> None:
        check(0 <= self.weight <= 1, "fedsem.confidence-weight", "must be in [0, 1]")


@consensus_rule("confidence", ConfidenceOptions)
def confidence(inputs: ConsensusInputs, options: ConfidenceOptions) -> torch.Tensor:
    """Blend agreement with the clients' own confidence.

    ``score = (1 - w) * medoid_score + w * exp(mean token log-prob)``, with
    ``w = options.weight``. ``exp`` maps log-probs (<= 0) to ``[0, 1]``; positive
    values are clamped to 0 and NaN counts as no confidence (score 0).

    Parameters
    ----------
    inputs
        The round's cosines, mask and confidences.
    options
        The confidence weight.

    Returns
    -------
    torch.Tensor
        ``(P, K)`` scores.

    Raises
    ------
    ValueError
        If no confidences were given.

    """
    if inputs.confidences is None:
        raise ValueError("the 'confidence' rule needs confidences (mean token log-probs)")
    log_prob = torch.nan_to_num(inputs.confidences, nan=-torch.inf).clamp(max=0.0)
    w = options.weight
    return (1.0 - w) * medoid(inputs) + w * torch.exp(log_prob)


# --- rules that weigh who knows: the clients' relevance scores -----------------------


def filled_relevance(inputs: ConsensusInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance of the valid answers, a missing score counted as the prompt's lowest.

    A client that sends no (finite) score for a prompt is treated as the least
    relevant client that did: it keeps its vote but can never gain by withholding
    a score, and a lone scorer cannot stand out against clients that sent none.

    Parameters
    ----------
    inputs
        The round's mask and relevance (NaN = no score).

    Returns
    -------
    tuple
        ``(P, K)`` float64 relevance (``-inf`` for invalid answers, 0 for every
        valid answer of a prompt without any score) and ``(P,)`` bool: whether the
        prompt has at least one valid answer with a score.

    """
    valid = inputs.valid
    relevance = inputs.relevance
    if relevance is None:
        relevance = torch.full(valid.shape, torch.nan, dtype=torch.float64)
    scored = valid & ~torch.isnan(relevance)
    any_scored = scored.any(-1)
    lowest = torch.where(scored, relevance, torch.inf).min(-1, keepdim=True).values
    lowest = torch.where(any_scored[:, None], lowest, 0.0)
    filled = torch.where(scored, relevance, lowest)
    return torch.where(valid, filled, -torch.inf), any_scored


def cap_weights(weights: torch.Tensor, valid: torch.Tensor, cap: float) -> torch.Tensor:
    """Cap each weight of a row at ``cap``, handing the excess to the others pro rata.

    Water-filling: weights above the cap are set to it and the rest of the row's
    mass is shared among the uncapped valid entries in proportion to their weights
    (evenly where they all underflowed to 0), repeated until none exceeds the cap.
    A cap below ``1 / n`` (n valid entries) cannot be met and gives uniform weights.

    Parameters
    ----------
    weights
        ``(P, K)`` non-negative weights summing to 1 over each row's valid entries.
    valid
        ``(P, K)`` bool.
    cap
        The largest weight one entry may keep, in ``(0, 1]``.

    Returns
    -------
    torch.Tensor
        ``(P, K)`` weights that sum to 1 over the valid entries (0 elsewhere; rows
        without a valid entry stay 0), each at most ``max(cap, 1 / n)``.

    """
    count = valid.sum(-1, keepdim=True)
    limit = torch.clamp(1.0 / count.clamp(min=1), min=cap).to(weights.dtype)
    capped = torch.zeros_like(valid)
    out = torch.where(valid, weights, 0.0)
    for _ in range(weights.shape[-1]):  # each pass caps at least one more entry
        free = valid & ~capped
        mass = (1.0 - limit * capped.sum(-1, keepdim=True)).clamp(min=0.0)
        base = torch.where(free, weights, 0.0)
        total = base.sum(-1, keepdim=True)
        even = free / free.sum(-1, keepdim=True).clamp(min=1)
        share = torch.where(total > 0, base / total.clamp(min=1e-300), even)
        out = torch.where(capped, limit, mass * share)
        over = free & (out > limit + TIE_TOLERANCE)
        if not over.any():
            break
        capped = capped | over
    return torch.where(valid & (count > 0), out, 0.0)


@dataclass(frozen=True)
class RelevanceOptions:
    """Options of the ``relevance`` rule.

    Attributes
    ----------
    temperature
        Softmax temperature over the prompt's relevance scores, in the scores' unit
        (cosines for ``similarity``, nats per token for ``lift``);
        ``fedsem.relevance-temperature``. Small: the most relevant client dominates.
    max_weight
        The largest vote weight any one client can get, in ``(0, 1]``
        (``fedsem.relevance-max-weight``); below ``1/2`` a client that lies about its
        relevance cannot outvote an answer all the others agree on.
    """

    temperature: float = 0.1
    max_weight: float = 0.4

    def __post_init__(self) -> None:
        check(self.temperature > 0, "fedsem.relevance-temperature", "must be positive")
        check(0 < self.max_weight <= 1, "fedsem.relevance-max-weight", "must be in (0, 1]")


@consensus_rule("relevance", RelevanceOptions, needs_relevance=True)
def relevance(inputs: ConsensusInputs, options: RelevanceOptions) -> torch.Tensor:
    """Weighted medoid: each answer scored by the relevance-weighted cosine to all answers.

    ``score_j = sum_i w_i cos(e_j, e_i)`` over the prompt's valid answers (the
    answer's own term included, cosine 1), with ``w = softmax(r / temperature)``
    capped at ``max_weight`` (:func:`cap_weights`). A missing relevance counts as
    the prompt's lowest (:func:`filled_relevance`). Equal relevance gives uniform
    weights, and then the ranking of ``medoid``; a prompt without any score is voted
    on exactly like ``medoid``.

    Bound on a client that lies about its relevance: its weight is at most
    ``c = max(max_weight, 1/n)``, so its answer scores at most ``c + (1 - c) s``
    (``s`` its highest cosine to another answer), while an answer that all n - 1
    other clients gave scores at least ``(1 - c) + c s``. A lying client
    therefore never wins a prompt on which the other clients agree, as long as
    ``c < 1/2`` (the default 0.4, with three or more valid answers).

    Parameters
    ----------
    inputs
        The round's cosines, mask and relevance.
    options
        Temperature and weight cap.

    Returns
    -------
    torch.Tensor
        ``(P, K)`` scores.

    """
    filled, _ = filled_relevance(inputs)
    # Clamped so that a huge claim (1e308 / temperature = inf) still gives finite logits.
    logits = (filled / options.temperature).clamp(-1e300, 1e300)
    logits = torch.where(inputs.valid, logits, -torch.inf)
    weights = torch.nan_to_num(torch.softmax(logits, -1), nan=0.0)  # NaN: no valid answer
    weights = cap_weights(weights, inputs.valid, options.max_weight)
    return torch.einsum("pjk,pk->pj", inputs.similarity, weights)


@dataclass(frozen=True)
class ExpertOptions:
    """Options of the ``expert`` rule.

    Attributes
    ----------
    margin
        How far the most relevant client's score must lie above the runner-up's for
        its answer to become the label, in the scores' unit (``fedsem.expert-margin``);
        below it the prompt gets no label.
    support
        Cosine to at least one other valid answer that the expert's answer needs
        (``fedsem.expert-support``), in ``[-1, 1]``; -1 switches the check off.
    """

    margin: float = 0.05
    support: float = 0.3

    def __post_init__(self) -> None:
        check(self.margin >= 0, "fedsem.expert-margin", "must be 0 or positive")
        check(-1 <= self.support <= 1, "fedsem.expert-support", "must be in [-1, 1]")


@consensus_rule("expert", ExpertOptions, needs_relevance=True)
def expert(inputs: ConsensusInputs, options: ExpertOptions) -> torch.Tensor:
    """The answer of the most relevant client, or no label where none stands out.

    1. The expert is the valid answer with the highest relevance (a missing score
       counts as the prompt's lowest, :func:`filled_relevance`); equal scores go to
       the general tie-break (confidence, text key), never to node order.
    2. The prompt abstains (every answer scores ``-inf``) where the expert's score
       exceeds the runner-up's by less than ``margin``, where no valid answer has
       a score, or where the expert's answer has cosine below ``support`` to every
       other valid answer (a lone valid answer, which nothing can support, then
       abstains too unless ``support`` is -1).

    Bound on a client that lies about its relevance (it claims the highest score
    on every prompt): its text becomes a label only where another client's
    answer lies within cosine ``support`` of it; garbage or a payload that no
    other client wrote makes the prompt abstain instead. It can withhold labels,
    not plant them.

    Parameters
    ----------
    inputs
        The round's cosines, mask, relevance and tie keys.
    options
        Margin and support.

    Returns
    -------
    torch.Tensor
        ``(P, K)`` scores: 1 for the expert's answer, ``-inf`` elsewhere and on
        abstaining prompts.

    """
    filled, any_scored = filled_relevance(inputs)
    num_clients = filled.shape[-1]
    top = choose(filled, inputs.tie_keys)  # (P,)
    is_top = torch.nn.functional.one_hot(top, num_clients).bool()
    top_score = filled.gather(-1, top[:, None])[:, 0]
    runner_up = torch.where(is_top, -torch.inf, filled).max(-1).values  # -inf if alone
    stands_out = (top_score - runner_up) >= options.margin
    others = inputs.valid & ~is_top
    cosines = inputs.similarity[torch.arange(len(top)), top]  # (P, K) expert vs each
    closest = torch.where(others, cosines, -torch.inf).max(-1).values
    supported = (closest >= options.support) | (options.support <= -1)
    keep = any_scored & stands_out & supported
    return torch.where(is_top & keep[:, None], 1.0, -torch.inf).to(torch.float64)
