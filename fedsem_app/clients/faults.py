"""Clients that misbehave on purpose: fault injection for robustness tests and benchmarks.

Runs on the client.

A faulty client (``fault.mode`` with its partition id in ``fault.clients``) trains
and evaluates as usual but corrupts its train replies, so the server sees exactly
what a broken or malicious node would send over the wire. The ClientApp's
:func:`~fedsem_app.clients.mods.fault_mod` does it around the train handler, which
knows nothing of faults:

``raise``           raises instead of running the handler (Flower turns it into an
                    error reply)
``stall``           sleeps ``fault.stall-seconds`` before the handler (a node
                    slower than ``round-timeout``)
``malformed``       one text too few and non-finite confidences
``garbage``         random letters instead of answers
``adversarial``     the same fixed text (``fault.text``) for every prompt; several
                    adversarial clients collude by sending identical text
``scaled-adapter``  the returned LoRA adapter multiplied by ``fault.scale``
``random-adapter``  Gaussian noise of the adapter's shapes, std ``fault.scale`` x the
                    honest adapter's
``append``          stealthy: the node's honest answer with ``fault.text`` appended
``prepend``         stealthy: ``fault.text`` before the honest answer
``insert``          stealthy: ``fault.text`` after the honest answer's first sentence
``backdoor``        for the parameter strategies: the node trains on its private pairs
                    with ``fault.text`` appended to every answer and sends that adapter
                    (its answers to public prompts, if any, are its poisoned model's)

Every mode is registered in :data:`FAULT_MODES`, the one list ``fault.mode`` and a
federation spec's ``fault`` accept; each corrupting function is pure (a seeded
generator in, new values out). This module stays free of Flower, since config
validation imports the registry.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsem_app.config.sections import FaultConfig
from fedsem_app.registry import Registry

# What a mode corrupts: the train handler's run, the answers it returns, its adapter,
# or the private data it trains on.
HANDLER, ANSWERS, ADAPTER, DATA = "handler", "answers", "adapter", "data"


@dataclass(frozen=True)
class FaultMode:
    """One fault mode: what it corrupts and, for replies, how.

    Attributes
    ----------
    target
        ``""`` (honest), :data:`HANDLER` (``fault_mod`` raises or stalls instead of
        or before the train handler), :data:`ANSWERS` or :data:`ADAPTER`.
    corrupt
        For :data:`ANSWERS`: ``fn(fault, texts, confidences, rng) -> (texts,
        confidences)``; for :data:`ADAPTER`: ``fn(fault, state, rng) -> state``.
    """

    target: str = ""
    corrupt: Callable[..., Any] | None = None


FAULT_MODES: Registry[FaultMode] = Registry("fault mode", key="fault.mode")
FAULT_MODES.register("none", FaultMode())
FAULT_MODES.register("raise", FaultMode(HANDLER))
FAULT_MODES.register("stall", FaultMode(HANDLER))


def fault_mode(target: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn`` as the fault mode ``name`` that corrupts ``target``."""

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        FAULT_MODES.register(name, FaultMode(target, fn))
        return fn

    return decorator


def garbage_text(rng: np.random.Generator, length: int = 120) -> str:
    """Random lowercase words: text with no meaning but a plausible length."""
    letters = np.array(list(string.ascii_lowercase + " "))
    return "".join(rng.choice(letters, size=length)).strip() or "x"


@fault_mode(ANSWERS, "malformed")
def _malformed(fault: FaultConfig, texts: list[str], confidences: list[float], rng):
    return texts[:-1], [float("nan")] * len(confidences)


@fault_mode(ANSWERS, "garbage")
def _garbage(fault: FaultConfig, texts: list[str], confidences: list[float], rng):
    return [garbage_text(rng) for _ in texts], confidences


@fault_mode(ANSWERS, "adversarial")
def _adversarial(fault: FaultConfig, texts: list[str], confidences: list[float], rng):
    # Confident, so the ``confidence`` consensus rule is tempted too.
    return [fault.text] * len(texts), [0.0] * len(confidences)


def join_text(*parts: str) -> str:
    """Non-empty parts joined by one space (an empty honest answer adds no space)."""
    return " ".join(part.strip() for part in parts if part.strip())


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def insert_after_first_sentence(answer: str, payload: str) -> str:
    """``payload`` after the first sentence of ``answer`` (at its end if it has one sentence)."""
    head, *rest = _SENTENCE_END.split(answer.strip(), maxsplit=1)
    return join_text(head, payload, *rest)


# The stealthy attacker answers honestly, with its own confidences, and adds one
# sentence: its answer stays close to the honest ones in embedding space.
@fault_mode(ANSWERS, "append")
def _append(fault: FaultConfig, texts: list[str], confidences: list[float], rng):
    return [join_text(t, fault.text) for t in texts], confidences


@fault_mode(ANSWERS, "prepend")
def _prepend(fault: FaultConfig, texts: list[str], confidences: list[float], rng):
    return [join_text(fault.text, t) for t in texts], confidences


@fault_mode(ANSWERS, "insert")
def _insert(fault: FaultConfig, texts: list[str], confidences: list[float], rng):
    return [insert_after_first_sentence(t, fault.text) for t in texts], confidences


@fault_mode(DATA, "backdoor")
def _backdoor(fault: FaultConfig, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(q, join_text(a, fault.text)) for q, a in pairs]


@fault_mode(ADAPTER, "scaled-adapter")
def _scaled(fault: FaultConfig, state: dict[str, np.ndarray], rng):
    return {k: (v * fault.scale).astype(v.dtype) for k, v in state.items()}


@fault_mode(ADAPTER, "random-adapter")
def _random(fault: FaultConfig, state: dict[str, np.ndarray], rng):
    return {
        k: rng.normal(0.0, abs(fault.scale) * (float(v.std()) or 1.0), v.shape).astype(v.dtype)
        for k, v in state.items()
    }


def targets(mode: str, target: str) -> bool:
    """Whether fault mode ``mode`` corrupts ``target``."""
    return FAULT_MODES[mode].target == target


def corrupt_answers(
    fault: FaultConfig, texts: list[str], confidences: list[float], rng: np.random.Generator
) -> tuple[list[str], list[float]]:
    """A faulty client's answers in place of its honest ones (answer modes only)."""
    mode = FAULT_MODES[fault.mode]
    if mode.target != ANSWERS:
        return texts, confidences
    return mode.corrupt(fault, texts, confidences, rng)


def corrupt_adapter(
    fault: FaultConfig, state: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """A faulty client's adapter in place of its honest one (adapter modes only)."""
    mode = FAULT_MODES[fault.mode]
    return mode.corrupt(fault, state, rng) if mode.target == ADAPTER else state


def corrupt_private(
    fault: FaultConfig, partition_id: int, pairs: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """A faulty node's training pairs in place of its honest ones (data modes only)."""
    mode = FAULT_MODES[fault.mode]
    if mode.target != DATA or not fault.applies_to(partition_id):
        return pairs
    return mode.corrupt(fault, pairs)
