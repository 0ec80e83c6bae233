"""Model registry, device/thread helpers and the per-process client cache.

Runs on the client (the server checks names against it).

Registered names (``smollm2-135m``, ``tiny-llama``, ...) map to builder functions
``fn(cache_dir) -> (model, tokenizer)`` added with :func:`register_model` when
``fedsem_app.clients`` is imported. Any other name that is a local folder or looks
like a hub id ``org/name`` is loaded with ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedsem_app.clients.causal_lm import CausalLMClient
from fedsem_app.config.sections import LoraConfig
from fedsem_app.console import quiet_loading
from fedsem_app.registry import Registry

Builder = Callable[[Path], tuple[PreTrainedModel, PreTrainedTokenizerBase]]

# A hub id is "org/name"; anything else that is not registered must be a local folder.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes
    ----------
    name
        Registry name used in ``model.names``.
    architecture
        Model family (``llama``, ``gemma3``, ``gpt2``, ...); picks the default LoRA targets
        and tells the server which clients can share adapters.
    description
        One line for listings.
    builder
        ``fn(cache_dir) -> (model, tokenizer)``, returning a float32 CPU model.

    """

    name: str
    architecture: str
    description: str
    builder: Builder


# The built-in models register themselves when these modules are imported.
MODEL_REGISTRY: Registry[ModelSpec] = Registry(
    "model", modules=("fedsem_app.clients.packaged", "fedsem_app.clients.tiny")
)

# Loaded clients of this process, keyed by (name, device, lora, template, seed).
# Flower simulation runs many virtual clients in one process: they share the weights
# and swap only the adapter with CausalLMClient.set_adapter.
_CLIENT_CACHE: dict[tuple, CausalLMClient] = {}


def register_model(
    name: str, *, architecture: str, description: str
) -> Callable[[Builder], Builder]:
    """Register a model builder under ``name`` (decorator).

    Parameters
    ----------
    name
        Registry name.
    architecture
        Model family, e.g. ``"llama"``.
    description
        One-line description.

    Raises
    ------
    ValueError
        If ``name`` is already registered.

    """

    def decorator(builder: Builder) -> Builder:
        MODEL_REGISTRY.register(name, ModelSpec(name, architecture, description, builder))
        return builder

    return decorator


def available_models() -> list[str]:
    """Sorted names of the registered models."""
    return sorted(MODEL_REGISTRY)


def _is_local_folder(name: str) -> bool:
    return Path(name).expanduser().is_dir()


def check_model_name(name: str) -> None:
    """Raise if ``name`` is neither registered, a local folder, nor a hub id ``org/name``.

    Raises
    ------
    ValueError
        Listing the registered names.

    """
    if name in MODEL_REGISTRY or _is_local_folder(name) or _HUB_ID.match(name):
        return
    raise ValueError(
        f"unknown model {name!r}; registered models: {', '.join(available_models())}. "
        "A local model folder or a hub id 'org/name' also works."
    )


def model_architecture(name: str) -> str:
    """Architecture of a model name without loading it.

    Registered models report their registered architecture; a local folder its
    ``config.json`` ``model_type``; anything else (a hub id, offline) the name itself.
    """
    if name in MODEL_REGISTRY:
        return MODEL_REGISTRY[name].architecture
    config_file = Path(name).expanduser() / "config.json"
    if config_file.is_file():
        return str(json.loads(config_file.read_text()).get("model_type") or name)
    return name


def build_cached_folder(target: Path, build: Callable[[Path], None]) -> Path:
    """Create ``target`` with ``build(tmp_folder)`` unless it exists; return ``target``.

    ``build`` writes into a private temporary folder next to ``target`` that is then
    renamed into place, so a crash never leaves a half-written cache and two processes
    racing on the same cache both end up with one complete folder.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a model cache may be shared
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_pretrained(
    name: str, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an unregistered local folder or hub id with the Auto classes.

    Hub downloads go through the Hugging Face cache (``HF_HOME``), shared with every
    other tool on the machine, and the weights load straight in ``dtype`` (bfloat16
    on a GPU): a float32 copy first would double the memory peak.
    """
    source = str(Path(name).expanduser()) if _is_local_folder(name) else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except Exception as err:  # hub/network/format errors come in many types
        raise RuntimeError(
            f"cannot load model {name!r} with AutoModelForCausalLM: {err}. A hub id needs "
            "access to the model hub; offline, use a local model folder or one of: "
            f"{', '.join(available_models())}"
        ) from err
    return model, tokenizer


