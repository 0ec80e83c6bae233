"""Per-prompt semantic consensus over the clients' answer embeddings.

Runs on the server.

The server embeds every client's answer to every public prompt of a round into
one ``(P, K, D)`` tensor (P prompts, K clients, D dims) with a ``(P, K)`` mask of
valid answers, and picks one answer per prompt as the pseudo-label. All prompts
are handled at once with batched tensor ops; there is no Python loop over
prompts or pairs of answers.

Conventions shared by every rule:

* Cosine similarity on L2-normalised embeddings (normalised again here, in
  float64 on the CPU: the tensors are small, and float64 keeps exact ties exact).
  Rows with non-finite values are treated as invalid answers.
* Ties are not broken by node order (which would make client 0 the teacher
  whenever scores tie). Scores within ``TIE_TOLERANCE`` of the best count as
  tied, so rounding noise cannot decide; among tied answers the one with the
  highest confidence (mean token log-prob) wins, then the one with the highest
  stable text key (:func:`text_key`, a hash of the answer text), and only
  answers with equal text and confidence fall back to the lowest index (they
  give the same pseudo-label). The choice is therefore invariant to permuting
  the clients.
* With two valid answers ``medoid``, ``centroid`` and ``confidence``'s agreement
  term cannot tell them apart (each answer's cosine to "the other" is the same
  number): ``medoid``/``centroid`` then pick the more confident answer,
  ``confidence`` blends agreement with confidence, and ``cluster`` keeps the
  pair's tie-break too. Agreement then measures only whether a pseudo-label is
  given at all (``min_agreement``).
* ``agreement`` is the same measure for every rule, so rules are comparable: the
  mean cosine of the chosen answer to the *other* valid answers of its prompt.
  A lone valid answer has agreement 1.0 (it is trivially unanimous; use
  ``num_valid`` to require more voters). A prompt without valid answers has
  agreement 0.0, index -1 and is abstained.
* A prompt abstains where ``agreement < min_agreement``, or where the rule itself
  declines to choose (it scores every valid answer ``-inf``, as ``expert`` does
  where no client stands out); its index is then -1.
* Relevance scores (``(P, K)``, how relevant each prompt is to each client's
  private data, sent by the clients with ``fedsem.relevance``) are claims: NaN
  means no score. A rule that uses them is registered with ``needs_relevance``,
  and the config refuses it while ``fedsem.relevance`` is ``none``.

A rule is a scoring function plus, if it has any, its own frozen options class,
registered together with :func:`consensus_rule` (the rules are in
:mod:`fedsem_app.strategies.consensus_rules`). An option ``x`` of rule ``r`` is
the run-config key ``fedsem.r-x`` (``fedsem.cluster-threshold``); the config reads
it through :func:`fedsem_app.config.app.rule_option_keys`, and pyproject.toml
declares its default.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (conventional alias)

from fedsem_app.registry import Registry


@dataclass(frozen=True)
class ConsensusResult:
    """The consensus of one round, one entry per prompt.

    Attributes
    ----------
    index
        ``(P,)`` int: the chosen answer in ``[0, K)``, or -1 where the prompt has no
        valid answer or abstained.
    agreement
        ``(P,)`` float: mean cosine of the chosen answer to the other valid
        answers (1.0 for a lone valid answer, 0.0 without valid answers). Reported
        for abstained prompts too, so one can see how far below the threshold they
        were; where the rule declined, the highest agreement among the valid answers.
    abstained
        ``(P,)`` bool: no valid answer, the rule declined (scored every valid
        answer ``-inf``), or ``agreement < min_agreement``.
    num_valid
        ``(P,)`` int: how many valid answers the prompt had.

    """

    index: np.ndarray
    agreement: np.ndarray
    abstained: np.ndarray
    num_valid: np.ndarray


@dataclass(frozen=True)
class ConsensusInputs:
    """What a rule sees: normalised embeddings, their cosines and the mask.

    Attributes
    ----------
    embeddings
        ``(P, K, D)`` float64, unit rows; invalid rows are zero.
    similarity
        ``(P, K, K)`` pairwise cosines of ``embeddings``.
    valid
        ``(P, K)`` bool mask of valid answers.
    confidences
        ``(P, K)`` mean token log-probabilities, or None when not given.
    tie_keys
        ``(P, K)`` tensors that break ties between equal scores, most important
        first (confidences, then text keys, where given); see :func:`choose`.
    relevance
        ``(P, K)`` float64 relevance of each prompt to each client, NaN where a
        client sent no (finite) score; all NaN when none were given.

    """

    embeddings: torch.Tensor
    similarity: torch.Tensor
    valid: torch.Tensor
    confidences: torch.Tensor | None
    tie_keys: tuple[torch.Tensor, ...] = ()
    relevance: torch.Tensor | None = None


@dataclass(frozen=True)
class NoOptions:
    """The options of a rule that has none."""


@dataclass(frozen=True)
class ConsensusRule:
    """A registered rule: its scoring function and its options class.

    Attributes
    ----------
    score
        ``fn(inputs, options) -> (P, K)`` scores; the answer with the highest score
        wins. Scores of invalid answers are ignored (the caller masks them).
    options
        A frozen dataclass whose defaults are the rule's defaults; it validates
        its values in ``__post_init__``.
    needs_relevance
        Whether the rule uses the clients' relevance scores (the config then
        requires ``fedsem.relevance`` to name an estimator).
    """

    score: Callable[[ConsensusInputs, Any], torch.Tensor]
    options: type = NoOptions
    needs_relevance: bool = False


# The rules live in consensus_rules.py (one function and its options each), imported
# on the first lookup.
CONSENSUS_RULES: Registry[ConsensusRule] = Registry(
    "consensus rule", key="fedsem.consensus", modules=["fedsem_app.strategies.consensus_rules"]
)


def consensus_rule(name: str, options: type = NoOptions, *, needs_relevance: bool = False):
    """Decorator: register ``fn(inputs, options)`` as the rule ``name`` with its options."""

    def decorator(fn: Callable[[ConsensusInputs, Any], torch.Tensor]):
        CONSENSUS_RULES.register(name, ConsensusRule(fn, options, needs_relevance))
        return fn

    return decorator


TIE_TOLERANCE = 1e-9


def choose(scores: torch.Tensor, tie_keys: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """Index of the best score per row, ties broken by ``tie_keys`` in turn.

    Scores within ``TIE_TOLERANCE`` of the row's best are tied. Among them the
    highest first tie key wins (again within the tolerance), then the highest
    second key, and so on; only what is still tied after every key goes to the
    lowest index. NaN keys count as ``-inf``.

    Parameters
    ----------
    scores
        ``(P, K)`` scores; ``-inf`` marks answers that cannot be chosen.
    tie_keys
        ``(P, K)`` tensors, most important first.

    Returns
    -------
    torch.Tensor
        ``(P,)`` int64 indices (0 for a row that is all ``-inf``).

    """
    tied = scores >= scores.max(-1, keepdim=True).values - TIE_TOLERANCE
    for key in tie_keys:
        key = torch.nan_to_num(key.to(torch.float64), nan=-torch.inf)
        masked = torch.where(tied, key, -torch.inf)
        tied = tied & (masked >= masked.max(-1, keepdim=True).values - TIE_TOLERANCE)
    # argmax over bools returns the first True.
    return tied.to(torch.uint8).argmax(-1)


def text_key(text: str) -> float:
    """A stable pseudo-random number in ``[0, 1)`` for an answer text (sha256).

    It breaks ties between answers that score alike without favouring any client:
    the same text gets the same key on every run, machine and node order.
    """
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:13], 16) / 16**13


def normalise(embeddings: torch.Tensor) -> torch.Tensor:
    """Unit rows along the last axis; zero rows stay zero (cosine 0 to everything)."""
    return F.normalize(embeddings, dim=-1, eps=1e-12)


def pairwise_cosine(embeddings: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Cosine similarity between all answers of each prompt.

    Parameters
    ----------
    embeddings
        ``(P, K, D)`` answer embeddings (normalised here).

    Returns
    -------
    torch.Tensor
        ``(P, K, K)`` float64 cosines, clamped to ``[-1, 1]``; zero rows give 0.

    """
    unit = normalise(torch.as_tensor(embeddings).detach().to("cpu", torch.float64))
    return torch.bmm(unit, unit.transpose(1, 2)).clamp(-1.0, 1.0)


