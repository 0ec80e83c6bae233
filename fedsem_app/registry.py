"""One registry helper for every closed set of names in the app.

Shared by every side. A :class:`Registry` maps a name (``"fedsem"``, ``"medoid"``,
``"dirichlet"``, ``"chat"``, ...) to what implements it: a strategy class, a
consensus rule, a partitioner factory, a prompt template, a fault mode. Each
implementation registers itself where it is defined::

    RULES = Registry("consensus rule", key="fedsem.consensus")

    @RULES.register("medoid")
    def medoid(inputs): ...

and config validation asks the registry (``RULES.check(value)``), so every set of
names is declared once, next to its implementations, and the error for a wrong
value lists what is allowed.

A registry whose entries live in other modules names them in ``modules``; they are
imported on the first lookup (no import-time side effects elsewhere).

The typed config checks names through a :class:`RegistryRef` (where a registry
lives, as a string) rather than importing the registry: the modules that implement
the names read the typed config, so config importing them would close a circle.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Generic, TypeVar

from fedsem_app.config.errors import ConfigError

T = TypeVar("T")
_DECORATE = object()  # register(name) without a value: return a decorator


class Registry(MutableMapping[str, T], Generic[T]):
    """Names mapped to implementations, filled by :meth:`register`.

    It is a mapping (``name in registry``, ``registry[name]``, ``sorted(registry)``),
    so code that looks names up reads as with a dict.

    Parameters
    ----------
    kind
        What the entries are, for messages (``"consensus rule"``).
    key
        The run-config key whose values are these names (``"fedsem.consensus"``),
        named by :meth:`check` and :meth:`lookup` when a value is wrong.
    modules
        Modules that register entries when imported; imported on the first lookup.
    """

    def __init__(self, kind: str, key: str = "", modules: Sequence[str] = ()) -> None:
        self.kind = kind
        self.key = key
        self._modules = tuple(modules)
        self._loaded = not self._modules
        self._entries: dict[str, T] = {}

    def register(self, name: str, value: T = _DECORATE) -> Callable[[T], T] | T:
        """Add ``value`` under ``name``; without ``value``, a decorator that adds its target.

        Raises
        ------
        ValueError
            If another value is already registered under ``name`` (registering the
            same one again, e.g. on a module reload, is allowed).
        """

        def add(entry: T) -> T:
            if name in self._entries and self._entries[name] is not entry:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return add if value is _DECORATE else add(value)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self)

    def check(self, name: str, key: str = "") -> None:
        """Raise :class:`ConfigError` for ``key`` unless ``name`` is registered.

        The message lists the allowed values, as every config check does.
        """
        if name not in self:
            raise ConfigError(
                key or self.key, f"got {name!r}; allowed values: {', '.join(self.names())}"
            )

    def lookup(self, name: str, key: str = "") -> T:
        """The entry of ``name``, or a :class:`ConfigError` listing the allowed values."""
        self.check(name, key)
        return self[name]

    def _load(self) -> None:
        # Set first: a registering module may itself look names up while it loads.
        if not self._loaded:
            self._loaded = True
            for module in self._modules:
                importlib.import_module(module)

    def __getitem__(self, name: str) -> T:
        self._load()
        return self._entries[name]

    def __setitem__(self, name: str, value: T) -> None:
        # Plain assignment replaces an entry (tests swap one in with monkeypatch.setitem).
        self._entries[name] = value

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(self._entries)

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


def reach(location: str):
    """The object at ``"package.module:NAME"``, its module imported now if it was not yet.

    How the typed config reaches what lives beside the implementations (which import
    the config): at the first call, when the config itself has loaded.
    """
    module, _, attribute = location.partition(":")
    return getattr(importlib.import_module(module), attribute)


class RegistryRef:
    """A registry named by where it lives, ``"package.module:NAME"``, imported on first use.

    The typed config (``fedsem_app.config``) checks its closed sets of names through
    these. Each registry lives beside what it registers, and those modules import the
    config; a reference reaches the registry only when a name is checked, so config
    imports nothing from ``strategies/``, ``clients/`` or ``data/`` and the check is
    the registry's own (same message, same allowed values).

    Parameters
    ----------
    location
        ``"fedsem_app.strategies.consensus:CONSENSUS_RULES"``: the module and the
        module-level name of a :class:`Registry`.
    """

    def __init__(self, location: str) -> None:
        self.module, _, self.attribute = location.partition(":")
        self.location = location

    @property
    def registry(self) -> Registry:
        """The registry itself (its module is imported now, if it was not yet)."""
        return reach(self.location)

    def check(self, name: str, key: str = "") -> None:
        """:meth:`Registry.check` of the referenced registry."""
        self.registry.check(name, key)

    def names(self) -> list[str]:
        """The referenced registry's names, sorted."""
        return self.registry.names()

    def __getitem__(self, name: str):
        return self.registry[name]

    def __repr__(self) -> str:
        return f"RegistryRef({self.location!r})"
