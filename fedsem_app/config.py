"""Typed configuration, read once at the boundary.

``context.run_config`` is a flat mapping with dotted keys (``train.local-steps``).
:func:`load_app_config` turns it into frozen dataclasses that validate themselves;
nothing else in the app reads ``run_config[...]``. Node-level settings (a
SuperNode's ``--node-config``) are read by :func:`load_node_config` and win over
the run config for the model, data file and device of that node.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_HOME = Path.home() / ".fedsem"


class ConfigError(ValueError):
    """A run-config or node-config value is wrong; the message says how to fix it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key '{key}': {message}")
        self.key = key


def _split_names(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(key, message)


def _check_choice(value: str, choices: typing.Iterable[str], key: str) -> None:
    choices = sorted(choices)
    _check(value in choices, key, f"got {value!r}; allowed values: {', '.join(choices)}")


@dataclass(frozen=True)
class ModelConfig:
    """Which models the clients run and where converted weights are cached.

    ``names`` is assigned to clients round-robin by partition id, so
    ``"smollm2-135m,gemma3-270m"`` gives a heterogeneous federation.
    """

    names: tuple[str, ...] = ("smollm2-135m", "gemma3-270m", "smollm2-135m")
    device: str = "auto"
    cache_dir: str = ""
    template: str = "chat"

    def __post_init__(self) -> None:
        _check(len(self.names) > 0, "model.names", "give at least one model name")
        _check_choice(self.device.split(":")[0], ("auto", "cpu", "cuda", "mps"), "model.device")
        _check_choice(self.template, ("chat", "plain", "alpaca"), "model.template")

    def name_for(self, partition_id: int) -> str:
        """Model name of the client with this partition id (round-robin)."""
        return self.names[partition_id % len(self.names)]

    @property
    def cache_path(self) -> Path:
        """Absolute folder for converted models and tokenizers."""
        return Path(self.cache_dir).expanduser() if self.cache_dir else DEFAULT_HOME / "models"


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapter settings; empty ``target_modules`` picks a default per architecture."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(self.rank > 0, "lora.rank", f"must be a positive integer, got {self.rank}")
        _check(self.alpha > 0, "lora.alpha", f"must be positive, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, "lora.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TrainConfig:
    """Local supervised fine-tuning budget, identical for every strategy."""

    local_steps: int = 4
    batch_size: int = 4
    learning_rate: float = 3e-4
    max_seq_len: int = 128
    num_threads: int = 0

    def __post_init__(self) -> None:
        _check(self.local_steps >= 0, "train.local-steps", "must be >= 0")
        _check(self.batch_size > 0, "train.batch-size", "must be a positive integer")
        _check(
            0 < self.learning_rate < 1,
            "train.learning-rate",
            f"must be in (0, 1), got {self.learning_rate}",
        )
        _check(self.max_seq_len >= 16, "train.max-seq-len", "must be >= 16 tokens")
        _check(self.num_threads >= 0, "train.num-threads", "must be >= 0 (0 = automatic)")


@dataclass(frozen=True)
class GenerationConfig:
    """Greedy batched generation settings for public and test prompts."""

    max_new_tokens: int = 48
    batch_size: int = 16
    # Batch prompts of similar token length together (less left padding per batch);
    # answers come back in prompt order either way.
    sort_by_length: bool = False

    def __post_init__(self) -> None:
        _check(self.max_new_tokens > 0, "gen.max-new-tokens", "must be a positive integer")
        _check(self.batch_size > 0, "gen.batch-size", "must be a positive integer")


PARTITIONERS = ("iid", "dirichlet", "category")


@dataclass(frozen=True)
class DataConfig:
    """Dataset, field mapping and the deterministic split/partition settings."""

    name: str = "construction-faq"
    path: str = ""
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    category_field: str = "category"
    test_fraction: float = 0.1
    public_fraction: float = 0.3
    partitioner: str = "dirichlet"
    dirichlet_alpha: float = 0.5

    def __post_init__(self) -> None:
        _check(bool(self.name or self.path), "data.name", "give a dataset name or data.path")
        for key, value in (
            ("data.test-fraction", self.test_fraction),
            ("data.public-fraction", self.public_fraction),
        ):
            _check(0 < value < 1, key, f"must be in (0, 1), got {value}")
        _check(
            self.test_fraction + self.public_fraction < 1,
            "data.public-fraction",
            "test-fraction + public-fraction must leave a private pool (< 1)",
        )
        _check_choice(self.partitioner, PARTITIONERS, "data.partitioner")
        _check(self.dirichlet_alpha > 0, "data.dirichlet-alpha", "must be positive")


CONSENSUS_RULES = ("medoid", "centroid", "cluster", "confidence")
WIRE_CODECS = ("none", "zlib")


@dataclass(frozen=True)
class FedSemConfig:
    """Semantic-consensus settings (used by the ``fedsem`` strategy)."""

    prompts_per_round: int = 16
    consensus: str = "medoid"
    min_agreement: float = 0.0
    cluster_threshold: float = 0.7
    confidence_weight: float = 0.5
    embedder: str = "all-MiniLM-L6-v2"
    max_answer_chars: int = 2000
    wire_compression: str = "none"
    # Keep the latest consensus of every public prompt answered so far and train on
    # all of them (FedCT labels the whole public set every round); False: last round's.
    label_memory: bool = False
    # Share of each training batch drawn from the pseudo-labels; 0 draws uniformly
    # from private + pseudo-labelled pairs together.
    pseudo_share: float = 0.0
    # Whether answers cut at gen.max-new-tokens take part in the vote (unfinished
    # pseudo-labels are always trained on without EOS).
    vote_unfinished: bool = True
    # Prompts per round whose every answer goes to consensus_samples.jsonl (0: all of
    # them, e.g. to audit what the server received, as bench/privacy.py does).
    samples_per_round: int = 5

    def __post_init__(self) -> None:
        _check(self.prompts_per_round > 0, "fedsem.prompts-per-round", "must be positive")
        _check(0 <= self.pseudo_share <= 1, "fedsem.pseudo-share", "must be in [0, 1]")
        _check_choice(self.wire_compression, WIRE_CODECS, "fedsem.wire-compression")
        _check_choice(self.consensus, CONSENSUS_RULES, "fedsem.consensus")
        _check(-1 <= self.min_agreement <= 1, "fedsem.min-agreement", "must be in [-1, 1]")
        _check(-1 <= self.cluster_threshold <= 1, "fedsem.cluster-threshold", "must be in [-1, 1]")
        _check(0 <= self.confidence_weight <= 1, "fedsem.confidence-weight", "must be in [0, 1]")
        _check(self.max_answer_chars > 0, "fedsem.max-answer-chars", "must be positive")
        _check(
            self.samples_per_round >= 0,
            "fedsem.samples-per-round",
            "must be 0 (every prompt) or a positive count",
        )


@dataclass(frozen=True)
class FedITConfig:
    """Federated Instruction Tuning settings (used by the ``fedit`` strategy).

    ``fraction_train`` is the share of connected clients sampled for each round's
    training (Shepherd's ``client_selection_frac``); ``min-clients`` is the floor.
    """

    fraction_train: float = 0.1

    def __post_init__(self) -> None:
        _check(0 < self.fraction_train <= 1, "fedit.fraction-train", "must be in (0, 1]")


@dataclass(frozen=True)
class FedProxConfig:
    """FedProx settings (used by the ``fedprox-lora`` strategy)."""

    proximal_mu: float = 0.01

    def __post_init__(self) -> None:
        _check(self.proximal_mu >= 0, "fedprox.proximal-mu", "must be >= 0")


AGGREGATION_RULES = ("mean", "median", "trimmed-mean")


@dataclass(frozen=True)
class AggregationConfig:
    """How the parameter strategies (``fedavg-lora``, ``fedit``) combine adapters.

    ``mean`` is FedAvg's average weighted by example count; ``median`` (Flower's
    FedMedian) and ``trimmed-mean`` (Flower's FedTrimmedAvg, cutting
    ``trim_fraction`` of the values at each end) are unweighted, per coordinate,
    and bound what a few malicious clients can do. ``quantize`` sends the adapters
    as int8 or int4 codes (scales per ``quantize_scales``) instead of float32; the
    server decodes them before it combines them.
    """

    rule: str = "mean"
    trim_fraction: float = 0.2
    # Adapters on the wire (both directions): float32 ("none"), or symmetric int8 /
    # int4 codes with one float32 scale per tensor or per row (fedsem_app.quantize).
    quantize: str = "none"
    quantize_scales: str = "row"

    def __post_init__(self) -> None:
        from fedsem_app.quantize import BITS, SCALE_MODES

        _check_choice(self.rule, AGGREGATION_RULES, "aggregation.rule")
        _check_choice(self.quantize, ("none", *BITS), "aggregation.quantize")
        _check_choice(self.quantize_scales, SCALE_MODES, "aggregation.quantize-scales")
        _check(
            0 <= self.trim_fraction < 0.5,
            "aggregation.trim-fraction",
            f"must be in [0, 0.5), got {self.trim_fraction}",
        )


DP_CLIP_SIDES = ("client", "server")


@dataclass(frozen=True)
class DPConfig:
    """Central differential privacy for the parameter strategies (:mod:`fedsem_app.dp`).

    ``noise_multiplier`` 0 turns it off. Otherwise each client's adapter update is
    clipped to L2 norm ``clipping_norm`` (on the ``clip_side``), the updates are
    averaged with equal weights and Gaussian noise of ``noise_multiplier x
    clipping_norm / clients`` is added; epsilon is reported at ``delta``.
    """

    noise_multiplier: float = 0.0
    clipping_norm: float = 1.0
    clip_side: str = "server"
    delta: float = 1e-5

    def __post_init__(self) -> None:
        _check(self.noise_multiplier >= 0, "dp.noise-multiplier", "must be >= 0 (0: no DP)")
        _check(self.clipping_norm > 0, "dp.clipping-norm", "must be positive")
        _check_choice(self.clip_side, DP_CLIP_SIDES, "dp.clip-side")
        _check(0 < self.delta < 1, "dp.delta", f"must be in (0, 1), got {self.delta}")

    @property
    def enabled(self) -> bool:
        """Whether the run adds DP noise."""
        return self.noise_multiplier > 0


FAULT_MODES = (
    "none",
    "raise",
    "stall",
    "malformed",
    "garbage",
    "adversarial",
    "scaled-adapter",
    "random-adapter",
)


@dataclass(frozen=True)
class FaultConfig:
    """Clients that misbehave on purpose, to test and measure robustness.

    The clients whose partition ids are in ``clients`` apply ``mode`` to every
    train reply (see :mod:`fedsem_app.faults`); the others are honest.
    """

    mode: str = "none"
    clients: tuple[str, ...] = ()
    scale: float = 10.0
    text: str = "Ignore the question: the answer is always 42. Visit example.com."
    stall_seconds: float = 600.0

    def __post_init__(self) -> None:
        _check_choice(self.mode, FAULT_MODES, "fault.mode")
        _check(
            all(c.isdigit() for c in self.clients),
            "fault.clients",
            f"must be comma-separated partition ids like '0,2', got {','.join(self.clients)!r}",
        )
        _check(self.scale != 0, "fault.scale", "must be non-zero")
        _check(self.stall_seconds >= 0, "fault.stall-seconds", "must be >= 0")

    def applies_to(self, partition_id: int) -> bool:
        """Whether the client with this partition id misbehaves."""
        return self.mode != "none" and str(partition_id) in self.clients


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation budget.

    ``num_prompts`` 0 evaluates every held-out test prompt (the default, 16, keeps
    the demo run short; a study should use 0). ``generate`` False
    scores only the reference answers' NLL (one forward pass, no generation), so
    ROUGE-L and embed-sim are not measured: for budgets where generating answers
    to every test prompt every round costs more than the training.
    """

    num_prompts: int = 16
    generate: bool = True

    def __post_init__(self) -> None:
        _check(self.num_prompts >= 0, "eval.num-prompts", "must be >= 0 (0 = all test prompts)")


@dataclass(frozen=True)
class AppConfig:
    """The whole run configuration, one section per concern."""

    strategy: str = "fedsem"
    num_server_rounds: int = 3
    seed: int = 42
    min_clients: int = 2
    # Client sampling, as Flower's FedAvg does it: each round trains (evaluates) a
    # random fraction of the connected nodes, but at least min-train-nodes
    # (min-evaluate-nodes; 0: min-clients). fedit samples with fedit.fraction-train.
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_train_nodes: int = 0
    min_evaluate_nodes: int = 0
    round_timeout: float = 3600.0
    results_dir: str = ""
    run_name: str = ""
    # A run folder (absolute path, or a folder name under results-dir) whose checkpoint
    # this run continues; empty starts a new run. See fedsem_app.checkpoint.
    resume_from: str = ""
    # A federation spec (YAML, fedsem_app.spec): the clients one by one; it wins over
    # model.*, lora.*, the data file and mapping, device and fault mode per client.
    federation_spec: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gen: GenerationConfig = field(default_factory=GenerationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    fedsem: FedSemConfig = field(default_factory=FedSemConfig)
    fedit: FedITConfig = field(default_factory=FedITConfig)
    fedprox: FedProxConfig = field(default_factory=FedProxConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)
    # Where each round's metrics go besides the run folder (fedsem_app.tracking).
    tracking: str = "none"

    def __post_init__(self) -> None:
        _check(self.num_server_rounds > 0, "num-server-rounds", "must be a positive integer")
        from fedsem_app.tracking import TRACKERS

        _check_choice(self.tracking, TRACKERS, "tracking")
        _check(self.min_clients > 0, "min-clients", "must be a positive integer")
        for key, value in (
            ("fraction-train", self.fraction_train),
            ("fraction-evaluate", self.fraction_evaluate),
        ):
            _check(0 < value <= 1, key, f"must be in (0, 1], got {value}")
        for key, value in (
            ("min-train-nodes", self.min_train_nodes),
            ("min-evaluate-nodes", self.min_evaluate_nodes),
        ):
            _check(
                value == 0 or value >= self.min_clients,
                key,
                f"must be 0 (= min-clients) or at least min-clients={self.min_clients}, "
                f"got {value}: a round needs min-clients usable replies",
            )
        _check(self.round_timeout > 0, "round-timeout", "must be positive (seconds)")
        _check(
            not self.dp.enabled or self.aggregation.rule == "mean",
            "dp.noise-multiplier",
            f"DP noise is calibrated to the mean of clipped updates; aggregation.rule "
            f"{self.aggregation.rule!r} is not covered: set aggregation.rule='mean' or "
            "dp.noise-multiplier=0",
        )

    @property
    def train_floor(self) -> int:
        """Fewest nodes a round trains: ``min-train-nodes``, or ``min-clients`` for 0."""
        return self.min_train_nodes or self.min_clients

    @property
    def evaluate_floor(self) -> int:
        """Fewest nodes a round evaluates: ``min-evaluate-nodes``, or ``min-clients`` for 0."""
        return self.min_evaluate_nodes or self.min_clients

    @property
    def results_root(self) -> Path:
        """Absolute folder that holds one sub-folder per run.

        Absolute because the ServerApp runs in the SuperLink's working directory.
        """
        return (
            Path(self.results_dir).expanduser().resolve()
            if self.results_dir
            else (DEFAULT_HOME / "runs")
        )

    def to_flat(self) -> dict[str, Any]:
        """Flat ``run_config``-style mapping (inverse of :func:`load_app_config`)."""
        flat: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                for sub in dataclasses.fields(value):
                    flat[f"{f.name}.{_key(sub.name)}"] = _to_wire(getattr(value, sub.name))
            else:
                flat[_key(f.name)] = _to_wire(value)
        return flat


def _key(name: str) -> str:
    return name.replace("_", "-")


def _to_wire(value: Any) -> Any:
    return ",".join(value) if isinstance(value, tuple) else value


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert a run-config value to the annotated type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin in (tuple, types.GenericAlias) or annotation == tuple[str, ...]:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a comma-separated string, got {value!r}")
        return _split_names(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {annotation!r} for {key}")


def known_keys() -> set[str]:
    """All run-config keys the app understands."""
    return set(AppConfig().to_flat())


def load_app_config(run_config: typing.Mapping[str, Any]) -> AppConfig:
    """Build and validate an :class:`AppConfig` from a flat run config.

    Missing keys take their defaults; unknown keys are refused with the closest
    valid names, so a typo never silently falls back to a default.

    Raises
    ------
    ConfigError
        Naming the key, what is wrong and the allowed values.
    """
    known = known_keys()
    unknown = sorted(set(run_config) - known)
    if unknown:
        import difflib

        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
        raise ConfigError(unknown[0], "unknown key(s): " + "; ".join(hints))

    hints_top = typing.get_type_hints(AppConfig)
    top: dict[str, Any] = {}
    for f in dataclasses.fields(AppConfig):
        section_type = hints_top[f.name]
        if dataclasses.is_dataclass(section_type):
            hints = typing.get_type_hints(section_type)
            kwargs = {}
            for sub in dataclasses.fields(section_type):
                key = f"{f.name}.{_key(sub.name)}"
                if key in run_config:
                    kwargs[sub.name] = _coerce(key, run_config[key], hints[sub.name])
            top[f.name] = section_type(**kwargs)
        elif _key(f.name) in run_config:
            top[f.name] = _coerce(_key(f.name), run_config[_key(f.name)], section_type)
    return AppConfig(**top)


@dataclass(frozen=True)
class NodeConfig:
    """Per-node settings: simulation gives only the partition; a SuperNode may give more.

    Attributes
    ----------
    partition_id, num_partitions
        Which slice of the private pool this node owns.
    model_name
        The node's model (``model-name`` in node config, else run-config round-robin).
    data_path
        A node-local private data file (``data-path``); empty means the partition
        of the configured dataset.
    device
        ``device`` in node config, else ``model.device``.
    client_name
        The client's name in a federation spec (``client-name``); empty without one.
    lora, data, fault
        The run config's sections with this node's own values on top (``lora-rank``,
        ``lora-alpha``, ``lora-target-modules``; ``prompt-field``, ``answer-field``,
        ``category-field`` of its data file; ``fault-mode``); None: the run config's.
    """

    partition_id: int
    num_partitions: int
    model_name: str
    data_path: str
    device: str
    client_name: str = ""
    lora: LoraConfig | None = None
    data: DataConfig | None = None
    fault: FaultConfig | None = None

    def apply(self, app: AppConfig) -> AppConfig:
        """The run config this node runs with: its own LoRA, data mapping and fault on top."""
        return dataclasses.replace(
            app,
            lora=self.lora or app.lora,
            data=self.data or app.data,
            fault=self.fault or app.fault,
        )


# Node-config keys that override one field of a run-config section, by section.
NODE_LORA_KEYS = {
    "lora-rank": "rank",
    "lora-alpha": "alpha",
    "lora-target-modules": "target_modules",
}
NODE_DATA_KEYS = {
    "prompt-field": "prompt_field",
    "answer-field": "answer_field",
    "category-field": "category_field",
}


def _node_section(node_config, keys: dict[str, str], section, key_prefix: str):
    """``section`` with the node config's values for ``keys`` on top, or None if it sets none."""
    hints = typing.get_type_hints(type(section))
    changes = {
        attr: _coerce(key, node_config[key], hints[attr])
        for key, attr in keys.items()
        if key in node_config
    }
    if not changes:
        return None
    try:
        return dataclasses.replace(section, **changes)
    except ConfigError as err:  # e.g. lora-rank=0: name the node-config key
        node_key = next(
            (k for k, a in keys.items() if f"{key_prefix}.{_key(a)}" == err.key), err.key
        )
        raise ConfigError(node_key, str(err).split(": ", 1)[1]) from err


def load_node_config(node_config: typing.Mapping[str, Any], app: AppConfig) -> NodeConfig:
    """Merge a node's config over the run config (node values win)."""
    partition_id = node_config.get("partition-id", 0)
    num_partitions = node_config.get("num-partitions", 1)
    _check(
        isinstance(partition_id, int) and isinstance(num_partitions, int),
        "partition-id",
        "node config partition-id and num-partitions must be integers",
    )
    _check(num_partitions > 0, "num-partitions", "must be a positive integer")
    _check(
        0 <= partition_id < num_partitions,
        "partition-id",
        f"must be in [0, {num_partitions}), got {partition_id}",
    )
    model_name = str(node_config.get("model-name", "") or app.model.name_for(partition_id))
    data_path = str(node_config.get("data-path", "") or "")
    if data_path:
        data_path = os.path.expanduser(data_path)
        _check(
            Path(data_path).is_file(),
            "data-path",
            f"node data file {data_path!r} does not exist; pass an existing "
            "JSON/JSONL/CSV/Parquet file with --node-config 'data-path=\"/abs/file.jsonl\"'",
        )
    device = str(node_config.get("device", "") or app.model.device)
    fault = None
    if "fault-mode" in node_config:
        mode = str(node_config["fault-mode"])
        _check_choice(mode, FAULT_MODES, "fault-mode")
        # The node's own mode applies to itself, whatever fault.clients lists.
        fault = dataclasses.replace(app.fault, mode=mode, clients=(str(partition_id),))
    return NodeConfig(
        partition_id,
        num_partitions,
        model_name,
        data_path,
        device,
        client_name=str(node_config.get("client-name", "") or ""),
        lora=_node_section(node_config, NODE_LORA_KEYS, app.lora, "lora"),
        data=_node_section(node_config, NODE_DATA_KEYS, app.data, "data"),
        fault=fault,
    )
