"""Shared harness of the benchmark scripts: arguments, output folder, tables, memory sampling.

A script with an output folder reads, in outline::

    parser = bench_parser(__doc__, "my-bench", seed=42)  # --out, --seed
    parser.add_argument(...)                               # its own arguments
    args = parser.parse_args(argv)
    ...
    folder = output_folder("my-bench", args.out)
    finish(folder, "my_bench", rows, meta, COLUMNS)        # JSON, CSV, printed table
"""

from __future__ import annotations

import argparse
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


def bench_parser(
    doc: str | None, out_name: str | None = None, *, seed: int | None = None
) -> argparse.ArgumentParser:
    """The argument parser of a bench script, with the arguments the scripts share.

    Parameters
    ----------
    doc : str or None
        The script's docstring; its first line is the description ``--help`` shows.
    out_name : str, optional
        When given, ``--out``: the output folder, by default
        ``/tmp/fedsem-bench/<out_name>-<date-time>`` (see :func:`output_folder`).
    seed : int, optional
        When given, ``--seed`` with this default.

    Returns
    -------
    argparse.ArgumentParser
        The parser; the script adds its own arguments.
    """
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    if seed is not None:
        parser.add_argument("--seed", type=int, default=seed)
    if out_name is not None:
        parser.add_argument(
            "--out", help=f"output folder (default /tmp/fedsem-bench/{out_name}-<date-time>)"
        )
    return parser


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


Columns = Sequence[tuple[str, str, str]]


def markdown_header(columns: Columns) -> str:
    """The header and alignment lines of a Markdown table (see :func:`markdown`)."""
    return "\n".join(
        [
            "| " + " | ".join(h for _, h, _ in columns) + " |",
            "|" + "|".join("---" if not f else "---:" for _, _, f in columns) + "|",
        ]
    )


def markdown_row(row: Mapping[str, Any], columns: Columns) -> str:
    """One line of a Markdown table (see :func:`markdown`); a missing key is an empty cell."""
    cells = []
    for key, _, fmt in columns:
        value = row.get(key, "")
        cells.append(format(value, fmt) if fmt and isinstance(value, (int, float)) else str(value))
    return "| " + " | ".join(cells) + " |"


def markdown(rows: Sequence[Mapping[str, Any]], columns: Columns) -> str:
    """A Markdown table; ``columns`` are ``(key, header, format)``.

    The format is a format spec applied to numbers (other values print as they are),
    and right-aligns the column; ``''`` leaves the column left-aligned and ``'>'``
    right-aligns it without formatting.
    """
    return "\n".join([markdown_header(columns), *(markdown_row(row, columns) for row in rows)])


def finish(
    folder: Path,
    name: str,
    rows: Sequence[Mapping[str, Any]],
    meta: Mapping,
    columns: Columns,
    *,
    markdown_file: bool = False,
) -> str:
    """Write a benchmark's results and print its table.

    Parameters
    ----------
    folder : Path
        The output folder (:func:`output_folder`).
    name : str
        File stem: ``<name>.json`` (rows and ``meta``) and ``<name>.csv`` (rows),
        and ``<name>.md`` (the table) when ``markdown_file``.
    rows, meta
        The measured rows and what they were measured on.
    columns
        The printed table's columns (see :func:`markdown`).
    markdown_file : bool
        Also write the table to ``<name>.md``.

    Returns
    -------
    str
        The Markdown table, as printed.
    """
    write_results(folder, name, rows, meta)
    table = markdown(rows, columns)
    if markdown_file:
        (folder / f"{name}.md").write_text(table + "\n")
    print(table)
    return table


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


def finished(out: Path, name: str) -> bool:
    """Whether the run ``out/runs/<name>`` finished (its summary was written)."""
    return (out / "runs" / name / "summary.json").is_file()


def run_named(
    out: Path, name: str, strategy: str, config: Mapping[str, Any], federation_config: str
) -> Any:
    """Run one strategy with ``flwr run`` into ``out/runs/<name>``, its log ``out/logs/<name>.log``.

    The layout the study-like scripts share, so that a rerun finds and skips what finished
    (:func:`finished`). Returns :func:`fedsem_app.tools.compare.run_strategy`'s record.
    """
    from fedsem_app.tools.compare import run_strategy

    return run_strategy(
        strategy,
        config,
        out / "runs",
        name,
        app_dir=ROOT,
        federation_config=federation_config,
        log_path=out / "logs" / f"{name}.log",
    )


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file ([] if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
