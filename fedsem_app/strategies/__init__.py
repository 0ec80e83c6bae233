"""Strategies, one per file, registered by lowercase name.

Runs on the server.

``strategy = "<name>"`` in the run config picks one; see :data:`STRATEGIES`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsem_app.registry import Registry

if TYPE_CHECKING:
    from fedsem_app.strategies.harness import AppStrategy

# Modules that register strategies; imported on the first lookup, so that importing
# this package has no side effects.
_MODULES = ("fedsem", "fedavg_lora", "fedit", "fedprox_lora", "local", "pooled")
STRATEGIES: Registry[type[AppStrategy]] = Registry(
    "strategy", key="strategy", modules=[f"fedsem_app.strategies.{m}" for m in _MODULES]
)


def register_strategy(name: str):
    """Class decorator: make a strategy available as ``strategy = name``.

    The registered name is also the class's :attr:`name` (set here, once).
    """

    def wrap(cls):
        cls.name = name
        return STRATEGIES.register(name, cls)

    return wrap


def strategy_names() -> list[str]:
    """Names of all registered strategies, sorted."""
    return STRATEGIES.names()


def get_strategy_class(name: str) -> type[AppStrategy]:
    """The strategy class for a name, or a ConfigError listing the choices."""
    return STRATEGIES.lookup(name)


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
