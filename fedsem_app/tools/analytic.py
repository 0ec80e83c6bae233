"""Analytic bytes per round: LoRA averaging versus behaviour (text) exchange.

Offline tool: no federation, no model.

Pure functions plus a command (``fedsem-analytic``) that prints Markdown tables.

Model
-----
A decoder-only transformer of the Llama family, given by its architecture numbers
(:class:`Architecture`): hidden size ``h``, layers ``n``, attention heads ``a``,
KV heads ``g``, head dim ``d`` and FFN size ``f``. Its linear layers, per block:

=============  ==========  ==========
module          in          out
=============  ==========  ==========
``q_proj``      h           a * d
``k_proj``      h           g * d
``v_proj``      h           g * d
``o_proj``      a * d       h
``gate_proj``   h           f
``up_proj``     h           f
``down_proj``   f           h
=============  ==========  ==========

Assumptions (each one is a parameter; the defaults are the app's own setting)
-----------------------------------------------------------------------------
LoRA averaging (FedAvg-LoRA, FedIT):

* A LoRA adapter of rank ``r`` on a linear ``in -> out`` has ``r * (in + out)``
  parameters (the A and B matrices); no bias, no other trainable weights
  (embeddings, norms and the LM head stay frozen).
* Targets: the same modules in every layer. Default ``q_proj,k_proj,v_proj,o_proj``
  (the app's default for Llama-type models); ``all`` adds the three MLP projections.
* Bytes per parameter: 4 (float32, what the app sends) by default; 2 for bf16/fp16.
* Per client and round the adapter goes up once (client -> server) and the
  averaged adapter comes down once (server -> client); ``directions="up"`` counts
  the upload only. Serialisation overhead (tensor names, shapes) is ignored:
  measured on SmolLM2-135M it is 1.5 % (240 named tensors, 3.74 MB on the wire for
  3.69 MB of weights).

Behaviour exchange (FedSem):

* Up, per client: ``P`` answers of ``L`` tokens each (``P`` public prompts per round,
  answer length ``L``, e.g. ``gen.max-new-tokens``), at ``b`` bytes per token.
* Down, per client: the ``P`` prompts (``L_p`` tokens each) plus ``P`` pseudo-labels
  (``L`` tokens each). ``directions="up"`` counts the answers only.
* Bytes per token ``b``: 4 by default, i.e. UTF-8 text at about 4 characters per
  English token; token ids would be 4 bytes as int32 (vocabularies above 65 536
  need more than 16 bits). Ids, confidences and record keys are ignored. Measured
  on SmolLM2-135M answers (BENCHMARKS.md): 4.95 UTF-8 bytes per token, 5.85 bytes
  per answer token on the wire with ids, confidences and the reply's metrics.
* Embeddings are computed on the server, never sent.

The ratio LoRA / behaviour is per client and round; the number of clients ``K``
multiplies both sides and cancels (it only scales the totals).

Architecture numbers of the known models are their published Hugging Face configs
(``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
``num_key_value_heads``, ``head_dim``, ``intermediate_size``, ``vocab_size``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
ALL_LINEAR = ATTENTION + MLP
TARGET_ALIASES = {"attention": ATTENTION, "qkvo": ATTENTION, "qv": ("q_proj", "v_proj")}
TARGET_ALIASES["all"] = ALL_LINEAR
DIRECTIONS = ("both", "up")
PAPER_REDUCTION = 1006.0  # reported for Llama3.1-405B (arXiv 2605.11857, abstract)


@dataclass(frozen=True)
class Architecture:
    """Architecture numbers of a Llama-type decoder.

    Attributes
    ----------
    name
        Display name.
    hidden_size, num_layers, num_heads, num_kv_heads, head_dim, ffn_size, vocab_size
        As in the model's config (``head_dim`` is usually ``hidden_size / num_heads``,
        but not always: Gemma-3-270M has 4 heads of 256 on a hidden size of 640).
    tied_embeddings
        Whether the LM head shares the input embedding (``tie_word_embeddings``).

    """

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    tied_embeddings: bool = False

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """``(in, out)`` features of every linear module of one block."""
        h, q, kv, f = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.ffn_size,
        )
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, f),
            "up_proj": (h, f),
            "down_proj": (f, h),
        }

    def num_parameters(self) -> int:
        """Total weights of the linear layers and embeddings (norms and biases ignored)."""
        per_layer = sum(i * o for i, o in self.module_shapes().values())
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)
        return self.num_layers * per_layer + embeddings


# Published configs. Llama-3.1: meta-llama/Llama-3.1-{8B,70B,405B}; SmolLM2:
# HuggingFaceTB/SmolLM2-135M(-Instruct); Qwen2.5: Qwen/Qwen2.5-0.5B; Gemma-3:
# google/gemma-3-270m. The packaged SmolLM2 (converted config) and Gemma-3 (GGUF
# metadata) were checked against these numbers.
KNOWN_MODELS: dict[str, Architecture] = {
    arch.name.lower(): arch
    for arch in (
        Architecture("SmolLM2-135M", 576, 30, 9, 3, 64, 1536, 49152, True),
        Architecture("Gemma-3-270M", 640, 18, 4, 1, 256, 2048, 262144, True),
        Architecture("Qwen2.5-0.5B", 896, 24, 14, 2, 64, 4864, 151936, True),
        Architecture("Llama-3.1-8B", 4096, 32, 32, 8, 128, 14336, 128256),
        Architecture("Llama-3.1-70B", 8192, 80, 64, 8, 128, 28672, 128256),
        Architecture("Llama-3.1-405B", 16384, 126, 128, 8, 128, 53248, 128256),
    )
}


def get_architecture(name: str) -> Architecture:
    """A known model by name (case-insensitive).

    Raises
    ------
    ValueError
        For an unknown name, listing the known ones.

    """
    try:
        return KNOWN_MODELS[name.lower()]
    except KeyError:
        known = ", ".join(a.name for a in KNOWN_MODELS.values())
        raise ValueError(
            f"unknown model {name!r}; known: {known} (or give the architecture numbers)"
        ) from None


def parse_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
    """Target modules from a comma list or an alias (``attention``, ``qv``, ``all``).

    Raises
    ------
    ValueError
        For an empty list or a module name that is not a Llama linear layer.

    """
    if isinstance(targets, str):
        if targets in TARGET_ALIASES:
            return TARGET_ALIASES[targets]
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    names = tuple(targets)
    unknown = [t for t in names if t not in ALL_LINEAR]
    if not names or unknown:
        raise ValueError(
            f"target modules must be among {', '.join(ALL_LINEAR)} or one of "
            f"{', '.join(TARGET_ALIASES)}; got {list(names)}"
        )
    return names


def lora_parameters(arch: Architecture, rank: int, targets: str | Sequence[str]) -> int:
    """Parameters of a LoRA adapter: ``layers * sum over targets of rank * (in + out)``."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    shapes = arch.module_shapes()
    return arch.num_layers * sum(rank * sum(shapes[t]) for t in parse_targets(targets))


