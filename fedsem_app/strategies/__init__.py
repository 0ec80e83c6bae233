"""Strategies, one per file, registered by lowercase name.

Runs on the server.

``strategy = "<name>"`` in the run config picks one; see :data:`STRATEGIES`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fedsem_app.config.errors import ConfigError

if TYPE_CHECKING:
    from fedsem_app.strategies.harness import AppStrategy

STRATEGIES: dict[str, type[AppStrategy]] = {}

# Modules that register strategies; imported lazily so that importing the
# registry has no side effects beyond filling this dict.
_MODULES = ("fedsem", "fedavg_lora", "fedit", "fedprox_lora", "local", "pooled")


def register_strategy(name: str):
    """Class decorator: make a strategy available as ``strategy = name``."""

    def wrap(cls):
        if name in STRATEGIES and STRATEGIES[name] is not cls:
            raise ValueError(f"strategy {name!r} is already registered")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return wrap


def strategy_names() -> list[str]:
    """Names of all registered strategies, sorted."""
    for module in _MODULES:
        importlib.import_module(f"fedsem_app.strategies.{module}")
    return sorted(STRATEGIES)


def get_strategy_class(name: str) -> type[AppStrategy]:
    """The strategy class for a name, or a ConfigError listing the choices."""
    if name not in strategy_names():
        raise ConfigError(
            "strategy", f"got {name!r}; allowed values: {', '.join(sorted(STRATEGIES))}"
        )
    return STRATEGIES[name]


def shared_model_problem(strategy: str, names: tuple[str, ...] | list[str]) -> str:
    """Why ``strategy`` cannot run clients of these models, or "" if it can.

    Strategies that average adapters (``needs_shared_model``) need one base model;
    the message is the same whether the models come from ``model.names`` or from a
    federation spec.
    """
    models = sorted(set(names))
    if not get_strategy_class(strategy).needs_shared_model or len(models) <= 1:
        return ""
    return (
        f"strategy {strategy!r} needs every client on one shared base model, but "
        f"model.names mixes {len(models)} models: {', '.join(models)}. Run mixed models "
        "with strategy='fedsem' (it exchanges answers, not weights), or pick one model, "
        f"e.g. --run-config \"strategy='{strategy}' model.names='{names[0]}'\""
    )
