"""Held-out evaluation of one client: ROUGE-L, embedding similarity, reference NLL."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence

from fedsem_app import protocol as p
from fedsem_app.embedding import cosine_to_reference


@functools.lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of each prediction against its reference (rouge-score)."""
    scorer = _scorer()
    return [
        scorer.score(ref, pred)["rougeL"].fmeasure
        for pred, ref in zip(predictions, references, strict=True)
    ]


def evaluate_client(
    client,
    prompts: Sequence[str],
    references: Sequence[str],
    gen_cfg,
    embedder: str,
    device: str = "cpu",
) -> dict[str, float]:
    """Generate answers to the test prompts and score them against the references.

    Returns
    -------
    dict
        ``num-examples``, ``rouge-l``, ``embed-sim`` (mean cosine to the reference),
        ``nll`` (mean per-token NLL of the references), ``perplexity`` and
        ``eval-seconds``.
    """
    t0 = time.perf_counter()
    answers, _ = client.generate(list(prompts), gen_cfg)
    rouge = rouge_l(answers, references)
    sims = cosine_to_reference(answers, references, embedder, device)
    nll = client.nll(list(zip(prompts, references, strict=True)))
    return {
        p.NUM_EXAMPLES: len(prompts),
        p.ROUGE_L: float(sum(rouge) / len(rouge)),
        p.EMBED_SIM: float(sims.mean()),
        p.NLL: float(nll),
        p.PERPLEXITY: float(math.exp(min(nll, 50.0))),
        p.EVAL_SECONDS: time.perf_counter() - t0,
    }