def mean_similarity_to_others(similarity: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Mean cosine of each answer to the other members of its prompt.

    Parameters
    ----------
    similarity
        ``(P, K, K)`` pairwise cosines.
    members
        ``(P, K)`` bool: the answers that count (self-similarity never counts).

    Returns
    -------
    torch.Tensor
        ``(P, K)`` float64; 1.0 where an answer has no other member to compare with.
        Entries of non-members are meaningless.

    """
    k = similarity.shape[-1]
    pairs = members[:, :, None] & members[:, None, :] & ~torch.eye(k, dtype=torch.bool)
    count = pairs.sum(-1)
    total = torch.where(pairs, similarity, 0.0).sum(-1)
    return torch.where(count > 0, total / count.clamp(min=1), 1.0)


def consensus(
    rule: str,
    embeddings: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray,
    *,
    options: Any = None,
    confidences: torch.Tensor | np.ndarray | None = None,
    min_agreement: float = -1.0,
    text_keys: torch.Tensor | np.ndarray | None = None,
    relevance: torch.Tensor | np.ndarray | None = None,
) -> ConsensusResult:
    """Pick one answer per prompt by the named rule.

    Parameters
    ----------
    rule
        A name in :data:`CONSENSUS_RULES`: ``medoid``, ``centroid``, ``cluster``,
        ``confidence``, ``relevance`` or ``expert``.
    embeddings
        ``(P, K, D)`` answer embeddings, normalised here defensively.
    mask
        ``(P, K)`` bool, True where client k answered prompt p. Rows with
        non-finite values are treated as masked.
    options
        The rule's options object (e.g.
        :class:`~fedsem_app.strategies.consensus_rules.ClusterOptions`); None: its defaults.
    confidences
        ``(P, K)`` mean token log-probabilities; required by ``confidence``.
    min_agreement
        Abstain where the chosen answer's agreement is below this (default -1:
        never abstain on a valid answer).
    text_keys
        ``(P, K)`` stable keys of the answer texts (:func:`text_key`): the second
        tie-break after confidences. Without them (and without confidences) ties
        go to the lowest index.
    relevance
        ``(P, K)`` relevance of each prompt to each client's private data, used by
        ``relevance`` and ``expert``; NaN (or None for all) means no score.

    Returns
    -------
    ConsensusResult
        Chosen index, agreement, abstention and number of valid answers per prompt.

    Raises
    ------
    ValueError
        Unknown rule, options of another rule, mismatched shapes, or
        ``confidence`` without confidences.

    """
    if rule not in CONSENSUS_RULES:
        raise ValueError(f"unknown consensus rule {rule!r}; known: {sorted(CONSENSUS_RULES)}")
    entry = CONSENSUS_RULES[rule]
    options = entry.options() if options is None else options
    if not isinstance(options, entry.options):
        raise ValueError(
            f"rule {rule!r} takes {entry.options.__name__}, got {type(options).__name__}"
        )
    raw = _tensor(embeddings, torch.float64)
    valid = _tensor(mask, torch.bool)
    if raw.ndim != 3 or valid.shape != raw.shape[:2]:
        raise ValueError(
            f"expected embeddings (P, K, D) and mask (P, K), got {tuple(raw.shape)} "
            f"and {tuple(valid.shape)}"
        )
    conf = _per_answer(confidences, valid.shape, "confidences")
    keys = _per_answer(text_keys, valid.shape, "text_keys")
    relevant = _per_answer(relevance, valid.shape, "relevance")
    if relevant is None:
        relevant = torch.full(valid.shape, torch.nan, dtype=torch.float64)
    # Infinite claims carry no usable order (inf - inf): they count as no score.
    relevant = torch.where(torch.isfinite(relevant), relevant, torch.nan)
    tie_keys = tuple(k for k in (conf, keys) if k is not None)

    valid = valid & torch.isfinite(raw).all(-1)
    num_valid = valid.sum(-1)
    p, k = valid.shape
    if p == 0 or k == 0:
        return ConsensusResult(
            index=np.full(p, -1, dtype=np.int64),
            agreement=np.zeros(p),
            abstained=np.ones(p, dtype=bool),
            num_valid=num_valid.numpy(),
        )

    unit = normalise(torch.where(valid[..., None], raw, 0.0))
    similarity = torch.bmm(unit, unit.transpose(1, 2)).clamp(-1.0, 1.0)
    inputs = ConsensusInputs(unit, similarity, valid, conf, tie_keys, relevant)
    scores = torch.where(valid, entry.score(inputs, options), -torch.inf)

    index = choose(scores, tie_keys)
    centrality = mean_similarity_to_others(similarity, valid)
    agreement = centrality.gather(-1, index[:, None])[:, 0]
    has_valid = num_valid > 0
    # A rule declines a prompt by scoring every valid answer -inf (NaN counts as -inf);
    # such a prompt reports the highest agreement among its valid answers.
    declined = ~(scores > -torch.inf).any(-1)  # NaN > -inf is False
    best = torch.where(valid, centrality, -torch.inf).max(-1).values
    agreement = torch.where(declined, best, agreement)
    agreement = torch.where(has_valid, agreement, 0.0)
    abstained = ~has_valid | declined | (agreement < min_agreement)
    return ConsensusResult(
        index=torch.where(abstained, -1, index).numpy(),
        agreement=agreement.numpy(),
        abstained=abstained.numpy(),
        num_valid=num_valid.numpy(),
    )


def _per_answer(values, shape: torch.Size, name: str) -> torch.Tensor | None:
    if values is None:
        return None
    tensor = _tensor(values, torch.float64)
    if tensor.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")
    return tensor


def _tensor(values, dtype: torch.dtype) -> torch.Tensor:
    # np.ascontiguousarray: torch cannot wrap arrays with negative strides (a[:, ::-1]).
    if isinstance(values, np.ndarray):
        values = np.ascontiguousarray(values)
    return torch.as_tensor(values).detach().to("cpu", dtype)
