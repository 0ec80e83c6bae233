"""LoRA settings per architecture: default target modules and the peft config.

Runs on the client (and on the server when it builds a parameter strategy's
initial adapter).
"""

from __future__ import annotations

import peft
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
