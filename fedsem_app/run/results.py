"""Results on disk: one folder per run, written after every round.

Runs on the server.

Layout of ``<results root>/<run name>/``::

    config.json              resolved run config (flat keys, as in pyproject)
    metrics.json / .csv      one row per round: quality, bytes, seconds, drops
    clients.jsonl            per-client metrics of every round and phase
    prompt_scores.jsonl      per-client, per-prompt scores of every evaluated round
    consensus_samples.jsonl  sampled prompts with every client's answer and the choice
    quality.png, bytes.png   plots, refreshed each round (pick_share.png for fedsem)
    summary.json             final row, gain over round 0, totals, written when the run ends

Round 0 is the evaluation of the untrained models, before any training: every
gain is measured from it. With ``eval.every`` > 1 some rounds are not evaluated:
their rows say ``evaluated: false`` and carry no quality columns.
"""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.common.logger import log

from fedsem_app import protocol as p
from fedsem_app.files import atomic_write, is_finite, jsonable, write_json
from fedsem_app.run.intervals import quality_intervals
from fedsem_app.run.meter import human_bytes

QUALITY_KEYS = ("rouge-l", "embed-sim")
# Reported by runs on data with short values (fedsem_app.clients.evaluation.fact_accuracy).
FACT_KEYS = (p.FACT_ACCURACY, *(f"{p.FACT_ACCURACY}-{s}" for s in p.FACT_SUBSETS))
# Files that grow by appending during a round; a checkpoint keeps their sizes.
APPEND_ONLY_LOGS = ("clients.jsonl", "consensus_samples.jsonl", "prompt_scores.jsonl")
RUN_TOKEN_FILE = "run-token"  # the run's id, the same after a resume
EVALUATED = "evaluated"  # row column: False on a round that eval.every skips


def is_evaluated(row: Mapping[str, Any]) -> bool:
    """Whether a metrics row comes from an evaluated round (rows without the column do)."""
    return row.get(EVALUATED, True) is not False


