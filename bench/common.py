"""Shared helpers of the benchmark scripts: output folder, tables, memory sampling."""

from __future__ import annotations

import csv
import json
import os
import platform
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from fedsem_app.run.meter import human_bytes  # noqa: F401 - the bench scripts take it from here

ROOT = Path(__file__).resolve().parents[1]


def output_folder(name: str, out: str | None) -> Path:
    """The folder results go to: ``out`` or ``/tmp/fedsem-bench/<name>-<date-time>``."""
    folder = (
        Path(out) if out else Path("/tmp/fedsem-bench") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpus": os.cpu_count(),
        "memory-gib": round(memory, 1),
        "cuda": torch.cuda.is_available(),
        "torch-threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.now().isoformat(timespec="seconds"),
    }


def write_results(
    folder: Path, name: str, rows: Sequence[Mapping[str, Any]], meta: Mapping
) -> None:
    """Write ``<name>.json`` (rows plus metadata) and ``<name>.csv`` (rows) into ``folder``."""
    (folder / f"{name}.json").write_text(
        json.dumps({"meta": dict(meta), "rows": list(rows)}, indent=2, default=str) + "\n"
    )
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(folder / f"{name}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table; ``columns`` are ``(key, header, format)`` with a format spec or ''."""
    lines = [
        "| " + " | ".join(h for _, h, _ in columns) + " |",
        "|" + "|".join("---" if not f else "---:" for _, _, f in columns) + "|",
    ]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key, "")
            cells.append(
                format(value, fmt) if fmt and isinstance(value, (int, float)) else str(value)
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class PeakRSS:
    """Sample this process' RSS every ``interval`` seconds in a thread; keep the peak.

    ``with PeakRSS() as peak: ...`` then ``peak.above_start`` is the peak RSS minus
    the RSS at entry. Sampling can miss a spike shorter than the interval.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def above_start(self) -> int:
        """Peak RSS minus RSS at entry, in bytes."""
        return self.peak - self.start


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file ([] if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
