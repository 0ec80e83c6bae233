"""Held-out evaluation of one client: ROUGE-L, embedding similarity, reference NLL.

Runs on the client.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence

from fedsem_app import protocol as p
from fedsem_app.embedding import cosine_to_reference


@functools.lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer, tokenizers

    # The tokenizer RougeScorer would pick itself, given: without one it logs "Using
    # default tokenizer." through absl, whose first message configures Python's root
    # logger, and every Flower log line of the process then prints twice.
    return rouge_scorer.RougeScorer(
        ["rougeL"], tokenizer=tokenizers.DefaultTokenizer(use_stemmer=True)
    )


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
    generate: bool = True,
) -> dict[str, float | list[float]]:
    """Score the client on the test prompts: generated answers and reference NLL.

    Parameters
    ----------
    client
        A :class:`~fedsem_app.clients.causal_lm.CausalLMClient`.
    prompts, references
        Test prompts and their reference answers.
    gen_cfg
        Generation settings for the answers.
    embedder
        Sentence encoder for ``embed-sim``.
    device
        Where the encoder runs.
    generate
        False skips generation: only the NLL of the references is measured.

    Returns
    -------
    dict
        ``num-examples``, ``nll`` (mean per-token NLL of the references),
        ``perplexity``, ``eval-seconds`` and the per-prompt NLL lists
        (``nll-sum-per-prompt``, ``nll-tokens-per-prompt``); with ``generate``
        also ``rouge-l``, ``embed-sim`` (mean cosine to the reference), their
        per-prompt lists and ``eval-truncated-share`` (answers that hit the cap).
    """
    t0 = time.perf_counter()
    sums, counts = client.nll_terms(list(zip(prompts, references, strict=True)))
    nll = float(sums.sum() / counts.sum()) if counts.sum() else math.nan
    metrics: dict[str, float | list[float]] = {
        p.NUM_EXAMPLES: len(prompts),
        p.NLL: nll,
        p.PERPLEXITY: float(math.exp(min(nll, 50.0))),
        p.NLL_SUMS: sums.tolist(),
        p.NLL_TOKENS: counts.tolist(),
    }
    if generate:
        generated = client.answer(list(prompts), gen_cfg)
        rouge = rouge_l(generated.texts, references)
        sims = cosine_to_reference(generated.texts, references, embedder, device)
        metrics.update(
            {
                p.ROUGE_L: float(sum(rouge) / len(rouge)),
                p.EMBED_SIM: float(sims.mean()),
                "eval-truncated-share": 1.0 - sum(generated.finished) / len(generated.finished),
                p.PER_PROMPT[p.ROUGE_L]: [float(x) for x in rouge],
                p.PER_PROMPT[p.EMBED_SIM]: [float(x) for x in sims],
            }
        )
    metrics[p.EVAL_SECONDS] = time.perf_counter() - t0
    return metrics
