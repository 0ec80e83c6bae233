"""Held-out evaluation of one client: ROUGE-L, embedding similarity, reference NLL, facts.

Runs on the client.
"""

from __future__ import annotations

import functools
import math
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

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


def normalise(text: str) -> str:
    """Lowercase, punctuation to spaces, runs of whitespace to one space, trimmed.

    ``"Zorvik's home town is Belmora."`` -> ``"zorvik s home town is belmora"``.
    """
    spaced = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(spaced.lower().split())


def contains_value(answer: str, value: str) -> bool:
    """Whether the normalised answer contains the normalised value as whole words.

    Whole words: ``"1850"`` is not found in ``"18505"``; an empty value is never found.
    """
    needle = normalise(value)
    return bool(needle) and f" {needle} " in f" {normalise(answer)} "


@dataclass(frozen=True)
class FactTargets:
    """What the test prompts' answers are checked against for ``fact-accuracy``.

    Attributes
    ----------
    values
        The short right value of each test prompt ("" where it has none: not scored).
    subsets
        Named boolean masks over the test prompts (``covered``, ``uncovered``,
        ``own``, ``other``): each gets a ``fact-accuracy-<name>``.
    """

    values: tuple[str, ...]
    subsets: tuple[tuple[str, tuple[bool, ...]], ...] = ()


def fact_accuracy(answers: Sequence[str], targets: FactTargets) -> dict[str, float | list[float]]:
    """Share of answers that contain their value, overall and on each non-empty subset.

    Prompts without a value are left out of every share. The per-prompt list
    (``fact-accuracy-per-prompt``, 1.0 / 0.0, only over the scored prompts)
    feeds the interval over prompts.

    Returns
    -------
    dict
        ``fact-accuracy``, its per-prompt list and ``fact-accuracy-<subset>`` for
        each subset holding at least one scored prompt; empty if none is scored.
    """
    scored = [bool(v) for v in targets.values]
    hits = [
        float(contains_value(a, v)) if s else 0.0
        for a, v, s in zip(answers, targets.values, scored, strict=True)
    ]
    if not any(scored):
        return {}
    out: dict[str, float | list[float]] = {
        p.FACT_ACCURACY: _share(hits, scored),
        p.PER_PROMPT[p.FACT_ACCURACY]: [h for h, s in zip(hits, scored, strict=True) if s],
    }
    for name, mask in targets.subsets:
        keep = [s and m for s, m in zip(scored, mask, strict=True)]
        if any(keep):
            out[f"{p.FACT_ACCURACY}-{name}"] = _share(hits, keep)
    return out


def _share(hits: Sequence[float], keep: Sequence[bool]) -> float:
    kept = [h for h, k in zip(hits, keep, strict=True) if k]
    return sum(kept) / len(kept)


def evaluate_client(
    client,
    prompts: Sequence[str],
    references: Sequence[str],
    gen_cfg,
    embedder: str,
    device: str = "cpu",
    generate: bool = True,
    facts: FactTargets | None = None,
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
    facts
        Short values to find in the generated answers (``fact-accuracy``); None
        where the test data has none.

    Returns
    -------
    dict
        ``num-examples``, ``nll`` (mean per-token NLL of the references),
        ``perplexity``, ``eval-seconds`` and the per-prompt NLL lists
        (``nll-sum-per-prompt``, ``nll-tokens-per-prompt``); with ``generate``
        also ``rouge-l``, ``embed-sim`` (mean cosine to the reference), their
        per-prompt lists and ``eval-truncated-share`` (answers that hit the cap),
        and with ``facts`` the shares of :func:`fact_accuracy`.
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
        if facts is not None:
            metrics.update(fact_accuracy(generated.texts, facts))
    metrics[p.EVAL_SECONDS] = time.perf_counter() - t0
    return metrics
