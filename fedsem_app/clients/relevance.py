"""Relevance estimators: how relevant a public prompt is to a client's private data.

Runs on the client. With ``fedsem.relevance`` set, each client sends one score per
public prompt with its answers (:data:`~fedsem_app.protocol.RELEVANCE`), and the
rules that weigh who knows (``relevance``, ``expert``) use them. The scores are
claims the server cannot check; those rules bound what a false one can win.

``none``        no score; nothing is sent (the default)
``similarity``  mean cosine between the prompt and its ``fedsem.similarity-top-k``
                most similar private prompts under the sentence encoder
                (``fedsem.embedder``); the private texts never leave the client
``lift``        how much the client's own fine-tuning raised the prompt's
                likelihood: mean token log-prob with the adapter minus without it
                (nats per token; one forward pass each, after training)

An estimator is one function ``fn(client, prompts, private, settings) -> scores``
registered with :func:`relevance_estimator`; NaN marks a prompt it cannot score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedsem_app.registry import Registry

NO_RELEVANCE = "none"

# fn(client, public prompts, private prompts, FedSemConfig) -> (P,) scores or None.
Estimator = Callable[[Any, Sequence[str], Sequence[str], Any], np.ndarray | None]

RELEVANCE_ESTIMATORS: Registry[Estimator] = Registry("relevance estimator", key="fedsem.relevance")


def relevance_estimator(name: str) -> Callable[[Estimator], Estimator]:
    """Decorator: register ``fn(client, prompts, private, settings)`` as estimator ``name``."""
    return RELEVANCE_ESTIMATORS.register(name)


@relevance_estimator(NO_RELEVANCE)
def no_relevance(client, prompts, private, settings) -> None:
    """No score: the answers go without a relevance field."""
    return None


def top_k_mean_cosine(queries: np.ndarray, references: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine of each query to its ``k`` most similar references.

    Parameters
    ----------
    queries
        ``(Q, D)`` unit rows (the public prompts).
    references
        ``(N, D)`` unit rows (the private prompts).
    k
        How many nearest references count; fewer when there are fewer than ``k``.

    Returns
    -------
    np.ndarray
        ``(Q,)`` float64; NaN for every query when there is no reference.

    """
    if len(references) == 0:
        return np.full(len(queries), np.nan)
    cosines = np.asarray(queries, np.float64) @ np.asarray(references, np.float64).T
    top = min(k, cosines.shape[1])
    # np.partition: the k largest per row without sorting them all.
    nearest = np.partition(cosines, cosines.shape[1] - top, axis=1)[:, -top:]
    return nearest.mean(axis=1)


@relevance_estimator("similarity")
def similarity(client, prompts, private, settings) -> np.ndarray:
    """Top-k mean cosine of each prompt to the private prompts (sentence encoder)."""
    from fedsem_app.embedding import embed

    device = getattr(client, "device", "cpu")
    return top_k_mean_cosine(
        embed(list(prompts), settings.embedder, device),
        embed(list(private), settings.embedder, device),
        settings.similarity_top_k,
    )


@relevance_estimator("lift")
def lift(client, prompts, private, settings) -> np.ndarray:
    """Adapter minus base mean token log-prob of each prompt (see ``prompt_lift``)."""
    return client.prompt_lift(list(prompts))


def relevance_scores(
    name: str, client, prompts: Sequence[str], private: Sequence[str], settings
) -> list[float] | None:
    """The named estimator's scores as floats for the wire, or None for ``none``.

    Raises
    ------
    ValueError
        If the estimator returns a different number of scores than prompts.
    """
    scores = RELEVANCE_ESTIMATORS.lookup(name)(client, prompts, private, settings)
    if scores is None:
        return None
    scores = [float(x) for x in np.asarray(scores, dtype=np.float64).ravel()]
    if len(scores) != len(prompts):
        raise ValueError(
            f"relevance estimator {name!r} gave {len(scores)} scores for {len(prompts)} prompts"
        )
    return scores
