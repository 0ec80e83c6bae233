"""How the parameter strategies combine adapters: the ``aggregation.rule`` values.

Runs on the server. ``mean`` is FedAvg's mean weighted by example count (Flower's
own :class:`~flwr.serverapp.strategy.FedAvg` computes it); the robust rules work
per coordinate over the K stacked tensors, unweighted, as Flower's FedMedian and
FedTrimmedAvg compute them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from fedsem_app.config.sections import AggregationConfig
from fedsem_app.registry import Registry

# A robust rule: (K, ...) stacked tensors -> (...); None for "mean" (FedAvg's own).
RobustRule = Callable[[np.ndarray, AggregationConfig], np.ndarray]
AGGREGATION_RULES: Registry[RobustRule | None] = Registry(
    "aggregation rule", key="aggregation.rule"
)
AGGREGATION_RULES.register("mean", None)
AGGREGATION_RULES.register("median", lambda stack, cfg: np.median(stack, axis=0))
AGGREGATION_RULES.register("trimmed-mean", lambda stack, cfg: trim_mean(stack, cfg.trim_fraction))


def robust_combine(
    adapters: Sequence[Mapping[str, np.ndarray]], cfg: AggregationConfig
) -> dict[str, np.ndarray]:
    """Combine adapters tensor by tensor with the robust rule ``cfg.rule``.

    Unweighted, as Flower's FedMedian and FedTrimmedAvg: a client cannot buy
    influence by claiming many examples. Each result keeps its inputs' dtype.
    """
    rule = AGGREGATION_RULES[cfg.rule]
    return {
        key: np.asarray(rule(np.stack([a[key] for a in adapters]), cfg), dtype=first.dtype)
        for key, first in adapters[0].items()
    }
