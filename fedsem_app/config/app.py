"""The whole run config (:class:`AppConfig`) and its reading from ``context.run_config``.

Shared by every side: the ServerApp, the ClientApp and the offline tools read the
run config once, here, into typed values.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsem_app.config.errors import DEFAULT_HOME, ConfigError, check, split_names
from fedsem_app.config.registries import CONSENSUS_RULES
from fedsem_app.config.sections import (
    AggregationConfig,
    DataConfig,
    DPConfig,
    EvalConfig,
    FaultConfig,
    FedITConfig,
    FedProxConfig,
    FedSemConfig,
    GenerationConfig,
    LoraConfig,
    ModelConfig,
    TrainConfig,
    default_rule_options,
)


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
    # this run continues; empty starts a new run. See fedsem_app.run.checkpoint.
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
    # Where each round's metrics go besides the run folder (fedsem_app.run.tracking).
    tracking: str = "none"

    def __post_init__(self) -> None:
        check(self.num_server_rounds > 0, "num-server-rounds", "must be a positive integer")
        from fedsem_app.run.tracking import TRACKERS

        TRACKERS.check(self.tracking)
        check(self.min_clients > 0, "min-clients", "must be a positive integer")
        for key, value in (
            ("fraction-train", self.fraction_train),
            ("fraction-evaluate", self.fraction_evaluate),
        ):
            check(0 < value <= 1, key, f"must be in (0, 1], got {value}")
        for key, value in (
            ("min-train-nodes", self.min_train_nodes),
            ("min-evaluate-nodes", self.min_evaluate_nodes),
        ):
            check(
                value == 0 or value >= self.min_clients,
                key,
                f"must be 0 (= min-clients) or at least min-clients={self.min_clients}, "
                f"got {value}: a round needs min-clients usable replies",
            )
        check(self.round_timeout > 0, "round-timeout", "must be positive (seconds)")
        check(
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
                    if sub.metadata.get("rule_options"):
                        flat.update(flat_rule_options(getattr(value, sub.name)))
                    else:
                        flat[f"{f.name}.{flat_key(sub.name)}"] = _to_wire(getattr(value, sub.name))
            else:
                flat[flat_key(f.name)] = _to_wire(value)
        return flat


def flat_key(name: str) -> str:
    """The run-config spelling of a dataclass field name (``local_steps`` -> ``local-steps``)."""
    return name.replace("_", "-")


def _to_wire(value: Any) -> Any:
    return ",".join(value) if isinstance(value, tuple) else value


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert a run-config value to the annotated type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin in (tuple, types.GenericAlias) or annotation == tuple[str, ...]:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a comma-separated string, got {value!r}")
        return split_names(value)
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


def rule_option_key(rule: str, option: str) -> str:
    """The run-config key of a consensus rule's option, e.g. ``fedsem.cluster-threshold``."""
    return f"fedsem.{rule}-{flat_key(option)}"


def rule_option_keys() -> dict[str, tuple[str, str]]:
    """Every consensus rule option as its run-config key -> (rule, options field)."""
    return {
        rule_option_key(name, f.name): (name, f.name)
        for name in CONSENSUS_RULES.names()
        for f in dataclasses.fields(CONSENSUS_RULES[name].options)
    }


def read_rule_options(run_config: typing.Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Every consensus rule's options object from its ``fedsem.<rule>-<option>`` keys.

    The keys come from the rule registry, so a rule declares its options once, next
    to its scoring function; missing keys take the options' defaults.
    """
    keys = rule_option_keys()
    options = []
    for rule, default in default_rule_options():
        hints = typing.get_type_hints(type(default))
        given = {
            name: coerce(key, run_config[key], hints[name])
            for key, (owner, name) in keys.items()
            if owner == rule and key in run_config
        }
        options.append((rule, dataclasses.replace(default, **given)))  # validates again
    return tuple(options)


def flat_rule_options(rule_options: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """The run-config keys of :func:`read_rule_options`' result (its inverse)."""
    return {
        rule_option_key(rule, f.name): getattr(options, f.name)
        for rule, options in rule_options
        for f in dataclasses.fields(options)
    }


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
                key = f"{f.name}.{flat_key(sub.name)}"
                if sub.metadata.get("rule_options"):
                    kwargs[sub.name] = read_rule_options(run_config)
                elif key in run_config:
                    kwargs[sub.name] = coerce(key, run_config[key], hints[sub.name])
            top[f.name] = section_type(**kwargs)
        elif flat_key(f.name) in run_config:
            top[f.name] = coerce(flat_key(f.name), run_config[flat_key(f.name)], section_type)
    return AppConfig(**top)