def load_base_model(
    model_name: str, cache_dir: Path, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Load a base model (no adapter) in the dtype its device uses.

    Returns
    -------
    tuple
        The model (on the CPU, in bfloat16 where ``device`` is a bf16 GPU, else
        float32), its tokenizer and its architecture (model family).
    """
    check_model_name(model_name)
    dtype = _dtype_for(device)
    spec = MODEL_REGISTRY.get(model_name)
    # A load from disk takes a second and needs no progress bar; a hub id may first
    # download gigabytes, and that progress stays visible.
    local = spec is not None or _is_local_folder(model_name)
    with quiet_loading() if local else contextlib.nullcontext():
        if spec is not None:
            model, tokenizer = spec.builder(Path(cache_dir).expanduser())
            model, architecture = model.to(dtype), spec.architecture
        else:
            model, tokenizer = _load_pretrained(model_name, dtype)
            architecture = model.config.model_type
    if getattr(model, "loss_type", None) is None:
        # Classes not named *ForCausalLM (GPT-2's GPT2LMHeadModel) get no loss type from
        # transformers, which then warns on the first loss and falls back to this one.
        model.loss_type = "ForCausalLM"
    return model, tokenizer, architecture


def resolve_device(device: str) -> str:
    """Turn ``"auto"`` into ``"cuda"``, ``"mps"`` or ``"cpu"``; check explicit choices.

    Raises
    ------
    ValueError
        If an explicitly requested accelerator is not available.

    """
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} requested but CUDA is not available in this process. In a Flower "
            "simulation give each client a GPU share: --federation-config "
            '"client-resources-num-gpus=0.5" (without it Ray hides the GPUs from the '
            "clients); on a SuperNode check CUDA_VISIBLE_DEVICES and the torch build; "
            "or use model.device='auto'"
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but MPS is not available; use 'auto'")
    return device


def _ray_assigned_cpus() -> int:
    """CPUs Ray assigned to this actor, 0 outside Ray."""
    try:
        import ray
    except ImportError:
        return 0
    if not ray.is_initialized():
        return 0
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
    return max(1, int(cpus)) if cpus > 0 else 0  # a fractional CPU still gets one thread


def set_num_threads(n: int) -> int:
    """Set torch's intra-op threads; ``0`` picks them automatically.

    Automatic means the CPUs Ray assigned to this actor when running inside a Flower
    simulation (so actors do not oversubscribe the machine), else the CPUs this
    process may run on.

    Returns
    -------
    int
        The number of threads used.

    """
    if n <= 0:
        n = _ray_assigned_cpus()
    if n <= 0:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = max(1, int(n or 1))
    torch.set_num_threads(n)
    return n


def _dtype_for(device: str) -> torch.dtype:
    # bf16 weights + autocast on GPUs that support it; float32 everywhere else.
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_client(
    model_name: str,
    lora: LoraConfig,
    *,
    device: str = "cpu",
    cache_dir: Path,
    template: str = "chat",
    seed: int = 0,
) -> CausalLMClient:
    """Load (or reuse) a model with a fresh LoRA adapter, wrapped as a client.

    Parameters
    ----------
    model_name
        A registered name, a local model folder or a hub id.
    lora
        Adapter settings; the initial adapter depends only on the model, ``lora`` and
        ``seed``, so every client of the same model starts from the same adapter.
    device
        A resolved device (see :func:`resolve_device`).
    cache_dir
        Folder for converted / built models and tokenizers.
    template
        Prompt template name.
    seed
        Seed of the initial adapter.

    Returns
    -------
    CausalLMClient
        Cached per process: the same arguments return the same object.

    """
    check_model_name(model_name)
    # The cache folder is part of the key: a model of the same name built in another
    # folder is another set of files (tests use one folder per module).
    key = (model_name, str(cache_dir), device, lora, template, seed)
    if key in _CLIENT_CACHE:
        return _CLIENT_CACHE[key]
    model, tokenizer, architecture = load_base_model(model_name, cache_dir, device)
    client = CausalLMClient(
        model_name,
        model,
        tokenizer,
        lora,
        architecture=architecture,
        device=device,
        template=template,
        seed=seed,
    )
    _CLIENT_CACHE[key] = client
    return client


def clear_client_cache() -> None:
    """Forget the loaded clients of this process (tests, or to free memory)."""
    _CLIENT_CACHE.clear()
