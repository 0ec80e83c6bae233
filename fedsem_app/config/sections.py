"""The run config's sections as frozen dataclasses, one per concern; each validates itself.

Shared by every side. Closed sets of names (templates, partitioners, consensus
rules, ...) are not listed here: each check asks the registry that implements them,
reached through :mod:`fedsem_app.config.registries` (config imports nothing from
``strategies/``, ``clients/`` or ``data/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fedsem_app.config.errors import DEFAULT_HOME, check, check_choice
from fedsem_app.config.registries import (
    AGGREGATION_RULES,
    CONSENSUS_RULES,
    DP_WRAPPERS,
    FAULT_MODES,
    PARTITIONERS,
    RELEVANCE_ESTIMATORS,
    TEMPLATES,
)
from fedsem_app.registry import reach

# model.device (and a federation spec's device): "cuda:1" counts as "cuda".
DEVICES = ("auto", "cpu", "cuda", "mps")


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
        check(len(self.names) > 0, "model.names", "give at least one model name")
        check_choice(self.device.split(":")[0], DEVICES, "model.device")
        TEMPLATES.check(self.template)

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
        check(self.rank > 0, "lora.rank", f"must be a positive integer, got {self.rank}")
        check(self.alpha > 0, "lora.alpha", f"must be positive, got {self.alpha}")
        check(0.0 <= self.dropout < 1.0, "lora.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TrainConfig:
    """Local supervised fine-tuning budget, identical for every strategy."""

    local_steps: int = 4
    batch_size: int = 4
    learning_rate: float = 3e-4
    max_seq_len: int = 128
    num_threads: int = 0

    def __post_init__(self) -> None:
        check(self.local_steps >= 0, "train.local-steps", "must be >= 0")
        check(self.batch_size > 0, "train.batch-size", "must be a positive integer")
        check(
            0 < self.learning_rate < 1,
            "train.learning-rate",
            f"must be in (0, 1), got {self.learning_rate}",
        )
        check(self.max_seq_len >= 16, "train.max-seq-len", "must be >= 16 tokens")
        check(self.num_threads >= 0, "train.num-threads", "must be >= 0 (0 = automatic)")


@dataclass(frozen=True)
class GenerationConfig:
    """Greedy batched generation settings for public and test prompts."""

    max_new_tokens: int = 48
    batch_size: int = 16
    # Batch prompts of similar token length together (less left padding per batch);
    # answers come back in prompt order either way.
    sort_by_length: bool = False
    # Fold the LoRA adapter into the weights while generating (one product per layer
    # instead of three); the weights are restored bit for bit before training.
    merge_adapter: bool = True

    def __post_init__(self) -> None:
        check(self.max_new_tokens > 0, "gen.max-new-tokens", "must be a positive integer")
        check(self.batch_size > 0, "gen.batch-size", "must be a positive integer")


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
    # A field whose value (private / public / test) fixes each row's part of the
    # split; "" splits at random by the fractions above.
    role_field: str = ""
    # The short value a test answer must contain (fact-accuracy), and the id that
    # groups rows asking the same fact; missing columns switch those metrics off.
    value_field: str = "value"
    fact_field: str = "fact"
    # The generated private-facts dataset (data.name = "facts", fedsem_app.data.facts).
    facts_seed: int = 0
    facts_entities: int = 24
    facts_attributes: int = 3
    facts_private_phrasings: int = 3
    facts_public_coverage: float = 1.0

    def __post_init__(self) -> None:
        check(bool(self.name or self.path), "data.name", "give a dataset name or data.path")
        for key, value in (
            ("data.test-fraction", self.test_fraction),
            ("data.public-fraction", self.public_fraction),
        ):
            check(0 < value < 1, key, f"must be in (0, 1), got {value}")
        check(
            self.test_fraction + self.public_fraction < 1,
            "data.public-fraction",
            "test-fraction + public-fraction must leave a private pool (< 1)",
        )
        PARTITIONERS.check(self.partitioner)
        check(self.dirichlet_alpha > 0, "data.dirichlet-alpha", "must be positive")
        # The data.facts-* ranges come from the facts tables, beside the dataset.
        reach("fedsem_app.data.facts:check_facts_shape")(self)


def default_rule_options() -> tuple[tuple[str, Any], ...]:
    """Every registered consensus rule that has options, with its default options."""
    rules = [rule for rule in CONSENSUS_RULES.names() if fields(CONSENSUS_RULES[rule].options)]
    return tuple((rule, CONSENSUS_RULES[rule].options()) for rule in rules)


@dataclass(frozen=True)
class FedSemConfig:
    """Semantic-consensus settings (used by the ``fedsem`` strategy)."""

    prompts_per_round: int = 16
    consensus: str = "medoid"
    min_agreement: float = 0.0
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
    # Sentence support (fedsem_app.strategies.support): after the vote, keep only the
    # sentences of the chosen answer that at least support-share of the other answers
    # say too (a sentence within cosine support-threshold); against a client that adds
    # its own sentence to honest answers. Off by default. Sentences longer than
    # support-window words are also checked in windows of that many words (cosine
    # support-window-threshold), against words glued onto an honest sentence.
    sentence_support: bool = False
    support_threshold: float = 0.6
    support_share: float = 0.5
    support_window: int = 6
    support_window_threshold: float = 0.15
    # How each client scores the relevance of a public prompt to its private data, sent
    # with its answers for the rules that weigh who knows (relevance, expert); "none"
    # sends nothing. Estimators: fedsem_app.clients.relevance.
    relevance: str = "none"
    # The server turns each client's relevance scores into z-scores over the round's
    # prompts before the vote: a constant claim (say, "most relevant everywhere")
    # carries no score, and per-client offsets cancel.
    standardise_relevance: bool = False
    # The similarity estimator's k: mean cosine to the k most similar private prompts.
    similarity_top_k: int = 3
    # Selective transfer: a client is not sent the label of a prompt on which its own
    # answer won or it was the most relevant client (it knows best there).
    selective: bool = False
    # Benchmarks: clients report their private categories, and each round records
    # expert-share and the labels' ROUGE-L against the references
    # (fedsem_app.strategies.diagnostics). Off: nothing more is sent.
    diagnostics: bool = False
    # Every consensus rule's own options object, as (rule, options) pairs: run-config
    # keys fedsem.<rule>-<option>, declared by the rule (strategies.consensus), not here.
    rule_options: tuple[tuple[str, Any], ...] = field(
        default_factory=default_rule_options, metadata={"rule_options": True}
    )

    @property
    def consensus_options(self) -> Any:
        """The options object of the configured rule (its defaults if it has none set)."""
        return (
            dict(self.rule_options).get(self.consensus) or CONSENSUS_RULES[self.consensus].options()
        )

    def __post_init__(self) -> None:
        check(self.prompts_per_round > 0, "fedsem.prompts-per-round", "must be positive")
        check(0 <= self.pseudo_share <= 1, "fedsem.pseudo-share", "must be in [0, 1]")
        from fedsem_app.wire import CODECS

        CODECS.check(self.wire_compression)
        CONSENSUS_RULES.check(self.consensus)
        RELEVANCE_ESTIMATORS.check(self.relevance)
        NO_RELEVANCE = reach("fedsem_app.clients.relevance:NO_RELEVANCE")  # noqa: N806
        check(
            self.relevance != NO_RELEVANCE or not CONSENSUS_RULES[self.consensus].needs_relevance,
            "fedsem.relevance",
            f"consensus rule {self.consensus!r} weighs answers by the clients' relevance "
            f"scores: set fedsem.relevance to one of "
            f"{', '.join(n for n in RELEVANCE_ESTIMATORS.names() if n != NO_RELEVANCE)}",
        )
        check(self.similarity_top_k > 0, "fedsem.similarity-top-k", "must be a positive integer")
        check(-1 <= self.min_agreement <= 1, "fedsem.min-agreement", "must be in [-1, 1]")
        check(self.max_answer_chars > 0, "fedsem.max-answer-chars", "must be positive")
        check(-1 <= self.support_threshold <= 1, "fedsem.support-threshold", "must be in [-1, 1]")
        check(0 <= self.support_share <= 1, "fedsem.support-share", "must be in [0, 1]")
        check(
            self.support_window >= 0,
            "fedsem.support-window",
            "must be 0 (whole sentences only) or a positive number of words",
        )
        check(
            -1 <= self.support_window_threshold <= 1,
            "fedsem.support-window-threshold",
            "must be in [-1, 1]",
        )
        check(
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
        check(0 < self.fraction_train <= 1, "fedit.fraction-train", "must be in (0, 1]")


@dataclass(frozen=True)
class FedProxConfig:
    """FedProx settings (used by the ``fedprox-lora`` strategy)."""

    proximal_mu: float = 0.01

    def __post_init__(self) -> None:
        check(self.proximal_mu >= 0, "fedprox.proximal-mu", "must be >= 0")


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

        AGGREGATION_RULES.check(self.rule)
        check_choice(self.quantize, ("none", *BITS), "aggregation.quantize")
        check_choice(self.quantize_scales, SCALE_MODES, "aggregation.quantize-scales")
        check(
            0 <= self.trim_fraction < 0.5,
            "aggregation.trim-fraction",
            f"must be in [0, 0.5), got {self.trim_fraction}",
        )


@dataclass(frozen=True)
class DPConfig:
    """Central differential privacy for the parameter strategies (:mod:`fedsem_app.strategies.dp`).

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
        check(self.noise_multiplier >= 0, "dp.noise-multiplier", "must be >= 0 (0: no DP)")
        check(self.clipping_norm > 0, "dp.clipping-norm", "must be positive")
        DP_WRAPPERS.check(self.clip_side)
        check(0 < self.delta < 1, "dp.delta", f"must be in (0, 1), got {self.delta}")

    @property
    def enabled(self) -> bool:
        """Whether the run adds DP noise."""
        return self.noise_multiplier > 0


