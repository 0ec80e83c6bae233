"""Strategies, one per file, registered by lowercase name.

``strategy = "<name>"`` in the run config picks one; see :data:`STRATEGIES`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fedsem_app.config import ConfigError

if TYPE_CHECKING:
    from fedsem_app.strategies.base import AppStrategy

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
