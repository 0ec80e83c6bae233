"""Line finished runs up: one table (Markdown and CSV) and two plots.

Offline tool: pure functions over finished run folders.

Pure functions over the files every run writes (see :mod:`fedsem_app.run.results`):
``metrics.json`` (one row per round), ``summary.json`` and ``config.json``. The
``fedsem-compare`` command (:mod:`fedsem_app.tools.compare`) runs the strategies and
then calls :func:`write_comparison`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsem_app import protocol as p
from fedsem_app.files import is_finite
from fedsem_app.run.meter import human_bytes
from fedsem_app.run.results import FACT_KEYS, evaluated_rows

QUALITY = (("rouge-l", "ROUGE-L"), ("embed-sim", "embedding similarity"))

# Config keys that define the setting; runs compared side by side should agree on them.
SETTING_KEYS = (
    "model.names",
    "num-server-rounds",
    "min-clients",
    "seed",
    "lora.rank",
    "train.local-steps",
    "train.batch-size",
    "train.learning-rate",
    "gen.max-new-tokens",
    "data.name",
    "data.path",
    "data.partitioner",
    "data.dirichlet-alpha",
    "data.role-field",
    "data.facts-seed",
    "data.facts-public-coverage",
    "eval.num-prompts",
)
RUN_KEYS = ("strategy", "run-name", "results-dir")  # differ by design

# CSV columns, in order; the Markdown table shows them with these headers.
COLUMNS = {
    "strategy": "strategy",
    "status": "status",
    "rounds": "rounds",
    "rouge-l-final": "ROUGE-L final",
    "rouge-l-best": "ROUGE-L best",
    "embed-sim-final": "embed-sim final",
    "embed-sim-best": "embed-sim best",
    "nll-final": "NLL final",
    "nll-best": "NLL best",
    "bytes-total": "bytes total",
    "bytes-per-round": "bytes / round",
    "train-seconds-per-round": "train s / round",
    "generate-seconds-per-round": "generate s / round",
    "server-seconds-per-round": "server s / round",
    "run-seconds": "run s",
    "wall-seconds": "wall s",
}
# Shown after the NLL columns only where some run measured them (the facts data).
FACT_COLUMNS = {
    f"{p.FACT_ACCURACY}-final": "fact acc. final",
    **{f"{p.FACT_ACCURACY}-{s}-final": f"fact acc. {s} final" for s in p.FACT_SUBSETS},
}


def columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The table's columns: :data:`COLUMNS`, plus the fact-accuracy ones some row has."""
    facts = {k: v for k, v in FACT_COLUMNS.items() if any(r.get(k) is not None for r in rows)}
    keys = list(COLUMNS)
    at = keys.index("nll-best") + 1
    order = keys[:at] + list(facts) + keys[at:]
    return {k: COLUMNS.get(k) or facts[k] for k in order}


@dataclass
class RunRecord:
    """One run as the comparison sees it.

    Attributes
    ----------
    label
        Name in the table and the plot legends (the strategy, by default).
    folder
        The run folder, or None if the run never created one.
    rows
        ``metrics.json``: one dict per finished round.
    summary, config
        ``summary.json`` and ``config.json`` (empty if missing).
    error
        Why the run failed; empty if it finished.
    wall_seconds
        Wall-clock time of the whole ``flwr run`` (start-up included), if measured.
    """

    label: str
    folder: Path | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    wall_seconds: float | None = None

    @property
    def ok(self) -> bool:
        """Whether the run finished (wrote its summary) without an error."""
        return not self.error


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def load_run(
    folder: Path | None,
    label: str = "",
    error: str = "",
    wall_seconds: float | None = None,
) -> RunRecord:
    """Read a run folder; a missing ``summary.json`` marks the run as failed.

    Parameters
    ----------
    folder
        The run folder (``<results-dir>/<run-name>``); None or missing for a run
        that stopped before creating it.
    label
        Table label; default: the run's strategy, else the folder name.
    error
        A known failure reason (e.g. from the ``flwr run`` output).
    wall_seconds
        Measured wall-clock time, if any.
    """
    rows, summary, config = [], {}, {}
    if folder is not None and folder.is_dir():
        rows = _read_json(folder / "metrics.json", [])
        summary = _read_json(folder / "summary.json", {})
        config = _read_json(folder / "config.json", {})
        if not summary and not error:
            error = "the run did not finish (no summary.json)"
    elif not error:
        error = f"no run folder at {folder}"
    label = label or config.get("strategy") or summary.get("strategy") or Path(folder or "?").name
    return RunRecord(label, folder, rows, summary, config, error, wall_seconds)


