"""Voting in blocks of prompts chooses what one call over all prompts chooses."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from fedsem_app.config.sections import FedSemConfig
from fedsem_app.strategies.consensus import consensus, text_key
from fedsem_app.strategies.fedsem import embed_grid, vote_in_chunks


def fake_vector(text: str, dim: int = 8) -> np.ndarray:
    # Deterministic per text, independent of the batch it is embedded in.
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    vector = np.random.default_rng(seed).normal(size=dim)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def make_fake_embed(calls: list[int]):
    def embed_fn(texts, mask, embedder):
        calls.append(len(texts))
        grid = np.zeros((*mask.shape, 8), dtype=np.float32)
        for i, k in zip(*np.nonzero(mask), strict=True):
            grid[i, k] = fake_vector(texts[i][k])
        return torch.from_numpy(grid)

    return embed_fn


def round_answers(num_prompts: int, num_clients: int):
    rng = np.random.default_rng(0)
    # Few distinct answers per prompt, so clients agree in part and choices are not trivial.
    texts = [
        [f"answer {p} variant {rng.integers(3)}" for _ in range(num_clients)]
        for p in range(num_prompts)
    ]
    mask = rng.random((num_prompts, num_clients)) > 0.2
    confidences = -rng.random((num_prompts, num_clients)).astype(np.float32)
    return texts, mask, confidences


@pytest.mark.parametrize("rule", ["medoid", "cluster", "confidence"])
@pytest.mark.parametrize("chunk_texts", [1, 5, 12, 1000])
def test_blocks_choose_like_one_call(rule, chunk_texts):
    texts, mask, confidences = round_answers(num_prompts=23, num_clients=4)
    cfg = FedSemConfig(consensus=rule, min_agreement=0.1)
    whole_calls: list[int] = []
    whole = consensus(
        rule,
        make_fake_embed(whole_calls)(texts, mask, cfg.embedder),
        torch.from_numpy(mask),
        confidences=torch.from_numpy(confidences),
        options=cfg.consensus_options,
        min_agreement=0.1,
    )
    calls: list[int] = []
    chunked, embed_s, vote_s = vote_in_chunks(
        texts, mask, confidences, cfg, chunk_texts=chunk_texts, embed_fn=make_fake_embed(calls)
    )
    np.testing.assert_array_equal(chunked.index, whole.index)
    np.testing.assert_array_equal(chunked.abstained, whole.abstained)
    np.testing.assert_array_equal(chunked.num_valid, whole.num_valid)
    np.testing.assert_allclose(chunked.agreement, whole.agreement, atol=1e-12)
    # A block holds max(1, chunk_texts // 4) prompts: 1, 1, 3 and all 23.
    per_block = max(1, chunk_texts // 4)
    assert max(calls) == min(per_block, 23)
    assert len(calls) == -(-23 // per_block)
    assert embed_s >= 0 and vote_s >= 0


def test_no_prompts_gives_an_empty_result():
    cfg = FedSemConfig()
    result, _, _ = vote_in_chunks(
        [], np.zeros((0, 3), bool), np.zeros((0, 3), np.float32), cfg, embed_fn=make_fake_embed([])
    )
    assert result.index.shape == (0,) and result.abstained.shape == (0,)


def test_real_embedder_blocks_match_one_call():
    texts = [
        ["Wear a helmet on site.", "Helmets are required on site.", "Bring lunch."],
        ["Concrete cures in 28 days.", "Full strength after about four weeks.", "Use rebar."],
        ["Scaffolds need guard rails.", "Guard rails are needed on scaffolds.", "Paint it."],
        ["Check the permit.", "Ask the city for a permit.", "Permits are optional."],
    ]
    mask = np.ones((4, 3), bool)
    mask[3, 2] = False
    confidences = np.zeros((4, 3), np.float32)
    cfg = FedSemConfig()
    whole = embed_grid(texts, mask, cfg.embedder)
    keys = np.array([[text_key(t) for t in row] for row in texts])
    one = consensus(
        cfg.consensus, whole, torch.from_numpy(mask), confidences=confidences, text_keys=keys
    )
    chunked, _, _ = vote_in_chunks(texts, mask, confidences, cfg, chunk_texts=3)
    np.testing.assert_array_equal(chunked.index, one.index)
    np.testing.assert_allclose(chunked.agreement, one.agreement, atol=1e-5)
    # Only the masked answer stays a zero row; the off-topic third answers lose.
    assert (whole[3, 2] == 0).all() and (one.index != 2).all()
