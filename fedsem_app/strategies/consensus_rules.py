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