def metric_values(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """The finite values of ``key`` over metrics rows, in row order."""
    return [float(r[key]) for r in rows if is_finite(r.get(key))]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def table_row(run: RunRecord) -> dict[str, Any]:
    """One table row: final and best quality, traffic and time (None where unknown).

    Final values come from the last finished round; best is the maximum for
    ROUGE-L and embedding similarity and the minimum for NLL. Seconds per round
    are means over rounds of the slowest client's train / generate time and the
    server's own time.
    """
    rows = run.rows
    last = rows[-1] if rows else {}
    trained = [r for r in rows if r.get("round", 0) > 0]  # round 0 only evaluates
    evaluated = evaluated_rows(trained)  # eval.every may skip rounds
    row: dict[str, Any] = {
        "strategy": run.label,
        "status": "ok" if run.ok else "failed",
        "rounds": len(trained),
    }
    for key in ("rouge-l", "embed-sim", "nll"):
        values = metric_values(evaluated, key)
        row[f"{key}-final"] = float(last[key]) if is_finite(last.get(key)) else None
        row[f"{key}-best"] = (min if key == "nll" else max)(values) if values else None
    # Only runs on data with short values measure these; the others get no column.
    row.update({f"{k}-final": float(last[k]) for k in FACT_KEYS if is_finite(last.get(k))})
    total = last.get("bytes-cumulative") if is_finite(last.get("bytes-cumulative")) else None
    row["bytes-total"] = total
    row["bytes-per-round"] = total / len(trained) if total is not None and trained else None
    for key in ("train", "generate"):
        row[f"{key}-seconds-per-round"] = _mean(metric_values(rows, f"max-{key}-seconds"))
    row["server-seconds-per-round"] = _mean(metric_values(rows, "server-seconds"))
    row["run-seconds"] = (
        float(last["elapsed-seconds"]) if is_finite(last.get("elapsed-seconds")) else None
    )
    row["wall-seconds"] = run.wall_seconds
    return row


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key.startswith("bytes"):
        return human_bytes(value)
    if key.endswith("seconds") or key.endswith("seconds-per-round"):
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a GitHub Markdown table with human units."""
    shown = columns(rows)
    lines = [
        "| " + " | ".join(shown.values()) + " |",
        "|" + "|".join("---" if k in ("strategy", "status") else "---:" for k in shown) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(k, row.get(k)) for k in shown) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path, extra: Sequence[str] = ()) -> None:
    """The rows as CSV with raw numbers (empty cells where unknown)."""
    names = [*columns(rows), *extra]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in names})


def setting(runs: Sequence[RunRecord]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The setting the runs share, and the setting keys on which they differ.

    Returns
    -------
    tuple
        ``(shared, differing)``: key -> value for keys equal in every run that has a
        config; key -> per-run values for the others (run keys such as the strategy
        are left out: they differ by design).
    """
    configs = [r.config for r in runs if r.config]
    shared: dict[str, Any] = {}
    differing: dict[str, list[Any]] = {}
    keys = sorted({k for c in configs for k in c} - set(RUN_KEYS))
    for key in keys:
        values = [c.get(key) for c in configs]
        if all(v == values[0] for v in values):
            shared[key] = values[0]
        else:
            differing[key] = values
    return shared, differing


def markdown_report(runs: Sequence[RunRecord], notes: Mapping[str, str] | None = None) -> str:
    """The whole ``comparison.md``: setting, table, failures, plots, run folders."""
    rows = [table_row(r) for r in runs]
    shared, differing = setting(runs)
    parts = ["# Strategy comparison\n"]
    described = [f"`{k}` = {shared[k]!r}" for k in SETTING_KEYS if shared.get(k, "") != ""]
    described += [f"{k}: {v}" for k, v in (notes or {}).items()]
    if described:
        parts.append("Same setting for every run: " + ", ".join(described) + ".\n")
    if differing:
        parts.append(
            "**Warning:** the runs differ in "
            + ", ".join(f"`{k}` ({', '.join(map(str, v))})" for k, v in differing.items())
            + ".\n"
        )
    parts.append(markdown_table(rows))
    parts.append(
        "Final = last round; best = highest ROUGE-L / embedding similarity, lowest NLL. "
        "Bytes are measured on the serialised messages, both directions, training and "
        "evaluation. Seconds per round: slowest client's training and generation, and "
        "the server's own work; run s = first to last round; wall s = the whole "
        "`flwr run`, start-up included.\n"
    )
    failed = [r for r in runs if not r.ok]
    if failed:
        parts.append("## Failed runs\n")
        parts.append("".join(f"- **{r.label}**: {r.error}\n" for r in failed))
    parts.append("## Plots\n")
    parts.append("![quality per round](quality_vs_round.png)\n")
    parts.append("![quality versus cumulative bytes](quality_vs_bytes.png)\n")
    parts.append("## Run folders\n")
    parts.append("".join(f"- {r.label}: `{r.folder}`\n" for r in runs))
    return "\n".join(parts)


def _plot(runs: Sequence[RunRecord], path: Path, x_key: str, x_label: str, log_x: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(QUALITY), figsize=(5 * len(QUALITY), 3.8))
    for ax, (key, title) in zip(axes, QUALITY, strict=True):
        for run in runs:
            points = [
                (r[x_key], r[key])
                for r in evaluated_rows(run.rows)  # rounds eval.every skipped have none
                if is_finite(r.get(key)) and is_finite(r.get(x_key)) and (r[x_key] > 0 or not log_x)
            ]
            if points:
                label = run.label if run.ok else f"{run.label} (failed)"
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
        if log_x:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"{title} (test prompts)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_quality_vs_round(runs: Sequence[RunRecord], path: Path) -> None:
    """ROUGE-L and embedding similarity per round, one line per run."""
    _plot(runs, path, "round", "round", log_x=False)


def plot_quality_vs_bytes(runs: Sequence[RunRecord], path: Path) -> None:
    """Quality against cumulative bytes (log scale), one line per run."""
    _plot(runs, path, "bytes-cumulative", "cumulative bytes (log scale)", log_x=True)


def write_comparison(
    runs: Sequence[RunRecord], out: Path, notes: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Write ``comparison.md``, ``comparison.csv`` and the two plots into ``out``.

    Labels that occur twice (e.g. two fedsem runs) get their folder name appended.

    Returns
    -------
    list of dict
        The table rows.
    """
    out.mkdir(parents=True, exist_ok=True)
    labels = [r.label for r in runs]
    for run in runs:
        if labels.count(run.label) > 1 and run.folder is not None:
            run.label = f"{run.label} ({run.folder.name})"
    rows = [table_row(r) for r in runs]
    for row, run in zip(rows, runs, strict=True):
        row["folder"] = str(run.folder or "")
        row["error"] = run.error
    write_csv(rows, out / "comparison.csv", extra=("folder", "error"))
    (out / "comparison.md").write_text(markdown_report(runs, notes))
    plot_quality_vs_round(runs, out / "quality_vs_round.png")
    plot_quality_vs_bytes(runs, out / "quality_vs_bytes.png")
    return rows
