"""Measured communication and round time of finished runs (fedsem-compare run folders).

Reads the run folders that :mod:`fedsem_app.run.results` writes (``config.json``,
``metrics.json``, ``clients.jsonl``, ``consensus_samples.jsonl``) and prints three
tables:

1. **Bytes per round** by direction and message kind (train / evaluate), measured
   by the byte meter on the real Flower records (``fedsem_app.run.meter``), as a mean
   over rounds and for the last round (FedSem's round 1 carries no pseudo-labels
   yet), the run total, and the ratio of each strategy to ``fedsem``.
2. **Bytes per answer token** (FedSem): train bytes up per answer, and per answer
   token. Tokens are counted with the clients' tokenizer on the answers in
   ``consensus_samples.jsonl`` (5 sampled prompts a round, every client's answer),
   so the mean tokens per answer is estimated from that sample.
3. **Round time** split into client train, client generate, client evaluate,
   server work (``server-seconds``: validate, embed, consensus / FedAvg), and the
   remainder (message transfer, Flower scheduling, client setup: model load and, in
   round 1, the one-time GGUF conversion). Client times are summed over clients:
   in simulation with the default client resources (2 CPUs per client on a
   2-CPU machine) one Ray actor runs the clients one after the other. Also the
   clients' CPU-seconds (``cpu-seconds``); energy is not measured on a CPU.

Run::

    .venv/bin/python bench/compare_report.py /tmp/bench-compare      # a fedsem-compare --out folder
    .venv/bin/python bench/compare_report.py RUN_DIR [RUN_DIR ...] --out /tmp/report
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    bench_parser,
    finish,
    human_bytes,
    markdown,
    output_folder,
    read_jsonl,
    write_results,
)

KINDS = [(d, k) for k in ("train", "evaluate") for d in ("down", "up")]


def run_folders(paths: list[str]) -> list[Path]:
    """Run folders from the arguments: run folders themselves or compare output folders."""
    folders = []
    for path in map(Path, paths):
        if (path / "metrics.json").exists():
            folders.append(path)
        else:
            folders += sorted(f for f in (path / "runs").glob("*") if (f / "metrics.json").exists())
    if not folders:
        raise SystemExit(f"no run folders (with metrics.json) under {paths}")
    # FedSem first: the other strategies are compared against it.
    return sorted(folders, key=lambda f: strategy_of(f) != "fedsem")


def training_rows(folder: Path) -> list[dict]:
    """The run's metrics rows of training rounds (round 0 only evaluates the start)."""
    return [r for r in json.loads((folder / "metrics.json").read_text()) if r["round"] >= 1]


def strategy_of(folder: Path) -> str:
    """The run's strategy from its resolved config."""
    config = json.loads((folder / "config.json").read_text())
    return str(config.get("strategy", folder.name))


def bytes_rows(folder: Path) -> dict:
    """Mean and last-round bytes by direction and kind, and the run total."""
    rows = training_rows(folder)
    out: dict = {"strategy": strategy_of(folder), "rounds": len(rows)}
    for d, k in KINDS:
        values = [r.get(f"bytes-{d}-{k}", 0) for r in rows]
        out[f"{d}-{k}"] = mean(values)
        out[f"last-{d}-{k}"] = values[-1]
    out["train"] = out["down-train"] + out["up-train"]
    out["evaluate"] = out["down-evaluate"] + out["up-evaluate"]
    out["per-round"] = out["train"] + out["evaluate"]
    out["last-train"] = out["last-down-train"] + out["last-up-train"]
    out["total"] = rows[-1].get("bytes-cumulative", 0)
    return out


