"""Privacy attacks as pure functions: membership-inference AUC, canary exposure, verbatim hits.

Offline tool (used by ``bench/privacy.py``).

These score what a party could learn about one client's private data from what it
sees (answers, pseudo-labels, an adapter). ``bench/privacy.py`` runs the federation
and feeds them; nothing here touches a model.

- :func:`auc`: the ROC AUC of an attack score that should be higher for members,
  by the rank formula (Mann-Whitney U; ties count one half). 0.5 is a guess, 1.0 a
  perfect attack. This is FedCT's VUL.
- :func:`auc_interval`: its bootstrap interval, members and non-members resampled
  separately (:func:`fedsem_app.run.intervals.two_sample_interval`).
- :func:`exposure`: Carlini et al.'s secret-sharer exposure of a planted secret,
  ``log2(#candidates) - log2(rank)``, from the likelihood rank of the true secret
  among all candidates (itself included).
- :func:`verbatim_hits`: how many texts contain a secret word for word.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from fedsem_app.run.intervals import two_sample_interval


def mid_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..N of ``values``, tied values sharing the mean of their ranks.

    ``[3, 1, 3]`` -> ``[2.5, 1, 2.5]``: the two 3s hold ranks 2 and 3.
    """
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    mid = first + (counts + 1) / 2  # mean of the ranks first+1 .. first+count
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(mid, counts)
    return ranks


def auc(members: Sequence[float], non_members: Sequence[float]) -> float:
    """ROC AUC of a score meant to be higher for members than for non-members.

    ``U / (m * n)`` with the Mann-Whitney ``U`` from mid-ranks of the pooled scores:
    the probability that a random member outscores a random non-member, a tie
    counting one half.

    Parameters
    ----------
    members, non_members
        Attack scores (e.g. minus the loss) of the two groups; both non-empty.

    Returns
    -------
    float
        In ``[0, 1]``; 0.5 when the score does not tell the groups apart.

    Raises
    ------
    ValueError
        If either group is empty.
    """
    a = np.asarray(members, dtype=np.float64)
    b = np.asarray(non_members, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("auc needs at least one member and one non-member score")
    ranks = mid_ranks(np.concatenate([a, b]))
    u = ranks[: a.size].sum() - a.size * (a.size + 1) / 2
    return float(u / (a.size * b.size))


def auc_interval(
    members: Sequence[float], non_members: Sequence[float], **kwargs
) -> tuple[float, float]:
    """95 % bootstrap interval of :func:`auc` (keyword arguments go to the bootstrap)."""
    return two_sample_interval(
        np.asarray(members, dtype=np.float64),
        np.asarray(non_members, dtype=np.float64),
        auc,
        **kwargs,
    )


def secret_rank(true_score: float, candidate_scores: Sequence[float]) -> float:
    """Rank of the true secret among all candidates by score, best first (1 = top).

    The true secret is one of the candidates; ``candidate_scores`` are the others.
    A candidate that ties the true secret counts one half, so a model that scores
    everything alike ranks the secret in the middle, not at the top.

    Parameters
    ----------
    true_score
        The score (e.g. log-likelihood) of the planted secret.
    candidate_scores
        The scores of the other candidates from the same space.

    Returns
    -------
    float
        ``1 + #better + #ties / 2``, in ``[1, len(candidate_scores) + 1]``.
    """
    others = np.asarray(candidate_scores, dtype=np.float64)
    better = int(np.sum(others > true_score))
    ties = int(np.sum(others == true_score))
    return 1.0 + better + ties / 2


def exposure(true_score: float, candidate_scores: Sequence[float]) -> float:
    """Carlini et al.'s exposure: ``log2(#candidates) - log2(rank)`` of the true secret.

    ``#candidates`` counts the true secret with the others. The maximum,
    ``log2(#candidates)``, means the model ranks the secret first; about 1 bit is
    what chance gives on average (rank in the middle).

    Parameters
    ----------
    true_score, candidate_scores
        As in :func:`secret_rank`.

    Returns
    -------
    float
        Exposure in bits, in ``[0, log2(#candidates)]``.
    """
    total = len(candidate_scores) + 1
    return float(np.log2(total) - np.log2(secret_rank(true_score, candidate_scores)))


def verbatim_hits(texts: Iterable[str], secret: str) -> int:
    """How many of ``texts`` contain ``secret`` word for word (case-sensitive)."""
    return sum(secret in text for text in texts)
