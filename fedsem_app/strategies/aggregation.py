"""How the parameter strategies combine adapters: the ``aggregation.rule`` values.

Runs on the server. Each rule is one of Flower's own strategies, whose
``aggregate_train`` combines the vetted replies: ``mean`` is
:class:`~flwr.serverapp.strategy.FedAvg` (weighted by example count), ``median``
:class:`~flwr.serverapp.strategy.FedMedian` and ``trimmed-mean``
:class:`~flwr.serverapp.strategy.FedTrimmedAvg` (per coordinate, unweighted: a
client cannot buy influence by claiming many examples).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg

from fedsem_app import protocol as p
from fedsem_app.config.sections import AggregationConfig
from fedsem_app.quantize import adapter_record, decode_record
from fedsem_app.registry import Registry

# A rule: (its config, the Flower strategy's arguments) -> the Flower strategy.
AggregationRule = Callable[..., FedAvg]
AGGREGATION_RULES: Registry[AggregationRule] = Registry("aggregation rule", key="aggregation.rule")
AGGREGATION_RULES.register("mean", lambda cfg, **arguments: FedAvg(**arguments))
AGGREGATION_RULES.register("median", lambda cfg, **arguments: FedMedian(**arguments))
AGGREGATION_RULES.register(
    "trimmed-mean", lambda cfg, **arguments: FedTrimmedAvg(beta=cfg.trim_fraction, **arguments)
)


def aggregator(cfg: AggregationConfig, **arguments: Any) -> FedAvg:
    """The Flower strategy that combines adapters by ``cfg.rule``."""
    return AGGREGATION_RULES[cfg.rule](cfg, **arguments)


def combine_adapters(
    adapters: Sequence[Mapping[str, np.ndarray]],
    cfg: AggregationConfig,
    num_examples: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Combine plain adapters with the rule's Flower strategy, as a round would.

    For offline use (benchmarks, tests): each adapter becomes a train reply with
    its example count (1 each by default) and Flower's ``aggregate_train`` combines them.
    """
    counts = num_examples or [1] * len(adapters)
    replies = [
        Message(
            RecordDict(
                {
                    p.ADAPTER: adapter_record(adapter),
                    p.METRICS: MetricRecord({p.NUM_EXAMPLES: int(count)}),
                }
            ),
            # Replies as the server receives them (offline: no run, no SuperLink).
            metadata=Metadata(0, "", node, 0, "", "", 0.0, 0.0, MessageType.TRAIN),
        )
        for node, (adapter, count) in enumerate(zip(adapters, counts, strict=True))
    ]
    strategy = aggregator(cfg, weighted_by_key=p.NUM_EXAMPLES, arrayrecord_key=p.ADAPTER)
    arrays, _ = strategy.aggregate_train(0, replies)
    return decode_record(arrays)