def _check_direction(directions: str) -> None:
    if directions not in DIRECTIONS:
        raise ValueError(f"directions must be one of {DIRECTIONS}, got {directions!r}")


def lora_bytes(
    arch: Architecture,
    rank: int,
    targets: str | Sequence[str],
    bytes_per_param: float,
    directions: str = "both",
) -> float:
    """Bytes per client and round of LoRA averaging (adapter up, and down if ``both``)."""
    _check_direction(directions)
    per_transfer = lora_parameters(arch, rank, targets) * bytes_per_param
    return per_transfer * (2 if directions == "both" else 1)


def behaviour_bytes(
    prompts: int,
    answer_tokens: float,
    bytes_per_token: float,
    prompt_tokens: float = 0.0,
    directions: str = "both",
) -> float:
    """Bytes per client and round of behaviour exchange.

    Up: ``prompts * answer_tokens * bytes_per_token``. Down (``both``): the prompts
    (``prompt_tokens`` each) and one pseudo-label per prompt (``answer_tokens`` each).
    """
    _check_direction(directions)
    if prompts < 0 or answer_tokens < 0 or bytes_per_token <= 0 or prompt_tokens < 0:
        raise ValueError("prompts and token counts must be >= 0 and bytes per token > 0")
    up = prompts * answer_tokens * bytes_per_token
    down = prompts * (prompt_tokens + answer_tokens) * bytes_per_token
    return up + (down if directions == "both" else 0.0)


