"""LoRA settings per architecture: default target modules and the peft config.

Runs on the client (and on the server when it builds a parameter strategy's
initial adapter).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import peft
import torch
from peft.tuners.lora import LoraLayer
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from fedsem_app.config.sections import LoraConfig

ALL_LINEAR = "all-linear"  # peft's shorthand: every linear layer except the output head

# Default LoRA targets per architecture: all attention projections. Architectures not
# listed fall back to peft's own mapping, and families peft does not know either to
# every linear layer but the output head (peft's "all-linear").
LORA_TARGET_MODULES: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3_text": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
}

# Extra peft LoraConfig arguments per architecture: GPT-2 stores Conv1D weights transposed.
LORA_EXTRA_KWARGS: dict[str, dict[str, object]] = {
    "gpt2": {"fan_in_fan_out": True},
}


def make_peft_config(lora: LoraConfig, architecture: str) -> peft.LoraConfig:
    """Translate the app's :class:`LoraConfig` into a peft ``LoraConfig``.

    Parameters
    ----------
    lora
        Rank, alpha, dropout and target modules (empty: the architecture's default).
    architecture
        Model family, used to pick default target modules.

    Notes
    -----
    Without ``lora.target-modules`` the targets are, in this order: the app's defaults
    (:data:`LORA_TARGET_MODULES`), peft's own per-family mapping, and for a family
    neither knows, every linear layer but the output head (``"all-linear"``). Any
    causal LM thus trains without naming its modules; the client logs which it adapted.

    """
    if lora.target_modules:
        targets: list[str] | None = list(lora.target_modules)
    elif architecture in LORA_TARGET_MODULES:
        targets = list(LORA_TARGET_MODULES[architecture])
    elif architecture in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        targets = None  # peft picks its own default for this model type
    else:
        targets = ALL_LINEAR
    return peft.LoraConfig(
        task_type=peft.TaskType.CAUSAL_LM,
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        **LORA_EXTRA_KWARGS.get(architecture, {}),
    )


def adapted_module_kinds(model: peft.PeftModel) -> list[str]:
    """Sorted last name parts of the modules LoRA adapted (``q_proj``, ``c_attn``, ...)."""
    return sorted({name.rsplit(".", 1)[-1] for name in model.targeted_module_names})


def _mergeable(layer: LoraLayer) -> bool:
    # A plain float32/64 weight and plain LoRA (no DoRA): W + delta is then the layer.
    # In bf16/fp16 a small delta would mostly round away when added to W.
    weight = getattr(layer.get_base_layer(), "weight", None)
    return (
        type(weight) is torch.nn.Parameter
        and weight.dtype in (torch.float32, torch.float64)
        and not any(layer.use_dora.get(name, False) for name in layer.active_adapters)
    )


@contextlib.contextmanager
def merged_adapter(model: peft.PeftModel) -> Iterator[bool]:
    """Fold the active LoRA adapter into the base weights for the duration of the block.

    Inside, each adapted layer computes ``x @ (W + delta)`` in one product instead of
    ``x @ W + s (x @ A) @ B`` (fewer, larger matrix products: faster decoding). On exit
    every base weight is the very tensor it was before, so training after the block is
    exactly as without it. peft's own ``merge_adapter``/``unmerge_adapter`` restore
    ``W`` as ``(W + delta) - delta``, which rounds and drifts over rounds; here the
    original tensor is kept and put back.

    Yields
    ------
    bool
        Whether the adapter was merged: ``False`` (the block runs unmerged) when a
        layer cannot be merged this way (a quantized or half-precision base weight,
        DoRA), the adapter is disabled or nothing is adapted.

    """
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    # Under peft's disable_adapter the caller wants the base model: nothing to fold.
    if not layers or any(m.disable_adapters for m in layers) or not all(map(_mergeable, layers)):
        yield False
        return
    originals: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for layer in layers:
                weight = layer.get_base_layer().weight
                delta = sum(
                    layer.get_delta_weight(name)
                    for name in layer.active_adapters
                    if name in layer.lora_A
                )
                originals.append((weight, weight.data))
                weight.data = weight.data + delta  # a new tensor; the original is kept
        # With the adapter disabled peft calls the base layer alone, i.e. W + delta.
        with model.disable_adapter():
            yield True
    finally:
        for weight, original in originals:
            weight.data = original
