"""Files and values shared by every side: atomic writes, JSON and TOML values, finite checks.

Used by the server's bookkeeping (run folder, checkpoints), the ClientApp (its adapter
on disk) and the offline tools (``fedsem-compare``), so that each is written once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes) -> None:
    """Write bytes to ``path`` atomically and durably: temp file, fsync, rename.

    A crash leaves either the old file or the new one, never half of one.
    """
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def jsonable(value: Any) -> Any:
    """``json.dumps`` fallback: arrays and numpy scalars as lists/numbers, the rest as text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def write_json(path: Path, data: Any) -> None:
    """Write indented JSON atomically (see :func:`atomic_write`)."""
    atomic_write(path, (json.dumps(data, indent=2, default=jsonable) + "\n").encode())


def is_finite(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def toml_value(value: Any) -> str:
    """A scalar as a TOML value (run configs hold no lists or tables).

    Raises
    ------
    TypeError
        For lists, tables and other non-scalars.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise TypeError(f"run-config values must be scalars, got {value!r}")
