"""Clients that misbehave on purpose: fault injection for robustness tests and benchmarks.

Runs on the client.

A faulty client (``fault.mode`` with its partition id in ``fault.clients``) trains
and evaluates as usual but corrupts its train replies, so the server sees exactly
what a broken or malicious node would send over the wire:

``raise``           the train handler raises (Flower turns it into an error reply)
``stall``           the train handler sleeps ``fault.stall-seconds`` first (a node
                    slower than ``round-timeout``)
``malformed``       one text too few and non-finite confidences
``garbage``         random letters instead of answers
``adversarial``     the same fixed text (``fault.text``) for every prompt; several
                    adversarial clients collude by sending identical text
``scaled-adapter``  the returned LoRA adapter multiplied by ``fault.scale``
``random-adapter``  Gaussian noise of the adapter's shapes, std ``fault.scale`` x the
                    honest adapter's

Each function here is pure (a seeded generator in, new values out).
"""

from __future__ import annotations

import string

import numpy as np

from fedsem_app.config.sections import FaultConfig

TEXT_MODES = ("malformed", "garbage", "adversarial")
ADAPTER_MODES = ("scaled-adapter", "random-adapter")


def garbage_text(rng: np.random.Generator, length: int = 120) -> str:
    """Random lowercase words: text with no meaning but a plausible length."""
    letters = np.array(list(string.ascii_lowercase + " "))
    return "".join(rng.choice(letters, size=length)).strip() or "x"


def corrupt_answers(
    fault: FaultConfig, texts: list[str], confidences: list[float], rng: np.random.Generator
) -> tuple[list[str], list[float]]:
    """A faulty client's answers in place of its honest ones (text modes only)."""
    if fault.mode == "malformed":
        return texts[:-1], [float("nan")] * len(confidences)
    if fault.mode == "garbage":
        return [garbage_text(rng) for _ in texts], confidences
    if fault.mode == "adversarial":
        # Confident, so the ``confidence`` consensus rule is tempted too.
        return [fault.text] * len(texts), [0.0] * len(confidences)
    return texts, confidences


def corrupt_adapter(
    fault: FaultConfig, state: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """A faulty client's adapter in place of its honest one (adapter modes only)."""
    if fault.mode == "scaled-adapter":
        return {k: (v * fault.scale).astype(v.dtype) for k, v in state.items()}
    if fault.mode == "random-adapter":
        return {
            k: rng.normal(0.0, abs(fault.scale) * (float(v.std()) or 1.0), v.shape).astype(v.dtype)
            for k, v in state.items()
        }
    return state
