"""Per-round diagnostics of a consensus: did the label come from a client that knows.

Runs on the server, with ``fedsem.diagnostics`` on (benchmarks). The clients then
report how many private examples they hold per category (in their reply's INFO),
and the server scores the candidates against the dataset's reference answers of
the public prompts (the split keeps only the prompts; the dataset has the answers,
as :mod:`bench.label_quality` reads them). Nothing here feeds training.

``expert-share``          share of the labelled prompts (with an expert among the
                          voters) whose label an expert's answer won; the experts of
                          a prompt are the clients holding the most private examples
                          of its category
``expert-prompts``        how many labelled prompts that share is over
``relevance-expert-hit``  share of the prompts with an expert and relevance scores
                          on which an expert sent the highest score
``label-rouge-chosen``    mean ROUGE-L of the labels against the references, next to
``label-rouge-best``      the best candidate of each labelled prompt (an oracle) and
``label-rouge-random``    the mean candidate (what a random pick gets on average)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def winners(texts: list[list[str]], index: np.ndarray) -> list[set[int]]:
    """Per prompt, every client whose answer is word for word the chosen text (empty: no label)."""
    return [
        {k for k, text in enumerate(row) if text == row[index[i]]} if index[i] >= 0 else set()
        for i, row in enumerate(texts)
    ]


def most_relevant(relevance: np.ndarray, mask: np.ndarray) -> list[set[int]]:
    """Per prompt, the valid answers with the highest finite relevance (all of a tie)."""
    scored = np.where(mask & np.isfinite(relevance), relevance, -np.inf)
    top = scored.max(axis=1, initial=-np.inf)
    return [
        set(np.flatnonzero(row == best).tolist()) if np.isfinite(best) else set()
        for row, best in zip(scored, top, strict=True)
    ]


def category_experts(
    categories: Sequence[str], holdings: Sequence[Mapping[str, int]]
) -> list[set[int]]:
    """Per prompt, the clients that hold the most private examples of its category.

    Parameters
    ----------
    categories
        The category of each prompt ("" where unknown).
    holdings
        Per client (column), its private example count per category.

    Returns
    -------
    list[set[int]]
        Client indices per prompt; empty where no client holds the category.
    """
    experts = []
    for category in categories:
        counts = np.array([h.get(category, 0) for h in holdings]) if category else np.zeros(0)
        best = counts.max(initial=0)
        experts.append(set(np.flatnonzero(counts == best).tolist()) if best > 0 else set())
    return experts


def expert_metrics(
    experts: list[set[int]],
    won: list[set[int]],
    top: list[set[int]],
    mask: np.ndarray,
) -> dict[str, float]:
    """``expert-share``, ``expert-prompts`` and ``relevance-expert-hit`` (see the module).

    Only prompts on which an expert gave a valid answer count; a metric without any
    such prompt is left out.
    """
    present = [{k for k in e if mask[i, k]} for i, e in enumerate(experts)]
    labelled = [i for i, w in enumerate(won) if w and present[i]]
    out: dict[str, float] = {"expert-prompts": len(labelled)}
    if labelled:
        out["expert-share"] = float(np.mean([bool(won[i] & present[i]) for i in labelled]))
    scored = [i for i, t in enumerate(top) if t and present[i]]
    if scored:
        out["relevance-expert-hit"] = float(np.mean([bool(top[i] & present[i]) for i in scored]))
    return out


def label_rouge(
    texts: list[list[str]], mask: np.ndarray, index: np.ndarray, references: Sequence[str]
) -> dict[str, float]:
    """Mean ROUGE-L of the chosen, the best and the mean candidate over labelled prompts.

    Parameters
    ----------
    texts, mask, index
        The round's P x K answers, their validity and the chosen index (-1: no label).
    references
        The reference answer of each prompt ("" where unknown: the prompt is skipped).

    Returns
    -------
    dict
        ``label-rouge-chosen``, ``label-rouge-best``, ``label-rouge-random``; empty
        without a labelled prompt that has a reference.
    """
    from fedsem_app.clients.evaluation import rouge_l

    prompts = [i for i in range(len(texts)) if index[i] >= 0 and references[i]]
    pairs = [(i, k) for i in prompts for k in range(len(texts[i])) if mask[i, k]]
    if not pairs:
        return {}
    scores = rouge_l([texts[i][k] for i, k in pairs], [references[i] for i, _ in pairs])
    by_prompt: dict[int, dict[int, float]] = {}
    for (i, k), score in zip(pairs, scores, strict=True):
        by_prompt.setdefault(i, {})[k] = score
    return {
        "label-rouge-chosen": float(np.mean([by_prompt[i][index[i]] for i in prompts])),
        "label-rouge-best": float(np.mean([max(by_prompt[i].values()) for i in prompts])),
        "label-rouge-random": float(
            np.mean([np.mean(list(by_prompt[i].values())) for i in prompts])
        ),
    }
