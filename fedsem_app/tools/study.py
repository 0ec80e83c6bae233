"""Several seeds per strategy: gains, spreads, paired differences and per-model tables.

Offline tool, used by ``fedsem-compare --seeds`` and ``bench/study.py``; pure
functions over finished run folders (:class:`~fedsem_app.tools.comparison.RunRecord`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedsem_app import protocol as p
from fedsem_app.files import is_finite
from fedsem_app.run.intervals import PromptScores, paired_difference
from fedsem_app.run.meter import human_bytes
from fedsem_app.run.results import FACT_KEYS, evaluated_rows
from fedsem_app.tools.comparison import RunRecord, metric_values

# Higher is better except for NLL; fact-accuracy and its subsets only on data with values.
GAIN_SIGN = {
    "rouge-l": 1.0,
    "embed-sim": 1.0,
    "nll": -1.0,
    **{key: 1.0 for key in FACT_KEYS},
}
# What every variant is held against, prompt by prompt (the paired-prompts table).
REFERENCES = ("local", "fedavg-lora")
TARGET_SHARE = 0.9  # cost to target: 90 % of the reference's final gain over round 0


def gain_per_round(rows: Sequence[Mapping[str, Any]], key: str) -> dict[int, float]:
    """Improvement of ``key`` over round 0 after every round (positive = better).

    NLL improves downwards, so its gain is ``round-0 NLL - NLL``. Empty without a
    round-0 row. Only evaluated rounds have a gain (``eval.every`` may skip some).
    """
    rows = evaluated_rows(rows)
    base = next((r[key] for r in rows if r.get("round") == 0 and is_finite(r.get(key))), None)
    if base is None:
        return {}
    sign = GAIN_SIGN[key]
    return {
        int(r["round"]): sign * (float(r[key]) - base)
        for r in rows
        if r.get("round", 0) > 0 and is_finite(r.get(key))
    }


def _spread(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def first_reaching(rows: Sequence[Mapping[str, Any]], key: str, target: float) -> dict | None:
    """Cumulative bytes and seconds at the first round whose gain reaches ``target``.

    Only evaluated rounds count: with ``eval.every`` > 1 the target may have been
    reached in a skipped round before, so the cost is an upper bound at that
    granularity.
    """
    gains = gain_per_round(rows, key)
    for r in rows:
        rnd = r.get("round", 0)
        if rnd in gains and gains[rnd] >= target:
            return {
                "round": rnd,
                "bytes": r.get("bytes-cumulative"),
                "seconds": r.get("elapsed-seconds"),
            }
    return None


def study_rows(
    runs: Sequence[RunRecord], reference: str = "pooled", key: str = "nll"
) -> list[dict[str, Any]]:
    """One row per label over its seeds: final quality and gain (mean, std), cost, time.

    Parameters
    ----------
    runs
        Finished and failed runs; several per label (one per seed).
    reference
        The label whose mean final gain defines the cost-to-target threshold.
    key
        The metric the cost to target is measured on.
    """
    by_label: dict[str, list[RunRecord]] = {}
    for run in runs:
        by_label.setdefault(run.label, []).append(run)
    ok = {label: [r for r in group if r.ok and r.rows] for label, group in by_label.items()}
    ref_gains = [
        max(gain_per_round(r.rows, key).items())[1]
        for r in ok.get(reference, [])
        if gain_per_round(r.rows, key)
    ]
    ref_gain, _ = _spread(ref_gains)
    target = TARGET_SHARE * ref_gain if ref_gain is not None and ref_gain > 0 else None
    table = []
    for label, group in by_label.items():
        done = ok[label]
        row: dict[str, Any] = {"label": label, "seeds": len(done), "failed": len(group) - len(done)}
        for metric in GAIN_SIGN:
            finals = [float(r.rows[-1][metric]) for r in done if is_finite(r.rows[-1].get(metric))]
            gains = [max(g.items())[1] for r in done if (g := gain_per_round(r.rows, metric))]
            row[f"{metric}-final"], row[f"{metric}-final-std"] = _spread(finals)
            row[f"{metric}-gain"], row[f"{metric}-gain-std"] = _spread(gains)
            lows = [r.rows[-1].get(f"{metric}-low") for r in done]
            highs = [r.rows[-1].get(f"{metric}-high") for r in done]
            if lows and all(is_finite(v) for v in lows + highs):
                row[f"{metric}-ci-halfwidth"] = sum(
                    h - lo for lo, h in zip(lows, highs, strict=True)
                ) / (2 * len(lows))
        trained = [[x for x in r.rows if x.get("round", 0) > 0] for r in done]
        per_round = [r[-1]["bytes-cumulative"] / len(r) for r in trained if r]
        row["bytes-per-round"] = _spread(per_round)[0]
        seconds = [r[-1]["elapsed-seconds"] / len(r) for r in trained if r]
        row["seconds-per-round"] = _spread(seconds)[0]
        if target is not None:
            hits = [first_reaching(r.rows, key, target) for r in done]
            reached = [h for h in hits if h]
            row["target-reached"] = f"{len(reached)}/{len(done)}"
            if reached:
                row["bytes-to-target"] = _spread([h["bytes"] for h in reached])[0]
                row["seconds-to-target"] = _spread([h["seconds"] for h in reached])[0]
        table.append(row)
    return table


def _pm(mean: float | None, std: float | None, digits: int = 3) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def study_markdown(table: Sequence[Mapping[str, Any]], notes: Mapping[str, str]) -> str:
    """The study table as Markdown: mean ± standard deviation over seeds."""
    metrics = [m for m in GAIN_SIGN if any(r.get(f"{m}-final") is not None for r in table)]
    head = ["variant", "seeds"]
    for m in metrics:
        head += [f"{m} final", f"{m} gain over round 0"]
    head += [
        "bytes / round",
        "s / round",
        "reached 90 % of pooled's gain",
        "bytes to target",
        "s to target",
    ]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in table:
        cells = [r["label"], str(r["seeds"]) + (f" ({r['failed']} failed)" if r["failed"] else "")]
        for m in metrics:
            cells += [
                _pm(r.get(f"{m}-final"), r.get(f"{m}-final-std")),
                _pm(r.get(f"{m}-gain"), r.get(f"{m}-gain-std")),
            ]
        cells += [
            human_bytes(r["bytes-per-round"]) if r.get("bytes-per-round") is not None else "n/a",
            f"{r['seconds-per-round']:.0f}" if r.get("seconds-per-round") is not None else "n/a",
            r.get("target-reached", "n/a"),
            human_bytes(r["bytes-to-target"]) if r.get("bytes-to-target") is not None else "-",
            f"{r['seconds-to-target']:.0f}" if r.get("seconds-to-target") is not None else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    meta = "".join(f"- {k}: {v}\n" for k, v in notes.items())
    return meta + "\n" + "\n".join(lines) + "\n"


def plot_seeds(runs: Sequence[RunRecord], path: Path, metrics: Sequence[str] = ("nll",)) -> None:
    """Mean per round over seeds with a band of ± one standard deviation, per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics = [m for m in metrics if any(metric_values(r.rows, m) for r in runs)]
    if not metrics:
        return
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    labels = list(dict.fromkeys(r.label for r in runs))
    for ax, metric in zip(axes[0], metrics, strict=True):
        for label in labels:
            per_round: dict[int, list[float]] = {}
            for run in runs:
                if run.label == label and run.ok:
                    for row in evaluated_rows(run.rows):
                        if is_finite(row.get(metric)):
                            per_round.setdefault(int(row["round"]), []).append(float(row[metric]))
            if not per_round:
                continue
            xs = sorted(per_round)
            stats = [_spread(per_round[x]) for x in xs]
            mean = [m for m, _ in stats]
            std = [s or 0.0 for _, s in stats]
            (line,) = ax.plot(xs, mean, marker="o", label=label)
            ax.fill_between(
                xs,
                [m - s for m, s in zip(mean, std, strict=True)],
                [m + s for m, s in zip(mean, std, strict=True)],
                color=line.get_color(),
                alpha=0.15,
            )
        ax.set_xlabel("round (0 = before training)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric + (" (lower is better)" if metric == "nll" else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("mean over seeds, band: ± 1 std")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _seed(run: RunRecord) -> Any:
    return run.config.get("seed", run.summary.get("seed"))


def paired_rows(
    runs: Sequence[RunRecord], baselines: Mapping[str, str], key: str = "nll"
) -> list[dict[str, Any]]:
    """Each variant's final ``key`` against its baseline's, paired by seed.

    Seeds fix the data split and the initial adapters, so the per-seed difference
    removes most of the spread that the split causes; a variant beats its baseline
    only where the mean difference is larger than its standard deviation.

    Parameters
    ----------
    runs
        Finished runs, several per label (one per seed, ``config.json``'s ``seed``).
    baselines
        label -> the label it is held against (e.g. ``fedsem`` -> ``local``).
    key
        The metric; positive differences are improvements (``GAIN_SIGN``).

    Returns
    -------
    list of dict
        ``label``, ``baseline``, ``seeds`` (paired), ``better`` (seeds with a positive
        difference), ``diff`` / ``diff-std`` and ``per-seed`` ({seed: difference}).
    """
    finals: dict[str, dict[Any, float]] = {}
    for run in runs:
        if run.ok and run.rows and is_finite(run.rows[-1].get(key)):
            finals.setdefault(run.label, {})[_seed(run)] = float(run.rows[-1][key])
    table = []
    for label, baseline in baselines.items():
        mine, theirs = finals.get(label, {}), finals.get(baseline, {})
        diffs = {s: GAIN_SIGN[key] * (mine[s] - theirs[s]) for s in mine if s in theirs}
        if not diffs:
            continue
        mean, std = _spread(list(diffs.values()))
        table.append(
            {
                "label": label,
                "baseline": baseline,
                "seeds": len(diffs),
                "better": sum(d > 0 for d in diffs.values()),
                "diff": mean,
                "diff-std": std,
                "per-seed": dict(sorted(diffs.items())),
            }
        )
    return table


def model_finals(run: RunRecord, key: str = "nll") -> dict[str, dict[str, float]]:
    """Per model of one run: mean ``key`` over its clients at round 0 and the last round.

    Read from ``clients.jsonl`` (the evaluate rows, which name each client's model).
    """
    path = run.folder / "clients.jsonl" if run.folder else None
    if path is None or not path.is_file():
        return {}
    values: dict[tuple[str, int], list[float]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("phase") == "evaluate" and is_finite(row.get(key)):
            values.setdefault((row.get("model", ""), int(row["round"])), []).append(row[key])
    out: dict[str, dict[str, float]] = {}
    for model in sorted({m for m, _ in values}):
        rounds = sorted(r for m, r in values if m == model)
        first, last = values[(model, rounds[0])], values[(model, rounds[-1])]
        out[model] = {"round-0": sum(first) / len(first), "final": sum(last) / len(last)}
    return out


def model_rows(
    runs: Sequence[RunRecord], baselines: Mapping[str, str], key: str = "nll"
) -> list[dict[str, Any]]:
    """Per (variant, model): final ``key``, gain over round 0 and over the baseline's same model.

    The baseline difference is paired by seed, as in :func:`paired_rows`; pick-share is
    the share of the run's pseudo-labels that the model's answers won (FedSem only).
    Only labels with more than one model are listed (the others are in :func:`paired_rows`).
    """
    per: dict[tuple[str, str], dict[Any, dict[str, float]]] = {}
    shares: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        if not run.ok:
            continue
        for model, v in model_finals(run, key).items():
            per.setdefault((run.label, model), {})[_seed(run)] = v
            share = run.summary.get("pick-share", {}).get(model)
            if share is not None:
                shares.setdefault((run.label, model), []).append(float(share))
    wanted = {label for label, _ in per if sum(lbl == label for lbl, _ in per) > 1}
    sign = GAIN_SIGN[key]
    table = []
    for (label, model), by_seed in sorted(per.items()):
        if label not in wanted:
            continue
        row: dict[str, Any] = {"label": label, "model": model, "seeds": len(by_seed)}
        row["final"], row["final-std"] = _spread([v["final"] for v in by_seed.values()])
        gains = [sign * (v["final"] - v["round-0"]) for v in by_seed.values()]
        row["gain"], row["gain-std"] = _spread(gains)
        base = per.get((baselines.get(label, ""), model), {})
        diffs = [sign * (v["final"] - base[s]["final"]) for s, v in by_seed.items() if s in base]
        if diffs:
            row["baseline"] = baselines[label]
            row["vs-baseline"], row["vs-baseline-std"] = _spread(diffs)
            row["better"] = f"{sum(d > 0 for d in diffs)}/{len(diffs)}"
        if (label, model) in shares:
            row["pick-share"] = _spread(shares[(label, model)])[0]
        table.append(row)
    return table


def paired_markdown(
    paired: Sequence[Mapping[str, Any]], models: Sequence[Mapping[str, Any]], key: str = "nll"
) -> str:
    """The paired and per-model tables as Markdown (empty string when there are none)."""
    text = ""
    if paired:
        text += (
            f"\n{key} against the baseline, paired by seed (positive = better than the baseline)"
            "\n\n| variant | baseline | seeds | better in | difference | per seed |\n"
            "|---|---|---|---|---|---|\n"
        )
        for r in paired:
            seeds = _per_seed(r)
            text += (
                f"| {r['label']} | {r['baseline']} | {r['seeds']} | {r['better']}/{r['seeds']} "
                f"| {_pm(r['diff'], r['diff-std'])} | {seeds} |\n"
            )
    if models:
        text += (
            f"\n{key} per model (mean over that model's clients)\n\n"
            "| variant | model | seeds | final | gain over round 0 | vs baseline (same model) "
            "| better in | pick-share |\n|---|---|---|---|---|---|---|---|\n"
        )
        for r in models:
            vs = (
                f"{_pm(r['vs-baseline'], r['vs-baseline-std'])} vs {r['baseline']}"
                if "baseline" in r
                else "-"
            )
            share = f"{r['pick-share']:.2f}" if r.get("pick-share") is not None else "-"
            text += (
                f"| {r['label']} | {r['model']} | {r['seeds']} | {_pm(r['final'], r['final-std'])} "
                f"| {_pm(r['gain'], r['gain-std'])} | {vs} | {r.get('better', '-')} | {share} |\n"
            )
    return text


def read_prompt_scores(run: RunRecord) -> dict[str, tuple[list[int], PromptScores]]:
    """The final round's per-prompt scores of a run, by metric, with the prompt ids.

    Read from ``prompt_scores.jsonl`` (one line per client and evaluated round):
    every metric of :data:`fedsem_app.protocol.PER_PROMPT` whose list is there,
    and the NLL from its per-prompt sums and token counts. Clients whose prompts
    differ from the first client's are left out. Empty if the file has no lines of
    the run's last round.
    """
    path = run.folder / "prompt_scores.jsonl" if run.folder else None
    if path is None or not path.is_file() or not run.rows:
        return {}
    last = run.rows[-1].get("round")
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = sorted((x for x in lines if x.get("round") == last), key=lambda x: x.get("node", 0))
    if not lines:
        return {}
    ids = [int(i) for i in lines[0]["ids"]]
    lines = [x for x in lines if [int(i) for i in x["ids"]] == ids]
    out: dict[str, tuple[list[int], PromptScores]] = {}
    for metric, key in p.PER_PROMPT.items():
        if all(key in x for x in lines):
            out[metric] = (ids, PromptScores.of([x[key] for x in lines]))
    if all(p.NLL_SUMS in x and p.NLL_TOKENS in x for x in lines):
        sums = [x[p.NLL_SUMS] for x in lines]
        out[p.NLL] = (ids, PromptScores.of(sums, [x[p.NLL_TOKENS] for x in lines]))
    return out


def _common_prompts(
    a: tuple[list[int], PromptScores], b: tuple[list[int], PromptScores]
) -> tuple[PromptScores, PromptScores] | None:
    """Both runs' scores on the prompts they share, in the same order (None if none)."""
    (ids_a, sa), (ids_b, sb) = a, b
    if ids_a == ids_b:
        return sa, sb
    where_b = {i: k for k, i in enumerate(ids_b)}
    shared = [(k, where_b[i]) for k, i in enumerate(ids_a) if i in where_b]
    if not shared:
        return None
    ka, kb = (list(x) for x in zip(*shared, strict=True))
    return (
        PromptScores(sa.values[:, ka], sa.counts[:, ka]),
        PromptScores(sb.values[:, kb], sb.counts[:, kb]),
    )


def paired_prompt_rows(
    runs: Sequence[RunRecord],
    baselines: Mapping[str, str] | None = None,
    references: Sequence[str] = REFERENCES,
) -> list[dict[str, Any]]:
    """Each variant against ``local`` and ``fedavg-lora``, per metric, paired by prompt and seed.

    Per metric with per-prompt scores (ROUGE-L, embed-sim, NLL, any other list of
    :data:`fedsem_app.protocol.PER_PROMPT`): the mean ± standard deviation over
    seeds of the final difference, and a 95 % interval from a bootstrap over test
    prompts within each seed, the same resampled prompts for both runs, per-seed
    differences averaged over seeds (:func:`~fedsem_app.run.intervals.paired_difference`).

    Parameters
    ----------
    runs
        Finished runs, several per label (one per seed).
    baselines
        label -> the label it is held against instead of ``local`` (e.g. the
        heterogeneous variants against ``local-hetero``).
    references
        The labels every variant is held against.

    Returns
    -------
    list of dict
        ``label``, ``reference``, ``metric``, ``seeds``, ``better`` (seeds with a
        positive difference), ``diff`` / ``diff-std`` (over seeds), ``low`` /
        ``high`` (the interval) and ``per-seed``; positive = better than the reference.
    """
    scores: dict[str, dict[Any, dict[str, tuple[list[int], PromptScores]]]] = {}
    for run in runs:
        if run.ok and (found := read_prompt_scores(run)):
            scores.setdefault(run.label, {})[_seed(run)] = found
    baselines = baselines or {}
    table = []
    for label, by_seed in scores.items():
        against = [baselines.get(label, ref) if ref == "local" else ref for ref in references]
        for reference in dict.fromkeys(against):
            theirs = scores.get(reference, {})
            if reference == label or not theirs:
                continue
            metrics = sorted({m for s in by_seed.values() for m in s}, key=_metric_order)
            for metric in metrics:
                seeds, pairs = [], []
                for s, mine in sorted(by_seed.items()):
                    if metric in mine and metric in theirs.get(s, {}):
                        pair = _common_prompts(mine[metric], theirs[s][metric])
                        if pair is not None:
                            seeds.append(s)
                            pairs.append(pair)
                if not pairs:
                    continue
                sign = GAIN_SIGN.get(metric, 1.0)
                # + 0.0: a difference of nothing prints as 0.000, not -0.000 (NLL's sign).
                per_seed = [sign * (a.overall() - b.overall()) + 0.0 for a, b in pairs]
                diff, low, high = paired_difference(pairs, sign=sign)
                _, std = _spread(per_seed)
                table.append(
                    {
                        "label": label,
                        "reference": reference,
                        "metric": metric,
                        "seeds": len(pairs),
                        "better": sum(d > 0 for d in per_seed),
                        "diff": diff,
                        "diff-std": std,
                        "low": low,
                        "high": high,
                        "per-seed": dict(zip(seeds, per_seed, strict=True)),
                    }
                )
    return table


def _per_seed(row: Mapping[str, Any]) -> str:
    return ", ".join(f"s{s}: {d:+.3f}" for s, d in row["per-seed"].items())


def _metric_order(metric: str) -> tuple[int, str]:
    known = list(GAIN_SIGN)
    return (known.index(metric), metric) if metric in known else (len(known), metric)


def _signed(mean: float, std: float | None) -> str:
    return f"{mean + 0.0:+.3f}" + (f" ± {std:.3f}" if std is not None else "")


def paired_prompt_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The paired-prompts table as Markdown (empty string when there is none)."""
    if not rows:
        return ""
    text = (
        "\nDifference to the reference, paired by seed and test prompt (positive = better "
        "than the reference; NLL: lower is better). Mean ± std over seeds of the final "
        "difference, and a 95 % interval from a bootstrap over test prompts within each "
        "seed (the same resampled prompts for both runs), per-seed differences averaged "
        "over seeds.\n\n| variant | reference | metric | seeds | better in | difference "
        "| 95 % interval (prompts) | per seed |\n|---|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        seeds = _per_seed(r)
        text += (
            f"| {r['label']} | {r['reference']} | {r['metric']} | {r['seeds']} "
            f"| {r['better']}/{r['seeds']} | {_signed(r['diff'], r['diff-std'])} "
            f"| [{r['low']:+.3f}, {r['high']:+.3f}] | {seeds} |\n"
        )
    return text


def write_study(
    runs: Sequence[RunRecord],
    out: Path,
    notes: Mapping[str, str],
    baselines: Mapping[str, str] | None = None,
) -> list[dict]:
    """Write ``study.md``, ``study.csv``, ``paired.csv`` and ``study_quality.png``.

    ``baselines`` (label -> label) adds the paired-by-seed and per-model NLL tables;
    the paired-by-prompt table (:func:`paired_prompt_rows`) holds every variant
    against ``local`` (or its baseline) and ``fedavg-lora`` where their runs wrote
    per-prompt scores.
    """
    out.mkdir(parents=True, exist_ok=True)
    table = study_rows(runs)
    baselines = baselines or {}
    prompts = paired_prompt_rows(runs, baselines)
    extra = paired_prompt_markdown(prompts)
    extra += paired_markdown(paired_rows(runs, baselines), model_rows(runs, baselines))
    (out / "study.md").write_text(study_markdown(table, notes) + extra)
    if prompts:
        with open(out / "paired.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=[k for k in prompts[0] if k != "per-seed"])
            writer.writeheader()
            writer.writerows([{k: v for k, v in r.items() if k != "per-seed"} for r in prompts])
    keys = list(dict.fromkeys(k for row in table for k in row))
    with open(out / "study.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(table)
    measured = [
        m
        for m in ("nll", "rouge-l", "embed-sim", "fact-accuracy")
        if any(is_finite(r.rows[-1].get(m)) for r in runs if r.rows)
    ]
    plot_seeds(runs, out / "study_quality.png", measured)
    return table
