"""Bootstrap intervals over test prompts for the evaluation metrics (server side).

Runs on the server (and in the offline tools that compare runs).

Every client is evaluated on the same test prompts and returns its per-prompt
scores; resampling the prompts (with replacement) and recomputing the metric
gives an interval that says how much a number would move on another draw of
test prompts of the same kind. Pure functions over numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0  # fixed: the same scores always give the same interval


def _indices(num_prompts: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_prompts, size=(resamples, num_prompts))


def _bounds(stats: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def mean_interval(
    scores: np.ndarray, *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean over clients of each client's mean score.

    Parameters
    ----------
    scores
        ``(C, N)`` per-prompt scores of C clients on the same N prompts (or ``(N,)``).
    resamples, level, seed
        Bootstrap resamples, coverage and the seed of the resampling.

    Returns
    -------
    tuple
        ``(low, high)``; both equal the mean when there is a single prompt.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    per_prompt = scores.mean(axis=0)  # the client-mean, prompt by prompt
    idx = _indices(per_prompt.size, resamples, seed)
    return _bounds(per_prompt[idx].mean(axis=1), level)


def ratio_interval(
    sums: np.ndarray,
    counts: np.ndarray,
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = SEED,
) -> tuple[float, float]:
    """Bootstrap interval of the mean over clients of ``sum(sums) / sum(counts)``.

    The reference NLL is a ratio (summed token NLL over summed tokens), so each
    resample recomputes the ratio per client and averages the clients, as the
    reported NLL does.

    Parameters
    ----------
    sums, counts
        ``(C, N)`` (or ``(N,)``) per-prompt token-NLL sums and token counts.
    resamples, level, seed
        As in :func:`mean_interval`.

    Returns
    -------
    tuple
        ``(low, high)``.
    """
    sums = np.atleast_2d(np.asarray(sums, dtype=np.float64))
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    idx = _indices(sums.shape[1], resamples, seed)
    ratios = sums[:, idx].sum(axis=2) / np.maximum(counts[:, idx].sum(axis=2), 1.0)  # (C, B)
    return _bounds(ratios.mean(axis=0), level)


def two_sample_interval(
    a: np.ndarray,
    b: np.ndarray,
    statistic,
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``statistic(a, b)`` over two independent samples.

    Each resample draws ``a`` and ``b`` with replacement, each within itself (a
    stratified bootstrap: the group sizes stay fixed), as a membership-inference AUC
    over members and non-members needs.

    Parameters
    ----------
    a, b
        The two samples (1-D, non-empty).
    statistic
        ``fn(a, b) -> float``.
    resamples, level, seed
        As in :func:`mean_interval`.

    Returns
    -------
    tuple
        ``(low, high)``.
    """
    a, b = np.asarray(a), np.asarray(b)
    idx_a = _indices(a.size, resamples, seed)
    idx_b = _indices(b.size, resamples, seed + 1)
    stats = np.array([statistic(a[i], b[j]) for i, j in zip(idx_a, idx_b, strict=True)])
    return _bounds(stats, level)


def quality_intervals(records) -> dict[str, float]:
    """95 % intervals over prompts of ROUGE-L, embed-sim and NLL, averaged over clients.

    Parameters
    ----------
    records
        Evaluate metrics of one or more clients (mappings holding the per-prompt
        lists of :mod:`fedsem_app.protocol`); clients evaluated on a different
        number of prompts than the first are left out of the interval.

    Returns
    -------
    dict
        ``<metric>-low`` and ``<metric>-high`` for each metric whose lists were sent.
    """
    from fedsem_app import protocol as p

    out: dict[str, float] = {}

    def aligned(key: str) -> np.ndarray | None:
        rows = [list(r[key]) for r in records if key in r]
        rows = [row for row in rows if rows and len(row) == len(rows[0]) and row]
        return np.asarray(rows, dtype=np.float64) if rows else None

    for metric, key in p.PER_PROMPT.items():
        scores = aligned(key)
        if scores is not None:
            out[f"{metric}-low"], out[f"{metric}-high"] = mean_interval(scores)
    sums, counts = aligned(p.NLL_SUMS), aligned(p.NLL_TOKENS)
    if sums is not None and counts is not None and sums.shape == counts.shape:
        out[f"{p.NLL}-low"], out[f"{p.NLL}-high"] = ratio_interval(sums, counts)
    return out


@dataclass(frozen=True)
class PromptScores:
    """One run's per-prompt scores of one metric: ``(C, N)`` arrays, C clients on N prompts.

    The metric of a set of prompts is, per client, ``sum(values) / sum(counts)``
    over those prompts, then the mean over clients: with ``counts`` all ones that
    is the mean per-prompt score (ROUGE-L, embed-sim); with token counts and summed
    token NLLs it is the reference NLL, as each client reports it.
    """

    values: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, values, counts=None) -> PromptScores:
        """Scores from ``(C, N)`` (or ``(N,)``) values; ``counts`` default to ones."""
        values = np.atleast_2d(np.asarray(values, dtype=np.float64))
        counts = np.ones_like(values) if counts is None else counts
        counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
        if values.shape != counts.shape:
            raise ValueError(f"values {values.shape} and counts {counts.shape} differ in shape")
        return cls(values, counts)

    @property
    def num_prompts(self) -> int:
        """N, the number of prompts."""
        return self.values.shape[1]

    def overall(self) -> float:
        """The metric on all N prompts."""
        return float(self.metric(np.arange(self.num_prompts)[None, :])[0])

    def metric(self, idx: np.ndarray) -> np.ndarray:
        """The metric on each row of prompt indices ``idx`` (``(B, N')``): shape ``(B,)``."""
        sums = self.values[:, idx].sum(axis=2)
        counts = np.maximum(self.counts[:, idx].sum(axis=2), 1e-12)
        return (sums / counts).mean(axis=0)


def paired_difference(
    pairs: Sequence[tuple[PromptScores, PromptScores]],
    *,
    sign: float = 1.0,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = SEED,
) -> tuple[float, float, float]:
    """Mean over seeds of a variant's difference to a reference, with a paired bootstrap interval.

    Within a seed every strategy is evaluated on the same test prompts, so the
    prompts are resampled once per seed and the same resample scores both runs:
    what the prompts have in common cancels, and the interval shows what the
    choice of prompts leaves of the difference. Each resample averages the
    per-seed differences over seeds (the seeds themselves are not resampled).

    Parameters
    ----------
    pairs
        Per seed, ``(variant, reference)`` scores on the same prompts in the same
        order (the client counts may differ).
    sign
        +1 where higher is better, -1 where lower is (NLL): positive = better.
    resamples, level, seed
        As in :func:`mean_interval`; one generator, seeded once, draws the
        resamples of every seed in turn.

    Returns
    -------
    tuple
        ``(difference, low, high)``: the mean over seeds of the full-set difference
        and the interval.
    """
    if not pairs:
        raise ValueError("no seed with scores of both runs")
    rng = np.random.default_rng(seed)
    point = 0.0
    stats = np.zeros(resamples)
    for variant, reference in pairs:
        n = variant.num_prompts
        if reference.num_prompts != n:
            raise ValueError(
                f"paired scores need the same prompts: {n} and {reference.num_prompts}"
            )
        point += sign * (variant.overall() - reference.overall())
        idx = rng.integers(0, n, size=(resamples, n))
        stats += sign * (variant.metric(idx) - reference.metric(idx))
    low, high = _bounds(stats / len(pairs), level)
    return point / len(pairs), low, high
