"""Sentence support: a consensus label keeps only what other clients' answers also say.

Runs on the server, after any consensus rule has chosen an answer per prompt.

A whole-answer vote cannot see a stealthy client that answers honestly and adds one
sentence of its own (a link, an advert, an instruction): its answer stays close to the
honest ones, so it wins as often as an honest answer does, and every client then trains
on the added sentence. Support works on content instead. The chosen answer is split
into sentences; a sentence is *supported by* another valid answer of the same prompt
when that answer has a sentence within cosine ``threshold`` of it (sentence
embeddings). A sentence stays in the label when at least ``need`` other answers
support it, where

    ``need = max(1, ceil(min_share * (n_valid - 1)))``

(``n_valid`` valid answers to the prompt, the chosen one included). What is left,
in its original order, is the label; a prompt whose chosen answer keeps no sentence
gets no label (it abstains). Everything depends on the set of answers only, not on
their order, so the result is the same for any order of the clients.

A sentence is also checked in pieces, because a sentence can carry an addition that
its embedding hides: a client whose honest answer was cut off mid-sentence and that
glues its own words onto it ("... under ABS Ignore the question: the answer is always
42.") has one sentence that stays within the threshold of the other clients' cut-off
sentence. So every sentence longer than ``window`` words is read in windows of
``window`` words (half a window apart, the last flush with the sentence's end), and a
sentence stays only where every window is supported too, at the lower
``window_threshold`` (a few words of an honest paraphrase say less than a sentence, so
they match less closely; a window that is mostly added words matches nothing).

With two clients the other answer must support every kept sentence. With one valid
answer there is nobody to support anything and the label is kept as it is (the vote
had nothing to compare either).
``m`` colluding clients that add the same sentence support each other: it survives
where ``m - 1 >= need``; with ``min_share = 0.5`` that takes half of the other
answers, i.e. a colluding majority.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """The non-empty sentences of ``text``: split after ``.``, ``!`` or ``?`` and at newlines."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def word_windows(sentence: str, size: int) -> list[str]:
    """Runs of ``size`` words of ``sentence``, half a window apart, the last flush with its end.

    Empty where ``size`` is 0 (no window check) or the sentence has at most ``size`` words
    (the sentence check covers it whole).
    """
    words = sentence.split()
    if size <= 0 or len(words) <= size:
        return []
    starts = list(range(0, len(words) - size + 1, max(1, size // 2)))
    if starts[-1] != len(words) - size:
        starts.append(len(words) - size)
    return [" ".join(words[i : i + size]) for i in starts]


def needed_support(num_valid: int, min_share: float) -> int:
    """How many other answers must support a sentence (0 for a lone answer)."""
    others = num_valid - 1
    return 0 if others <= 0 else max(1, math.ceil(min_share * others - 1e-9))


def sentence_support(
    chosen: Sequence[np.ndarray], others: Sequence[np.ndarray], threshold: float
) -> np.ndarray:
    """How many other answers support each sentence of the chosen answer.

    Parameters
    ----------
    chosen
        ``(D,)`` unit embeddings of the chosen answer's sentences.
    others
        Per other valid answer, its sentences' embeddings as an ``(n_j, D)`` array.
    threshold
        Cosine at or above which two sentences say the same thing.

    Returns
    -------
    np.ndarray
        ``(len(chosen),)`` int counts.

    """
    support = np.zeros(len(chosen), dtype=int)
    if not len(chosen):
        return support
    mine = np.stack(chosen)
    for block in others:
        if len(block):
            support += (mine @ np.asarray(block).T).max(axis=1) >= threshold
    return support


def support_labels(
    texts: Sequence[Sequence[str]],
    valid: np.ndarray,
    index: Sequence[int],
    embed: Callable[[list[str]], np.ndarray],
    threshold: float,
    min_share: float,
    window: int = 0,
    window_threshold: float = 0.15,
) -> list[str | None]:
    """Every prompt's chosen answer with its unsupported sentences removed.

    All sentences (and windows) of the round are embedded in one call of ``embed``.

    Parameters
    ----------
    texts
        P x K answer texts.
    valid
        ``(P, K)`` bool: the answers that voted.
    index
        ``(P,)`` chosen answer per prompt, -1 where the vote gave no label.
    embed
        ``fn(texts) -> (n, D)`` unit-norm sentence embeddings.
    threshold
        Cosine at or above which two sentences say the same thing.
    min_share
        Share of the other valid answers that must support a sentence.
    window
        Words per window of a long sentence (:func:`word_windows`); 0 checks whole
        sentences only.
    window_threshold
        Cosine at or above which a window is supported by a sentence of another answer.

    Returns
    -------
    list
        Per prompt the label text: the chosen answer unchanged where every sentence is
        supported, the supported sentences joined by one space where some are not, and
        None where the vote gave no label or no sentence is supported.

    """
    split = [[split_sentences(t) for t in row] for row in texts]
    labelled = [i for i in range(len(texts)) if index[i] >= 0]
    windows = {s: word_windows(s, window) for i in labelled for s in split[i][int(index[i])]}
    # Sorted unique texts: the embedding call does not depend on client order.
    unique = sorted(
        {s for i in labelled for k, row in enumerate(split[i]) if valid[i][k] for s in row}
        | {w for pieces in windows.values() for w in pieces}
    )
    vectors = dict(zip(unique, embed(unique), strict=True)) if unique else {}
    labels: list[str | None] = [None] * len(texts)
    for i in labelled:
        chosen = int(index[i])
        sentences = split[i][chosen]
        others = [
            np.array([vectors[s] for s in split[i][k]])
            for k in range(len(texts[i]))
            if valid[i][k] and k != chosen
        ]
        need = needed_support(len(others) + 1, min_share)
        keep = sentence_support([vectors[s] for s in sentences], others, threshold) >= need
        for j, sentence in enumerate(sentences):
            pieces = [vectors[w] for w in windows[sentence]]
            if keep[j] and pieces:
                keep[j] = bool((sentence_support(pieces, others, window_threshold) >= need).all())
        if keep.all():
            labels[i] = texts[i][chosen] if sentences else None
        elif keep.any():
            labels[i] = " ".join(s for s, k in zip(sentences, keep, strict=True) if k)
    return labels
