"""LLM clients: a model registry, loaders and the LoRA-adapted client class.

Runs on the client (the server imports it only to check model names and to build a global adapter).

The built-in models (the packaged GGUF models and the tiny random-init models)
register themselves on the first lookup of :data:`MODEL_REGISTRY`; loading happens
only in :func:`load_client`.
"""

from fedsem_app.clients.batching import build_example
from fedsem_app.clients.causal_lm import CausalLMClient
from fedsem_app.clients.generation import answer_confidence
from fedsem_app.clients.lora import make_peft_config
from fedsem_app.clients.registry import (
    MODEL_REGISTRY,
    ModelSpec,
    available_models,
    check_model_name,
    clear_client_cache,
    load_base_model,
    load_client,
    model_architecture,
    register_model,
    resolve_device,
    set_num_threads,
)
from fedsem_app.clients.templates import TEMPLATES, format_prompt

__all__ = [
    "MODEL_REGISTRY",
    "TEMPLATES",
    "CausalLMClient",
    "ModelSpec",
    "answer_confidence",
    "available_models",
    "build_example",
    "check_model_name",
    "clear_client_cache",
    "format_prompt",
    "load_base_model",
    "load_client",
    "make_peft_config",
    "model_architecture",
    "register_model",
    "resolve_device",
    "set_num_threads",
]
