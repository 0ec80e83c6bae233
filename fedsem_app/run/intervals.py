"""Bootstrap intervals over test prompts for the evaluation metrics (server side).

Runs on the server (and in the offline tools that compare runs).

Every client is evaluated on the same test prompts and returns its per-prompt
scores; resampling the prompts (with replacement) and recomputing the metric
gives an interval that says how much a number would move on another draw of
test prompts of the same kind. Pure functions over numpy arrays.
"""

from __future__ import annotations

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
