"""Are the consensus's pseudo-labels the better answers? Score them against the references.

The server never sees reference answers of the public prompts (they are unlabelled by
design), but the dataset has them. For every prompt a FedSem run wrote to
``consensus_samples.jsonl``, this scores every valid candidate answer against the
dataset's reference (ROUGE-L and embedding similarity) and compares the chosen one with
the mean candidate (what a random pick gets) and the best candidate (an oracle), and
each model's answers with the others'. On a dataset with short right values (the facts
benchmark) it also follows the labels round by round: how often the label is right, how
often some candidate is, how often the other clients already say it, and how often a
prompt's label changed since the previous round. Offline analysis; nothing here feeds
training.

    python -m bench.label_quality RUN_FOLDER [RUN_FOLDER ...] [--out FILE.md]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedsem_app.clients.evaluation import contains_value, rouge_l
from fedsem_app.config.app import known_keys, load_app_config
from fedsem_app.data.records import load_records
from fedsem_app.embedding import cosine_to_reference
from fedsem_app.run.intervals import mean_interval

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_parser  # noqa: E402


def score_samples(folder: Path) -> list[dict]:
    """One row per (sampled prompt, valid candidate): its scores and whether it was chosen."""
    # config.json also records what the run added (its Flower run id): keep the settings.
    saved = json.loads((folder / "config.json").read_text())
    app = load_app_config({k: v for k, v in saved.items() if k in known_keys()})
    records = {q.id: q for q in load_records(app.data)}
    rows = []
    for line in (folder / "consensus_samples.jsonl").read_text().splitlines():
        sample = json.loads(line)
        if sample["abstained"]:
            continue
        for k, answer in enumerate(sample["answers"]):
            if answer["valid"]:
                rows.append(
                    {
                        "round": sample["round"],
                        "prompt-id": sample["prompt-id"],
                        "model": answer["model"],
                        "chosen": k == sample["chosen"],
                        "finished": answer["finished"],
                        "text": answer["text"],
                        "reference": records[sample["prompt-id"]].answer,
                        "value": records[sample["prompt-id"]].value,
                    }
                )
    if rows:
        texts, refs = [r["text"] for r in rows], [r["reference"] for r in rows]
        sims = cosine_to_reference(texts, refs, app.fedsem.embedder)
        for r, rl, sim in zip(rows, rouge_l(texts, refs), sims, strict=True):
            r["rouge-l"], r["embed-sim"] = rl, float(sim)
    return rows


def _stat(values: Sequence[float]) -> tuple[float, float, float]:
    low, high = mean_interval(np.asarray(values))
    return float(np.mean(values)), low, high


def summarise(rows: Sequence[dict], metric: str) -> dict[str, tuple[float, float, float]]:
    """Chosen vs mean vs best candidate per prompt, and per model: (mean, 95 % low, high)."""
    prompts: dict[tuple, list[dict]] = {}
    for r in rows:
        prompts.setdefault((r["run"], r["round"], r["prompt-id"]), []).append(r)
    chosen = [next(c[metric] for c in group if c["chosen"]) for group in prompts.values()]
    mean = [float(np.mean([c[metric] for c in group])) for group in prompts.values()]
    best = [max(c[metric] for c in group) for group in prompts.values()]
    out = {
        "chosen": _stat(chosen),
        "mean candidate": _stat(mean),
        "best candidate": _stat(best),
        "chosen - mean candidate": _stat([c - m for c, m in zip(chosen, mean, strict=True)]),
    }
    for model in sorted({r["model"] for r in rows}):
        out[f"answers of {model}"] = _stat([r[metric] for r in rows if r["model"] == model])
    return out


def fact_rounds(rows: Sequence[dict]) -> list[dict]:
    """Per round, the labels of the sampled prompts that have a right value.

    Returns one row per round: ``prompts`` scored, ``label right`` (the chosen answer
    contains the value), ``some candidate right``, ``others right`` (share of the
    candidates not chosen that contain it) and ``label changed`` (share of the prompts
    also sampled the round before whose chosen text differs from that round's).
    """
    prompts: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("value"):
            prompts.setdefault((r["run"], r["round"], r["prompt-id"]), []).append(r)
    labels = {key: next(c["text"] for c in group if c["chosen"]) for key, group in prompts.items()}
    out = []
    for rnd in sorted({key[1] for key in prompts}):
        keys = [key for key in prompts if key[1] == rnd]
        right = [[contains_value(c["text"], c["value"]) for c in prompts[k]] for k in keys]
        chosen = [contains_value(labels[k], prompts[k][0]["value"]) for k in keys]
        others = [
            contains_value(c["text"], c["value"])
            for k in keys
            for c in prompts[k]
            if not c["chosen"]
        ]
        before = [k for k in keys if (k[0], rnd - 1, k[2]) in labels]
        changed = [labels[k] != labels[(k[0], rnd - 1, k[2])] for k in before]
        out.append(
            {
                "round": rnd,
                "prompts": len(keys),
                "label right": float(np.mean(chosen)),
                "some candidate right": float(np.mean([any(r) for r in right])),
                "others right": float(np.mean(others)) if others else float("nan"),
                "label changed": float(np.mean(changed)) if changed else float("nan"),
            }
        )
    return out


def main() -> None:
    """Score the sampled consensus of the given runs and print (or write) the table."""
    parser = bench_parser(__doc__)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    for folder in args.runs:
        for r in score_samples(folder):
            rows.append({**r, "run": folder.name})
    prompts = len({(r["run"], r["round"], r["prompt-id"]) for r in rows})
    lines = [
        f"- runs: {', '.join(f.name for f in args.runs)}",
        f"- scored prompts (sampled, not abstained): {prompts}, candidate answers: {len(rows)}",
        "",
        "| | ROUGE-L (95 % interval) | embed-sim (95 % interval) |",
        "|---|---|---|",
    ]
    tables = {m: summarise(rows, m) for m in ("rouge-l", "embed-sim")}
    for name in tables["rouge-l"]:
        cells = [
            f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in (t[name] for t in tables.values())
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    facts = fact_rounds(rows)
    if facts:
        columns = list(facts[0])
        lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in facts:
            lines.append(
                f"| {row['round']} | {row['prompts']} | "
                + " | ".join(f"{row[c]:.2f}" for c in columns[2:])
                + " |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
