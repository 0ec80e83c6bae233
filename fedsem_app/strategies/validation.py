"""Checks on client replies before a strategy uses them.

Runs on the server.

Every function here is pure: it takes a reply's content and returns what can be
used plus human-readable reasons for what cannot. Strategies log the reasons
with the node id and count the drops in the round metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsem_app import protocol as p
from fedsem_app.wire import WireError, unpack_texts


@dataclass
class ValidAnswers:
    """A client's answers aligned to the round's prompt ids.

    Attributes
    ----------
    texts
        One text per expected prompt ("" where unusable).
    confidences
        One mean token log-prob per prompt (0.0 where unusable).
    valid
        Boolean mask: which prompts this client may vote on.
    finished
        Boolean mask: which answers ended with EOS (all True if the client sent no
        flags).
    problems
        Reasons for each prompt-level exclusion (for the log).
    relevance
        One relevance score per prompt, NaN where the client sent none or a
        non-finite one (all NaN if it sent no scores).
    """

    texts: list[str]
    confidences: np.ndarray
    valid: np.ndarray
    finished: np.ndarray | None = None
    problems: list[str] = field(default_factory=list)
    relevance: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.finished is None:
            self.finished = np.ones(len(self.texts), dtype=bool)
        if self.relevance is None:
            self.relevance = np.full(len(self.texts), np.nan)


def reply_error(message: Message) -> str | None:
    """Why a reply is unusable as a whole (Flower error, no content), else None."""
    if message.has_error():
        err = message.error
        return f"client error (code {err.code}): {err.reason}"
    if not message.has_content():
        return "reply has no content"
    return None


def check_metrics(content: RecordDict, required: Iterable[str]) -> str | None:
    """Return a reason if the METRICS record is missing keys or holds non-finite values."""
    metrics = content.get(p.METRICS)
    if not isinstance(metrics, MetricRecord):
        return f"reply has no MetricRecord '{p.METRICS}'"
    missing = [k for k in required if k not in metrics]
    if missing:
        return f"metrics miss {', '.join(missing)}"
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if not all(math.isfinite(v) for v in values):
            return f"metric '{key}' is not finite"
    if p.NUM_EXAMPLES in metrics and metrics[p.NUM_EXAMPLES] <= 0:
        return f"'{p.NUM_EXAMPLES}' must be positive"
    return None


def set_aside_unshared(replies: Sequence[Message]) -> dict[int, dict[str, Any]]:
    """Take the metrics that not every reply carries out of the replies, by node id.

    Flower averages a round only over MetricRecords with the same keys: one metric
    that some nodes cannot measure (``gpu-joules`` on a node without NVML, next to a
    GPU node) would stop the round's aggregation. Those values leave the records
    that are averaged and stay with their node (its row in ``clients.jsonl``).

    Returns
    -------
    dict
        ``{node id: {metric: value}}`` for the nodes that had such metrics.
    """
    records = [m.content[p.METRICS] for m in replies]
    shared = set.intersection(*(set(r) for r in records)) if records else set()
    aside: dict[int, dict[str, Any]] = {}
    for msg, record in zip(replies, records, strict=True):
        extra = {k: record[k] for k in record if k not in shared}
        for key in extra:
            del record[key]
        if extra:
            aside[msg.metadata.src_node_id] = extra
    return aside


def check_answers(
    content: RecordDict, expected_ids: Sequence[int], max_chars: int
) -> tuple[ValidAnswers | None, str | None]:
    """Validate a FedSem answers record against the prompt ids that were sent.

    A structurally wrong record (missing, wrong types, ids not matching, a
    different number of texts than prompts, relevance scores that are not one
    number per text) rejects the whole reply. Single answers that are empty,
    longer than ``max_chars`` or carry a non-finite confidence are masked out of
    that prompt's consensus only. A non-finite relevance score is no score (NaN);
    the answer still votes. Relevance is optional: without it every score is NaN.

    Returns
    -------
    tuple
        ``(answers, None)`` when usable, ``(None, reason)`` when the reply is rejected.
    """
    record = content.get(p.ANSWERS)
    if not isinstance(record, ConfigRecord):
        return None, f"reply has no ConfigRecord '{p.ANSWERS}'"
    ids, confs = record.get(p.IDS), record.get(p.CONFIDENCES)
    try:
        # Bounded: UTF-8 takes at most 4 bytes a character, JSON escapes at most 6.
        texts = unpack_texts(record, p.TEXTS, (6 * max_chars + 8) * max(len(expected_ids), 1))
    except WireError as err:
        return None, str(err)
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return None, f"'{p.TEXTS}' must be a list of strings"
    if len(texts) != len(expected_ids):
        return None, f"returned {len(texts)} texts for {len(expected_ids)} prompts"
    if not isinstance(ids, list) or list(ids) != list(expected_ids):
        return None, "prompt ids do not match the ids that were sent"
    if (
        not isinstance(confs, list)
        or len(confs) != len(texts)
        or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in confs)
    ):
        return None, f"'{p.CONFIDENCES}' must be one number per text"
    flags = record.get(p.FINISHED, [True] * len(texts))
    if (
        not isinstance(flags, list)
        or len(flags) != len(texts)
        or not all(isinstance(f, bool) for f in flags)
    ):
        return None, f"'{p.FINISHED}' must be one true/false per text"
    scores = record.get(p.RELEVANCE)
    if scores is not None and (
        not isinstance(scores, list)
        or len(scores) != len(texts)
        or not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in scores)
    ):
        return None, f"'{p.RELEVANCE}' must be one number per text"
    relevance = np.array(
        [r if math.isfinite(r) else np.nan for r in scores or [np.nan] * len(texts)],
        dtype=np.float64,
    )

    valid = np.ones(len(texts), dtype=bool)
    problems = []
    clean = list(texts)
    for i, (text, conf) in enumerate(zip(texts, confs, strict=True)):
        reason = None
        if not text.strip():
            reason = "empty answer"
        elif len(text) > max_chars:
            reason = f"answer of {len(text)} chars exceeds {max_chars}"
        elif not math.isfinite(conf):
            reason = "non-finite confidence"
        if reason:
            valid[i] = False
            clean[i] = ""
            problems.append(f"prompt {expected_ids[i]}: {reason}")
    conf_arr = np.array([c if math.isfinite(c) else 0.0 for c in confs], dtype=np.float32)
    conf_arr[~valid] = 0.0
    relevance[~valid] = np.nan
    flags = np.array(flags, dtype=bool)
    return ValidAnswers(clean, conf_arr, valid, flags, problems, relevance), None


# Layout of an adapter: tensor name -> (shape, dtype), as Flower's Array describes them.
Layout = dict[str, tuple[tuple[int, ...], str]]


def adapter_layout(arrays: Mapping[str, Array]) -> Layout:
    """Shape and dtype of every tensor of an adapter record."""
    return {key: (tuple(array.shape), array.dtype) for key, array in arrays.items()}


def adapter_problem(content, expected: Layout) -> str | None:
    """Why a reply's adapter cannot be averaged into the global one, or None if it can.

    Parameters
    ----------
    content
        The reply's RecordDict.
    expected
        Layout of the global adapter that was sent (see :func:`adapter_layout`).

    Returns
    -------
    str or None
        The first problem found: a missing or extra record, keys, shapes or dtypes
        that differ from the global adapter, or non-finite values.
    """
    record = content.get(p.ADAPTER)
    if not isinstance(record, ArrayRecord):
        return f"reply has no ArrayRecord '{p.ADAPTER}'"
    if len(content.array_records) != 1:
        # FedAvg averages every ArrayRecord of a reply: a second one would be mixed in.
        return f"reply holds {len(content.array_records)} ArrayRecords, expected only '{p.ADAPTER}'"
    missing = [key for key in expected if key not in record]
    if missing:
        return f"adapter misses {len(missing)} tensor(s), first: {missing[0]!r}"
    extra = [key for key in record if key not in expected]
    if extra:
        return f"adapter has {len(extra)} unexpected tensor(s), first: {extra[0]!r}"
    for key, array in record.items():
        shape, dtype = expected[key]
        if tuple(array.shape) != shape:
            return f"tensor {key!r} has shape {tuple(array.shape)}, expected {shape}"
        if array.dtype != dtype:
            return f"tensor {key!r} has dtype {array.dtype}, expected {dtype}"
        if not np.isfinite(array.numpy()).all():
            return f"tensor {key!r} holds non-finite values"
    return None