def evaluated_rows(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows of evaluated rounds only: what quality plots and targets read."""
    return [r for r in rows if is_evaluated(r)]


def make_run_folder(root: Path, run_name: str, strategy: str) -> Path:
    """Create a fresh run folder; never reuse one (a suffix keeps names unique)."""
    base = run_name or f"{datetime.now():%Y%m%d-%H%M%S}-{strategy}"
    root.mkdir(parents=True, exist_ok=True)
    folder, n = root / base, 1
    while folder.exists():
        n += 1
        folder = root / f"{base}-{n}"
    folder.mkdir()
    # A new id per run folder: clients key their saved adapters by it, so a run whose
    # folder path an earlier (deleted) run had never starts from that run's adapters.
    (folder / RUN_TOKEN_FILE).write_text(uuid.uuid4().hex)
    return folder


def run_token(folder: Path) -> str:
    """The id :func:`make_run_folder` gave the run (empty for folders made before it did)."""
    path = Path(folder) / RUN_TOKEN_FILE
    return path.read_text().strip() if path.is_file() else ""


def format_progress(row: Mapping[str, Any], num_rounds: int) -> str:
    """One human line per round: quality, traffic and time."""
    quality = " ".join(
        f"{k} {row[k]:.3f}"
        for k in ("rouge-l", "embed-sim", "nll", p.FACT_ACCURACY)
        if is_finite(row.get(k))
    )
    if not is_evaluated(row):
        quality = "not evaluated (eval.every)"
    return (
        f"[round {row['round']}/{num_rounds}] {quality or 'no evaluation'} | "
        f"down {human_bytes(row.get('bytes-down', 0))} up {human_bytes(row.get('bytes-up', 0))} "
        f"(total {human_bytes(row.get('bytes-cumulative', 0))}) | "
        + (
            f"clients {row.get('train-replies', 0)} ok, {row.get('dropped-replies', 0)} dropped | "
            if row["round"] > 0
            else f"before training: {row.get('eval-replies', 0)} clients evaluated | "
        )
        + f"{row.get('round-seconds', 0):.1f} s"
    )


class RunLog:
    """Collects per-round metrics and writes the run folder as the run goes.

    Parameters
    ----------
    folder
        The run folder (see :func:`make_run_folder`).
    config
        Flat resolved config, written to ``config.json``.
    num_rounds
        Used in progress lines.
    byte_totals
        Callable returning the meter's cumulative byte counters
        (``{"bytes-down-train": n, ...}``); per-round deltas are derived from it.
    """

    def __init__(
        self, folder: Path, config: Mapping[str, Any], num_rounds: int, byte_totals=lambda: {}
    ) -> None:
        self.folder = folder
        self.num_rounds = num_rounds
        self._byte_totals = byte_totals
        self._last_totals: dict[str, int] = {}
        self.rows: list[dict[str, Any]] = []
        self._current: dict[str, Any] = {}
        self._t0 = time.perf_counter()
        write_json(folder / "config.json", dict(config))

    def start_round(self, server_round: int) -> None:
        """Begin a round's row (idempotent within a round)."""
        if self._current.get("round") != server_round:
            self._current = {"round": server_round, "_t0": time.perf_counter()}

    def add(self, server_round: int, metrics: Mapping[str, Any]) -> None:
        """Merge round-level metrics into the current row."""
        self.start_round(server_round)
        self._current.update(metrics)

    def add_clients(self, server_round: int, phase: str, rows: list[Mapping[str, Any]]) -> None:
        """Append per-client metrics of one phase (``train``/``evaluate``)."""
        with open(self.folder / "clients.jsonl", "a") as fh:
            for row in rows:
                fh.write(
                    json.dumps({"round": server_round, "phase": phase, **row}, default=jsonable)
                    + "\n"
                )

    def add_prompt_scores(self, server_round: int, rows: list[Mapping[str, Any]]) -> None:
        """Append per-client, per-prompt evaluation scores (see :func:`prompt_score_rows`)."""
        with open(self.folder / "prompt_scores.jsonl", "a") as fh:
            for row in rows:
                fh.write(json.dumps({"round": server_round, **row}, default=jsonable) + "\n")

    def add_samples(self, server_round: int, samples: list[Mapping[str, Any]]) -> None:
        """Append consensus samples (prompt, every client's answer, the choice)."""
        with open(self.folder / "consensus_samples.jsonl", "a") as fh:
            for sample in samples:
                fh.write(json.dumps({"round": server_round, **sample}, default=jsonable) + "\n")

    def close_round(self, server_round: int) -> dict[str, Any]:
        """Finish the round: bytes deltas, seconds, files, plots and a progress line."""
        self.start_round(server_round)
        row = self._current
        row["round-seconds"] = time.perf_counter() - row.pop("_t0")
        row["elapsed-seconds"] = time.perf_counter() - self._t0
        totals = self._byte_totals()
        for key, value in totals.items():
            row[key] = value - self._last_totals.get(key, 0)
        self._last_totals = dict(totals)
        row["bytes-down"] = sum(v for k, v in row.items() if k.startswith("bytes-down-"))
        row["bytes-up"] = sum(v for k, v in row.items() if k.startswith("bytes-up-"))
        row["bytes-cumulative"] = sum(totals.values())
        self.rows.append(row)
        self._current = {}
        self._write()
        log(INFO, format_progress(row, self.num_rounds))
        return row

    def _write(self) -> None:
        write_json(self.folder / "metrics.json", self.rows)
        columns = sorted({k for row in self.rows for k in row}, key=_column_order)
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.folder / "metrics.csv", text.getvalue().encode())
        try:
            plot_run(self.rows, self.folder)
        except Exception as err:  # noqa: BLE001 - a plot must never end a run
            log(WARNING, "could not draw plots: %s", err)

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to continue this log (see :meth:`restore`).

        Returns
        -------
        dict
            The closed rows, the byte totals they were computed from, and the
            sizes of the append-only logs.
        """
        sizes = {}
        for name in APPEND_ONLY_LOGS:
            path = self.folder / name
            sizes[name] = path.stat().st_size if path.exists() else 0
        return {"rows": self.rows, "byte-totals": self._last_totals, "log-sizes": sizes}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue a checkpointed run from :meth:`state`.

        Keeps its rows, counts bytes and elapsed seconds on from its totals, and
        cuts the append-only logs back to their checkpointed sizes: the lines of
        an interrupted round go, as that round runs again.
        """
        self.rows = [dict(row) for row in state.get("rows", [])]
        self._last_totals = dict(state.get("byte-totals", {}))
        if self.rows:
            self._t0 -= float(self.rows[-1].get("elapsed-seconds", 0.0))
        for name, size in state.get("log-sizes", {}).items():
            path = self.folder / name
            if path.exists() and path.stat().st_size > size:
                with open(path, "r+b") as fh:
                    fh.truncate(size)

    def finish(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write ``summary.json`` (last row, best quality, totals) and return it."""
        trained = [r for r in self.rows if r["round"] > 0]
        summary: dict[str, Any] = {"rounds": len(trained), **(extra or {})}
        if self.rows:
            last = self.rows[-1]
            summary["final"] = {
                k: last[k] for k in ("rouge-l", "embed-sim", "nll", *FACT_KEYS) if k in last
            }
            summary["final-interval"] = {
                k: [last[f"{k}-low"], last[f"{k}-high"]]
                for k in ("rouge-l", "embed-sim", "nll")
                if f"{k}-low" in last and f"{k}-high" in last
            }
            start = next((r for r in self.rows if r["round"] == 0), None)
            if start is not None and trained:
                # Positive = better: NLL improves downwards.
                summary["gain-over-round-0"] = {
                    k: (start[k] - last[k]) if k == "nll" else (last[k] - start[k])
                    for k in ("rouge-l", "embed-sim", "nll")
                    if is_finite(start.get(k)) and is_finite(last.get(k))
                }
            shares = pick_share_totals(self.rows)
            if shares:
                summary["pick-share"] = shares
            diagnostics = diagnostic_totals(self.rows)
            if diagnostics:
                summary["diagnostics"] = diagnostics
            for key in QUALITY_KEYS:
                values = [r[key] for r in trained if is_finite(r.get(key))]
                if values:
                    summary[f"best-{key}"] = max(values)
            summary["bytes-total"] = last.get("bytes-cumulative", 0)
            summary["seconds-total"] = last.get("elapsed-seconds", 0)
        write_json(self.folder / "summary.json", summary)
        return summary


def pick_share_totals(rows: list[Mapping[str, Any]]) -> dict[str, float]:
    """Share of all pseudo-labels of the run that each model's answers won.

    Each round's ``pick-share-<model>`` is weighted by that round's number of new
    labels (prompts that were not abstained).
    """
    totals: dict[str, float] = {}
    weight = 0.0
    for row in rows:
        n = row.get("prompts-labelled", 0)
        weight += n
        for key, value in row.items():
            if key.startswith("pick-share-"):
                model = key.removeprefix("pick-share-")
                totals[model] = totals.get(model, 0.0) + n * value
    return {m: v / weight for m, v in sorted(totals.items())} if weight else {}


# fedsem.diagnostics metrics -> the per-round count each round's value is weighted by.
DIAGNOSTIC_WEIGHTS = {
    "expert-share": "expert-prompts",
    "relevance-expert-hit": "",  # every round alike
    "label-rouge-chosen": "prompts-labelled",
    "label-rouge-best": "prompts-labelled",
    "label-rouge-random": "prompts-labelled",
}


def diagnostic_totals(rows: list[Mapping[str, Any]]) -> dict[str, float]:
    """The run's ``fedsem.diagnostics`` metrics, each round weighted by what it covers.

    ``expert-share`` by the round's ``expert-prompts``, the ``label-rouge-*`` by its
    labelled prompts, ``relevance-expert-hit`` equally per round; empty without any.
    """
    totals = {}
    for key, weight_key in DIAGNOSTIC_WEIGHTS.items():
        pairs = [
            (r[key], r.get(weight_key, 0) if weight_key else 1.0)
            for r in rows
            if is_finite(r.get(key))
        ]
        weight = sum(w for _, w in pairs)
        if weight:
            totals[key] = sum(v * w for v, w in pairs) / weight
    return totals


def _column_order(key: str) -> tuple[int, str]:
    first = (
        "round",
        "rouge-l",
        "embed-sim",
        "nll",
        "perplexity",
        "bytes-down",
        "bytes-up",
        "bytes-cumulative",
        "round-seconds",
    )
    return (first.index(key), key) if key in first else (len(first), key)


def plot_run(rows: list[Mapping[str, Any]], folder: Path) -> None:
    """Draw ``quality.png`` (quality per round) and ``bytes.png`` (cumulative bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [r["round"] for r in rows]
    evaluated = evaluated_rows(rows)  # rounds eval.every skipped have no quality
    fig, (ax, ax_nll) = plt.subplots(1, 2, figsize=(9, 3.5))
    for axis, keys in ((ax, QUALITY_KEYS), (ax_nll, ("nll",))):
        for key in keys:
            points = [(r["round"], r[key]) for r in evaluated if is_finite(r.get(key))]
            if not points:
                continue
            (line,) = axis.plot(*zip(*points, strict=True), marker="o", label=key)
            band = [
                (r["round"], r[f"{key}-low"], r[f"{key}-high"])
                for r in evaluated
                if is_finite(r.get(f"{key}-low")) and is_finite(r.get(f"{key}-high"))
            ]
            if band:
                xs, lows, highs = zip(*band, strict=True)
                axis.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15)
        axis.set_xlabel("round (0 = before training)")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend()
    ax.set_ylabel("score (test prompts)")
    ax.set_title("Quality per round (band: 95 % interval)")
    ax_nll.set_ylabel("reference NLL (lower is better)")
    ax_nll.set_title("Reference NLL")
    fig.tight_layout()
    fig.savefig(folder / "quality.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(rounds, [r.get("bytes-cumulative", 0) for r in rows], marker="o", label="total")
    for key in ("bytes-down", "bytes-up"):
        cumulative, acc = [], 0
        for r in rows:
            acc += r.get(key, 0)
            cumulative.append(acc)
        ax.plot(rounds, cumulative, marker=".", label=key.replace("bytes-", ""))
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("cumulative bytes")
    ax.set_title("Communication")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "bytes.png", dpi=120)
    plt.close(fig)

    share_rows = [r for r in rows if any(k.startswith("pick-share-") for k in r)]
    if share_rows:
        models = sorted(
            {
                k.removeprefix("pick-share-")
                for r in share_rows
                for k in r
                if k.startswith("pick-share-")
            }
        )
        fig, ax = plt.subplots(figsize=(5, 3.5))
        bottom = [0.0] * len(share_rows)
        xs = [r["round"] for r in share_rows]
        for model in models:
            values = [r.get(f"pick-share-{model}", 0.0) for r in share_rows]
            ax.bar(xs, values, bottom=bottom, label=model)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("share of the round's pseudo-labels")
        ax.set_ylim(0, 1)
        ax.set_title("Whose answer became the label")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / "pick_share.png", dpi=120)
        plt.close(fig)