@dataclass(frozen=True)
class Assumptions:
    """One setting of the calculator (see the module docstring for each assumption)."""

    rank: int = 8
    targets: str = "attention"
    bytes_per_param: float = 4.0
    prompts: int = 16
    answer_tokens: float = 32.0
    prompt_tokens: float = 20.0
    bytes_per_token: float = 4.0
    directions: str = "both"
    clients: int = 1


def compare_row(arch: Architecture, a: Assumptions) -> dict[str, float | int | str]:
    """One table row: LoRA parameters, bytes both ways per round, and their ratio."""
    lora = lora_bytes(arch, a.rank, a.targets, a.bytes_per_param, a.directions)
    text = behaviour_bytes(
        a.prompts, a.answer_tokens, a.bytes_per_token, a.prompt_tokens, a.directions
    )
    return {
        "model": arch.name,
        "params": arch.num_parameters(),
        "lora-params": lora_parameters(arch, a.rank, a.targets),
        "lora-bytes": lora * a.clients,
        "behaviour-bytes": text * a.clients,
        "ratio": lora / text if text else float("inf"),
    }


def paper_sweep(
    arch: Architecture,
    *,
    ranks: Iterable[int] = (8, 16, 32, 64),
    targets: Iterable[str] = ("qv", "attention", "all"),
    bytes_per_param: Iterable[float] = (2.0, 4.0),
    prompts: Iterable[int] = (50, 100, 200, 500, 1000, 2000, 5000),
    answer_tokens: Iterable[float] = (32.0, 64.0, 100.0, 128.0, 256.0, 512.0),
    bytes_per_token: float = 4.0,
    target_ratio: float = PAPER_REDUCTION,
) -> list[dict[str, float | int | str]]:
    """Which behaviour budget gives ``target_ratio`` for each LoRA setting.

    The ratio depends on the assumptions only through ``LoRA bytes / text bytes``, so
    many combinations give the same number. For every LoRA setting (rank x targets x
    bytes per parameter) this returns the text bytes per client and round that give
    exactly ``target_ratio``, and the budget (``prompts`` x ``answer_tokens`` at
    ``bytes_per_token``) from the given grids that comes nearest. Directions: counted
    the same way on both sides (answers up and pseudo-labels down, prompts not
    counted), so "up only" and "both" give the same ratio.

    Returns
    -------
    list of dict
        One row per LoRA setting, nearest to ``target_ratio`` first.

    """
    budgets = list(itertools.product(prompts, answer_tokens))
    rows = []
    for r, t, bpp in itertools.product(ranks, targets, bytes_per_param):
        lora = lora_bytes(arch, r, t, bpp, "up")
        needed = lora / target_ratio
        p, n = min(
            budgets, key=lambda b: abs(lora / (b[0] * b[1] * bytes_per_token) / target_ratio - 1)
        )
        ratio = lora / behaviour_bytes(p, n, bytes_per_token, 0.0, "up")
        rows.append(
            {
                "rank": r,
                "targets": t,
                "bytes_per_param": bpp,
                "lora-params": lora_parameters(arch, r, t),
                "lora-bytes": lora,
                "needed-bytes": needed,
                "needed-tokens": needed / bytes_per_token,
                "prompts": p,
                "answer_tokens": n,
                "bytes_per_token": bytes_per_token,
                "ratio": ratio,
                "off-by": ratio / target_ratio,
            }
        )
    rows.sort(key=lambda row: abs(float(row["off-by"]) - 1.0))
    return rows