def tokenizer_for(model: str):
    """The clients' tokenizer from the converted model cache, or None."""
    from fedsem_app.config.sections import ModelConfig

    folder = ModelConfig().cache_path / model
    if not folder.exists():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def answer_token_rows(folder: Path) -> dict | None:
    """Bytes per answer and per answer token of a FedSem run, from its samples."""
    samples = read_jsonl(folder / "consensus_samples.jsonl")
    if not samples:
        return None
    rows = training_rows(folder)
    train = [c for c in read_jsonl(folder / "clients.jsonl") if c["phase"] == "train"]
    config = json.loads((folder / "config.json").read_text())
    prompts = int(config.get("fedsem.prompts-per-round", 0))
    answers = [a for s in samples for a in s["answers"] if a["valid"]]
    tokenizer = tokenizer_for(answers[0]["model"])
    texts = [a["text"] for a in answers]
    tokens = (
        mean(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        if tokenizer
        else None
    )
    chars = mean(len(t) for t in texts)
    utf8 = mean(len(t.encode()) for t in texts)
    per_answer = mean(
        r["bytes-up-train"] / (prompts * sum(1 for c in train if c["round"] == r["round"]))
        for r in rows
    )
    return {
        "strategy": strategy_of(folder),
        "sampled-answers": len(texts),
        "tokens-per-answer": tokens,
        "chars-per-answer": chars,
        "utf8-per-answer": utf8,
        "up-bytes-per-answer": per_answer,
        "bytes-per-token": per_answer / tokens if tokens else None,
        "text-bytes-per-token": utf8 / tokens if tokens else None,
        "tokens-counted-with": answers[0]["model"] if tokenizer else "(no tokenizer)",
    }


def time_rows(folder: Path) -> list[dict]:
    """Per-round wall time split into client train / generate / evaluate, server, rest."""
    rows = training_rows(folder)
    clients = read_jsonl(folder / "clients.jsonl")
    by_round: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for c in clients:
        sums = by_round[c["round"]]
        sums["train"] += c.get("train-seconds", 0.0)
        sums["generate"] += c.get("generate-seconds", 0.0)
        sums["evaluate"] += c.get("eval-seconds", 0.0)
        sums["cpu"] += c.get("cpu-seconds", 0.0)
        sums["joules"] += c.get("gpu-joules", 0.0)
        sums["has-joules"] += "gpu-joules" in c
    out = []
    for r in rows:
        sums = by_round[r["round"]]
        server = r.get("server-seconds", 0.0)
        wall = r["round-seconds"]
        clients_s = sums["train"] + sums["generate"] + sums["evaluate"]
        out.append(
            {
                "strategy": strategy_of(folder),
                "round": r["round"],
                "wall-s": wall,
                "train-s": sums["train"],
                "generate-s": sums["generate"],
                "evaluate-s": sums["evaluate"],
                "server-s": server,
                "embed-s": r.get("embed-seconds", 0.0),
                "consensus-s": r.get("consensus-seconds", 0.0),
                "rest-s": wall - clients_s - server,
                "client-cpu-s": sums["cpu"],
                "energy": f"{sums['joules']:.0f} J" if sums["has-joules"] else "not measured",
            }
        )
    return out


BYTE_COLUMNS = [
    ("strategy", "strategy", ""),
    ("down-train", "train down / round", ""),
    ("up-train", "train up / round", ""),
    ("down-evaluate", "eval down / round", ""),
    ("up-evaluate", "eval up / round", ""),
    ("per-round", "all / round", ""),
    ("last-train", "train, last round", ""),
    ("total", "run total", ""),
    ("ratio", "all / round vs fedsem", ".0f"),
    ("train-ratio", "train / round vs fedsem", ".0f"),
]
TOKEN_COLUMNS = [
    ("strategy", "strategy", ""),
    ("sampled-answers", "sampled answers", ""),
    ("tokens-per-answer", "tokens / answer", ".1f"),
    ("chars-per-answer", "chars / answer", ".1f"),
    ("up-bytes-per-answer", "train bytes up / answer", ".1f"),
    ("bytes-per-token", "wire bytes / answer token", ".2f"),
    ("text-bytes-per-token", "UTF-8 bytes / answer token", ".2f"),
    ("tokens-counted-with", "tokenizer", ""),
]
TIME_COLUMNS = [
    ("strategy", "strategy", ""),
    ("round", "round", ""),
    ("wall-s", "wall s", ".1f"),
    ("train-s", "client train s", ".1f"),
    ("generate-s", "client generate s", ".1f"),
    ("evaluate-s", "client evaluate s", ".1f"),
    ("server-s", "server s", ".2f"),
    ("rest-s", "rest (transfer, setup) s", ".1f"),
    ("client-cpu-s", "client CPU-s", ".1f"),
    ("energy", "energy", ""),
]


def main(argv: list[str] | None = None) -> int:
    """Print the three tables and write them as JSON and CSV."""
    parser = bench_parser(__doc__, "compare-report")
    parser.add_argument("paths", nargs="+", help="run folders or fedsem-compare output folders")
    args = parser.parse_args(argv)
    folders = run_folders(args.paths)
    folder_out = output_folder("compare-report", args.out)

    byte_rows = [bytes_rows(f) for f in folders]
    base = next((r for r in byte_rows if r["strategy"] == "fedsem"), None)
    for row in byte_rows:
        if base:
            row["ratio"] = row["per-round"] / base["per-round"]
            row["train-ratio"] = row["train"] / base["train"]
    shown = [
        {
            **r,
            **{
                k: human_bytes(r[k])
                for k in ("down-train", "up-train", "down-evaluate", "up-evaluate")
            },
            **{k: human_bytes(r[k]) for k in ("per-round", "last-train", "total")},
        }
        for r in byte_rows
    ]
    token_rows = [t for t in (answer_token_rows(f) for f in folders) if t]
    round_rows = [row for f in folders for row in time_rows(f)]
    means = []
    for strategy in dict.fromkeys(r["strategy"] for r in round_rows):
        own = [r for r in round_rows if r["strategy"] == strategy]
        later = [r for r in own if r["round"] > 1] or own
        means.append(
            {
                "strategy": strategy,
                "round": f"mean of {', '.join(str(r['round']) for r in later)}",
                **{
                    k: mean(r[k] for r in later)
                    for k in own[0]
                    if k.endswith("-s") and k not in ("round",)
                },
                "energy": later[0]["energy"],
            }
        )

    write_results(folder_out, "bytes", byte_rows, {"runs": [str(f) for f in folders]})
    write_results(folder_out, "answer_tokens", token_rows, {})
    print("Bytes per round (measured on the Flower records; mean over rounds):\n")
    print(markdown(shown, BYTE_COLUMNS))
    if token_rows:
        print("\nBytes per answer token (FedSem; tokens from the sampled answers):\n")
        print(markdown(token_rows, TOKEN_COLUMNS))
    print(
        "\nRound time (client times summed over clients: one simulation actor runs them in "
        "turn; rest = wall - clients - server):\n"
    )
    finish(folder_out, "round_time", round_rows + means, {}, TIME_COLUMNS)
    print(f"\nwrote {folder_out}/bytes.json|csv, answer_tokens.json|csv, round_time.json|csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