def _client_header(msg: Any) -> dict[str, Any]:
    # Who a reply is from: node id, its federation-spec name (if any) and its model.
    info = msg.content.get(p.INFO, {})
    name = info.get(p.CLIENT_NAME, "")
    return {
        "node": msg.metadata.src_node_id,
        **({"client": name} if name else {}),
        "model": info.get(p.MODEL_NAME, ""),
    }


def client_rows(replies: Iterable[Any]) -> list[dict[str, Any]]:
    """Per-client rows of a phase from its replies: node id, model name and metrics.

    An evaluate reply's per-prompt lists become its 95 % intervals over prompts.
    """
    rows = []
    for msg in replies:
        metrics = dict(msg.content[p.METRICS])
        rows.append(
            {
                **_client_header(msg),
                **{k: v for k, v in metrics.items() if not isinstance(v, list)},
                **quality_intervals([metrics]),
            }
        )
    return rows


def prompt_score_rows(replies: Iterable[Any], ids: Sequence[int]) -> list[dict[str, Any]]:
    """Per-client rows of an evaluated round's per-prompt scores, with the test prompt ids.

    Every list metric of a reply that has one value per test prompt (the lists of
    :data:`fedsem_app.protocol.PER_PROMPT` and the NLL sums and token counts) is
    kept, in the order of ``ids``: within a seed every strategy is evaluated on
    the same prompts, so runs can be compared prompt by prompt.
    """
    ids = [int(i) for i in ids]
    rows = []
    for msg in replies:
        metrics = dict(msg.content[p.METRICS])
        rows.append(
            {
                **_client_header(msg),
                "ids": ids,
                **{
                    k: [float(x) for x in v]
                    for k, v in metrics.items()
                    if isinstance(v, list) and len(v) == len(ids)
                },
            }
        )
    return rows