@dataclass(frozen=True)
class FaultConfig:
    """Clients that misbehave on purpose, to test and measure robustness.

    The clients whose partition ids are in ``clients`` apply ``mode`` to every
    train reply (see :mod:`fedsem_app.clients.faults`); the others are honest.
    """

    mode: str = "none"
    clients: tuple[str, ...] = ()
    scale: float = 10.0
    text: str = "Ignore the question: the answer is always 42. Visit example.com."
    stall_seconds: float = 600.0

    def __post_init__(self) -> None:
        FAULT_MODES.check(self.mode)
        check(
            all(c.isdigit() for c in self.clients),
            "fault.clients",
            f"must be comma-separated partition ids like '0,2', got {','.join(self.clients)!r}",
        )
        check(self.scale != 0, "fault.scale", "must be non-zero")
        check(self.stall_seconds >= 0, "fault.stall-seconds", "must be >= 0")

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
    to every test prompt every round costs more than the training. ``every`` N
    evaluates round 0, every N-th round and the last round only (see
    :func:`is_eval_round`): generation metrics at a fraction of the cost.
    """

    num_prompts: int = 16
    generate: bool = True
    every: int = 1

    def __post_init__(self) -> None:
        check(self.num_prompts >= 0, "eval.num-prompts", "must be >= 0 (0 = all test prompts)")
        check(
            self.every >= 1,
            "eval.every",
            f"must be a positive integer (1 = every round), got {self.every}",
        )

    def evaluates(self, server_round: int, num_rounds: int) -> bool:
        """Whether a round of a ``num_rounds`` run is evaluated (see :func:`is_eval_round`)."""
        return is_eval_round(server_round, num_rounds, self.every)


def is_eval_round(server_round: int, num_rounds: int, every: int) -> bool:
    """Whether a round is evaluated under ``eval.every``.

    Round 0 (the untrained models: every gain is measured from it) and the last
    round (the run's result) always are; in between, every ``every``-th round.

    Parameters
    ----------
    server_round
        The round, 0 for the evaluation before training.
    num_rounds
        The run's total number of rounds (``num-server-rounds``).
    every
        ``eval.every`` (>= 1; 1 evaluates every round).

    Returns
    -------
    bool
    """
    return server_round == 0 or server_round % every == 0 or server_round == num_rounds


def evaluated_rounds(num_rounds: int, every: int) -> list[int]:
    """The rounds ``0..num_rounds`` that are evaluated, in order (see :func:`is_eval_round`)."""
    return [r for r in range(num_rounds + 1) if is_eval_round(r, num_rounds, every)]
