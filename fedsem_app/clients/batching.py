"""Training examples and batches: tokenized prompt/answer pairs, padding, batch draws.

Runs on the client.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import (
    PreTrainedTokenizerBase,
)

IGNORE_INDEX = -100  # label value that the loss skips (prompt and padding positions)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a templated prompt, with the tokenizer's BOS exactly once.

    Chat templates often write the BOS token into the text themselves; adding special
    tokens again would give the model a doubled BOS it never saw in pre-training.
    """
    has_bos = bool(tokenizer.bos_token) and text.startswith(tokenizer.bos_token)
    return list(tokenizer(text, add_special_tokens=not has_bos)["input_ids"])


def build_example(
    tokenizer: PreTrainedTokenizerBase,
    prompt_text: str,
    answer: str,
    max_len: int,
    *,
    add_eos: bool = True,
) -> dict[str, list[int]]:
    """Tokenize one training pair with the loss on the answer tokens only.

    Parameters
    ----------
    tokenizer
        The model's tokenizer (needs an EOS token).
    prompt_text
        The templated prompt (see :func:`~fedsem_app.clients.templates.format_prompt`).
    answer
        The reference answer; EOS is appended so the model learns to stop.
    max_len
        Maximum sequence length. Too-long pairs keep the end of the prompt (the part
        next to the answer) and the start of the answer, and at least half of the
        window stays for the answer, so every example has answer tokens to learn.
    add_eos
        Append EOS (default). False for a text that was cut off at a length cap (an
        unfinished generated answer): training on it must not teach the model to
        stop mid-sentence.

    Returns
    -------
    dict
        ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` on prompt positions,
        the input ids on answer positions).

    """
    prompt_ids = encode_prompt(tokenizer, prompt_text)
    answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    if add_eos:
        answer_ids.append(tokenizer.eos_token_id)
    if len(prompt_ids) + len(answer_ids) > max_len:
        keep_prompt = min(len(prompt_ids), max(max_len - len(answer_ids), max_len // 2))
        prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt :]
        answer_ids = answer_ids[: max_len - keep_prompt]
    return {
        "input_ids": prompt_ids + answer_ids,
        "attention_mask": [1] * (len(prompt_ids) + len(answer_ids)),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


def pad_batch(
    examples: Sequence[dict[str, list[int]]], pad_id: int, side: str
) -> dict[str, torch.Tensor]:
    """Pad token-id lists to one length: ``side="right"`` for training, ``"left"`` to generate.

    Padding gets attention mask 0 and (when present) label ``-100``.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(ex["input_ids"]) for ex in examples)
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    batch: dict[str, list[list[int]]] = {key: [] for key in examples[0]}
    for ex in examples:
        for key, values in ex.items():
            padding = [fill[key]] * (width - len(values))
            batch[key].append(padding + values if side == "left" else values + padding)
    return {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}


def sample_batches(
    rng: np.random.Generator, num_examples: int, batch_size: int, steps: int
) -> list[list[int]]:
    """Draw the indices of ``steps`` batches from shuffled passes over the examples.

    Every example is used once before any is repeated, also when there are fewer
    examples than ``batch_size``.
    """
    order: list[int] = []
    batches = []
    for _ in range(steps):
        while len(order) < batch_size:
            order.extend(rng.permutation(num_examples).tolist())
        batches.append(order[:batch_size])
        order = order[batch_size:]
    return batches


def mixed_batches(
    rng: np.random.Generator,
    num_private: int,
    num_pseudo: int,
    batch_size: int,
    steps: int,
    pseudo_share: float,
) -> list[list[int]]:
    """Batches over ``num_private`` private then ``num_pseudo`` pseudo-labelled examples.

    With ``pseudo_share == 0`` (or no pseudo-labels) every batch is drawn uniformly
    from the union, as :func:`sample_batches` does. Otherwise each batch holds
    ``round(pseudo_share * batch_size)`` pseudo-labelled examples (at least one,
    at most the whole batch), each group drawn from its own shuffled passes; indices
    of pseudo-labelled examples are offset by ``num_private``.
    """
    if pseudo_share <= 0 or num_pseudo == 0 or num_private == 0:
        return sample_batches(rng, num_private + num_pseudo, batch_size, steps)
    n_pseudo = min(batch_size, max(1, round(pseudo_share * batch_size)))
    pseudo = sample_batches(rng, num_pseudo, n_pseudo, steps)
    if n_pseudo == batch_size:
        return [[num_private + i for i in b] for b in pseudo]
    private = sample_batches(rng, num_private, batch_size - n_pseudo, steps)
    return [a + [num_private + i for i in b] for a, b in zip(private, pseudo, strict=True)]
