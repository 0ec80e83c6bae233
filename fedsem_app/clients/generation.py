"""What generation returns: answers with their confidence and whether they finished.

Runs on the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import (
    LogitsProcessor,
)


def answer_length(token_ids: Sequence[int], eos_ids: Sequence[int]) -> int:
    """Count generated tokens up to and including the first EOS (all if none)."""
    for position, token in enumerate(token_ids):
        if token in eos_ids:
            return position + 1
    return len(token_ids)


def answer_confidence(
    token_ids: Sequence[int], logprobs: Sequence[float], eos_ids: Sequence[int]
) -> float:
    """Mean log-probability of the generated tokens up to and including the first EOS.

    An empty answer (EOS first) scores the log-probability of that EOS, so the result
    is always a finite number ``<= 0``.
    """
    n = max(answer_length(token_ids, eos_ids), 1)
    return float(np.mean(np.asarray(logprobs[:n], dtype=np.float64)))


@dataclass(frozen=True)
class Answers:
    """Generated answers, in prompt order.

    Attributes
    ----------
    texts
        Stripped answer texts (new tokens only, special tokens removed).
    confidences
        Mean log-probability of each answer's tokens up to and including EOS.
    finished
        Whether the model ended the answer itself (generated EOS) rather than
        hitting ``max_new_tokens``.
    """

    texts: list[str]
    confidences: list[float]
    finished: list[bool]


class GreedyLogProbRecorder(LogitsProcessor):
    """Record, at each generation step, the log-probability of the greedy (argmax) token.

    Kept as one number per sequence and step: asking ``generate`` for its logits would
    hold a vocabulary-sized tensor per step (over 0.5 GB for Gemma-3 at 16 x 32 tokens).
    It must run last and only under greedy decoding, where the chosen token is the
    argmax of the scores it sees.
    """

    def __init__(self) -> None:
        self._steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        """Store the top log-probability of each row; leave ``scores`` unchanged."""
        self._steps.append(torch.log_softmax(scores.float(), dim=-1).max(dim=-1).values)
        return scores

    def logprobs(self) -> np.ndarray:
        """Return the recorded log-probabilities, shape (sequences, steps)."""
        return torch.stack(self._steps, dim=1).cpu().numpy()
