"""Are the consensus's pseudo-labels the better answers? Score them against the references.

The server never sees reference answers of the public prompts (they are unlabelled by
design), but the dataset has them. For every prompt a FedSem run wrote to
``consensus_samples.jsonl``, this scores every valid candidate answer against the
dataset's reference (ROUGE-L and embedding similarity) and compares the chosen one with
the mean candidate (what a random pick gets) and the best candidate (an oracle), and
each model's answers with the others'. Offline analysis; nothing here feeds training.

    python -m bench.label_quality RUN_FOLDER [RUN_FOLDER ...] [--out FILE.md]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedsem_app.clients.evaluation import rouge_l
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
    references = {q.id: q.answer for q in load_records(app.data)}
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
                        "reference": references[sample["prompt-id"]],
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
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
