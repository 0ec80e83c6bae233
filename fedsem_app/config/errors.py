"""How a wrong config value fails: :class:`ConfigError` and the checks that raise it.

Shared by every side (server, client, offline tools).
"""

from __future__ import annotations

import typing
from pathlib import Path

DEFAULT_HOME = Path.home() / ".fedsem"


class ConfigError(ValueError):
    """A run-config or node-config value is wrong; the message says how to fix it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key '{key}': {message}")
        self.key = key


def split_names(value: str) -> tuple[str, ...]:
    """The non-empty, stripped names of a comma-separated string."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def check(cond: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigError` for ``key`` with ``message`` unless ``cond`` holds."""
    if not cond:
        raise ConfigError(key, message)


def check_choice(value: str, choices: typing.Iterable[str], key: str) -> None:
    """Raise :class:`ConfigError` for ``key`` unless ``value`` is in ``choices`` (listed)."""
    choices = sorted(choices)
    check(value in choices, key, f"got {value!r}; allowed values: {', '.join(choices)}")
