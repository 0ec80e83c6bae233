"""Wire protocol: every record key and message field, defined once, and the train request.

Shared: the server writes and reads these keys, and so does every client.

A train message carries a ConfigRecord under :data:`TRAIN_CONFIG` (a
:class:`TrainRequest`) and, depending on the strategy, the round's public prompts
(:data:`PUBLIC`), last round's pseudo-labels (:data:`PSEUDO`) and/or a global
adapter (:data:`ADAPTER`). The client does what the message holds: load the
adapter if one is sent, train on the data the request names plus pseudo-labelled
pairs, answer the public prompts if any are sent, and return its adapter if the
request asks for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# --- record names in a RecordDict ----------------------------------------------
TRAIN_CONFIG = "config"  # ConfigRecord: round and switches
PUBLIC = "public"  # ConfigRecord: IDS (list[int]) and TEXTS (list[str]) to answer
PSEUDO = "pseudo"  # ConfigRecord: IDS, PROMPTS, TEXTS, FINISHED of the consensus labels
TEST = "test"  # ConfigRecord: IDS, PROMPTS, TEXTS (reference answers) to evaluate on,
# and where the data has short values: VALUES, FACTS, COVERED (see fact-accuracy)
ADAPTER = "adapter"  # ArrayRecord: LoRA adapter weights (parameter strategies)
ANSWERS = "answers"  # ConfigRecord reply: IDS, TEXTS, CONFIDENCES, FINISHED (+ RELEVANCE)
METRICS = "metrics"  # MetricRecord reply: numbers (see METRIC_* below)
INFO = "info"  # ConfigRecord reply: MODEL_NAME and other strings

# --- fields inside those records -----------------------------------------------
ROUND = "server-round"
RETURN_ADAPTER = "return-adapter"
PROXIMAL_MU = "proximal-mu"  # FedProx's term weight (Flower's FedProx uses this key too)
QUANTIZE = "quantize"  # "none", "int8", "int4": how the client sends its adapter back
QUANTIZE_SCALES = "quantize-scales"  # "tensor" or "row" (see fedsem_app.quantize)
TRAIN_DATA = "train-data"  # what private data to train on: one of TRAIN_DATA_SOURCES
TEMPLATE = "template"  # prompt template the client must use (overrides model.template)
LOCAL_STEPS = "local-steps"  # optimizer steps this round (overrides train.local-steps)
# TRAIN_DATA values: the node's own data (its file or partition), or the union of
# every client's partition (the centralised upper bound, ``pooled``).
OWN_DATA = "own"
ALL_PARTITIONS = "all-partitions"
TRAIN_DATA_SOURCES = (OWN_DATA, ALL_PARTITIONS)
IDS = "ids"
PROMPTS = "prompts"
TEXTS = "texts"
CONFIDENCES = "confidences"
FINISHED = "finished"  # list[bool]: the answer ended with EOS, not at the length cap
VALUES = "values"  # TEST field, list[str]: the short value a right answer contains
FACTS = "facts"  # TEST field, list[str]: each prompt's fact id ("" if none)
COVERED = "covered"  # TEST field, list[bool]: a public prompt asks the same fact
# list[float], optional: how relevant each public prompt is to the client's private data
# (fedsem.relevance; sent only when an estimator is set, NaN = no score).
RELEVANCE = "relevance"
MODEL_NAME = "model-name"
CLIENT_NAME = "client-name"  # INFO field: the client's name in a federation spec ("" without)
# INFO fields with fedsem.diagnostics (benchmarks): the categories of the node's private
# data and how many examples it holds of each (parallel lists).
CATEGORIES = "categories"
CATEGORY_COUNTS = "category-counts"
NODE_ERROR = "error"

# --- metric names (MetricRecord keys) ------------------------------------------
NUM_EXAMPLES = "num-examples"  # FedAvg's weighting key
TRAIN_LOSS = "train-loss"
TRAIN_SECONDS = "train-seconds"
GENERATE_SECONDS = "generate-seconds"
ROUGE_L = "rouge-l"
EMBED_SIM = "embed-sim"
NLL = "nll"
PERPLEXITY = "perplexity"
EVAL_SECONDS = "eval-seconds"
# Share of generated test answers that contain the right value (test rows with a
# value only), overall and on the facts a public prompt covers / does not cover,
# and on the facts in the client's own private data / only in others'.
FACT_ACCURACY = "fact-accuracy"
FACT_SUBSETS = ("covered", "uncovered", "own", "other")  # -> fact-accuracy-<subset>
# Per-prompt evaluation scores (lists, prompt order), for intervals over prompts.
PER_PROMPT = {
    ROUGE_L: "rouge-l-per-prompt",
    EMBED_SIM: "embed-sim-per-prompt",
    FACT_ACCURACY: "fact-accuracy-per-prompt",
}
NLL_SUMS = "nll-sum-per-prompt"  # summed token NLL of each reference answer
NLL_TOKENS = "nll-tokens-per-prompt"  # its token count (NLL is a ratio of the two sums)
CPU_SECONDS = "cpu-seconds"  # process CPU time of the handler (fedsem_app.clients.energy)
GPU_JOULES = "gpu-joules"  # NVML energy of the handler; sent only where measured

# --- message types --------------------------------------------------------------
TRAIN = "train"
EVALUATE = "evaluate"

# --- run bookkeeping the server adds to every train/evaluate config (fedsem_app.final)
RUN_FOLDER = "run-folder"  # the server's absolute run folder: names the run across resumes
RUN_TOKEN = "run-token"  # the run folder's own id: a reused folder path is another run
NUM_ROUNDS = "num-server-rounds"  # the run's total, so a client knows its last round
CLIENT_EXPORT = "export-client-adapters"  # true: clients save their own final adapter
FINAL_ADAPTER = "final-adapter"  # INFO field of a reply: where the client saved it


@dataclasses.dataclass(frozen=True)
class TrainRequest:
    """What a strategy asks of a client in the config of a train message.

    Strategies fill it, :meth:`to_config` puts it on the wire, and the client reads
    it once with :meth:`from_config` (as :class:`~fedsem_app.config.app.AppConfig`
    reads the run config). A field left ``None`` is not sent, and the client uses
    its run config's value: a strategy states only what it changes. Evaluate
    messages carry the part that applies to them (``template``).

    Attributes
    ----------
    server_round
        The round (Flower's FedAvg sets it as ``server-round`` too).
    train_data
        :data:`OWN_DATA` (default) or :data:`ALL_PARTITIONS`.
    local_steps
        Optimizer steps this round (``train.local-steps`` if None).
    template
        Prompt template to build prompts with (``model.template`` if None).
    proximal_mu
        FedProx's proximal term weight (0 if None).
    return_adapter
        Whether to send the trained adapter back.
    quantize, quantize_scales
        How to encode the returned adapter (:mod:`fedsem_app.quantize`; float32
        and ``row`` if None).
    """

    server_round: int | None = None
    train_data: str | None = None
    local_steps: int | None = None
    template: str | None = None
    proximal_mu: float | None = None
    return_adapter: bool | None = None
    quantize: str | None = None
    quantize_scales: str | None = None

    def to_config(self) -> dict[str, Any]:
        """The set fields under their wire keys, to put into the train ConfigRecord."""
        return {
            _REQUEST_KEYS[f.name]: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainRequest:
        """Read the request from a train or evaluate ConfigRecord (other keys ignored).

        Raises
        ------
        ValueError
            If ``train-data`` names no known source.
        """
        values = {name: config[key] for name, key in _REQUEST_KEYS.items() if key in config}
        request = cls(**values)
        if request.train_data not in (None, *TRAIN_DATA_SOURCES):
            raise ValueError(
                f"train request asks for {TRAIN_DATA}={request.train_data!r}; "
                f"known: {', '.join(TRAIN_DATA_SOURCES)}"
            )
        return request


# TrainRequest field -> wire key (proximal-mu is the key Flower's own FedProx sends).
_REQUEST_KEYS = {
    "server_round": ROUND,
    "train_data": TRAIN_DATA,
    "local_steps": LOCAL_STEPS,
    "template": TEMPLATE,
    "proximal_mu": PROXIMAL_MU,
    "return_adapter": RETURN_ADAPTER,
    "quantize": QUANTIZE,
    "quantize_scales": QUANTIZE_SCALES,
}
