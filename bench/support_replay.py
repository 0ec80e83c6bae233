"""Replay sentence support on the answers a finished FedSem run recorded.

The server's support step (``fedsem_app.strategies.support``) depends only on a prompt's
answers, which of them voted and which one the vote chose. A run with
``fedsem.samples-per-round = 0`` records all of that for every prompt and round in
``consensus_samples.jsonl``, so the step can be re-run offline under other settings on
exactly the answers the server saw. For each run folder and round this reports, under
three settings (no support; whole sentences only, ``fedsem.support-window = 0``; whole
sentences and windows), how many prompts get a label, how many labels carry the payload
(``bench.propagation.payload_present``) and the labels' ROUGE-L to the dataset's reference
answers (the cost to honest labels). The labels the run itself trained on are counted
too, as a check that the replay reproduces the server.

    python -m bench.support_replay RUN_FOLDER [RUN_FOLDER ...] [--window 6]
        [--window-threshold 0.15] [--out DIR]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedsem_app.clients.evaluation import rouge_l
from fedsem_app.config.app import known_keys, load_app_config
from fedsem_app.config.sections import FedSemConfig
from fedsem_app.data.records import load_records
from fedsem_app.embedding import embed
from fedsem_app.strategies.support import support_labels

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_parser, finish, machine, output_folder, read_jsonl  # noqa: E402
from bench.propagation import payload_present, sample_label  # noqa: E402

COLUMNS = [
    ("run", "run", ""),
    ("round", "round", ">"),
    ("prompts", "prompts", ">"),
    ("setting", "support", ""),
    ("labels", "labels", ">"),
    ("payload", "labels with payload", ">"),
    ("rouge-l", "labels' ROUGE-L", ".3f"),
    ("changed", "labels changed vs. sentences only", ">"),
]


def replay(
    samples: Sequence[dict], cfg: FedSemConfig, window: int, window_threshold: float
) -> dict[str, list[str | None]]:
    """Every sample's label: as the run recorded it and under each support setting."""
    texts = [[a["text"] for a in s["answers"]] for s in samples]
    valid = [[bool(a["valid"]) for a in s["answers"]] for s in samples]
    index = [int(s.get("chosen", -1)) for s in samples]
    out = {
        "recorded": [sample_label(s) for s in samples],
        "off": [t[i] if i >= 0 else None for t, i in zip(texts, index, strict=True)],
    }
    for name, size in (("sentences", 0), ("windows", window)):
        labels: list[str | None] = []
        for row_texts, row_valid, i in zip(texts, valid, index, strict=True):
            labels += support_labels(
                [row_texts],
                np.array([row_valid]),
                [i],
                lambda sentences: embed(sentences, cfg.embedder),
                cfg.support_threshold,
                cfg.support_share,
                size,
                window_threshold,
            )
        out[name] = labels
    return out


def run_rows(folder: Path, window: int, window_threshold: float) -> list[dict]:
    """One row per round and setting for one run folder."""
    saved = json.loads((folder / "config.json").read_text())
    app = load_app_config({k: v for k, v in saved.items() if k in known_keys()})
    references = {q.id: q.answer for q in load_records(app.data)}
    samples = read_jsonl(folder / "consensus_samples.jsonl")
    labels = replay(samples, app.fedsem, window, window_threshold)
    rows = []
    for rnd in sorted({int(s["round"]) for s in samples}):
        at = [j for j, s in enumerate(samples) if int(s["round"]) == rnd]
        for setting, got in labels.items():
            given = [j for j in at if got[j] is not None]
            scores = rouge_l(
                [got[j] for j in given], [references[samples[j]["prompt-id"]] for j in given]
            )
            rows.append(
                {
                    "run": folder.name,
                    "round": rnd,
                    "prompts": len(at),
                    "setting": setting,
                    "labels": len(given),
                    "payload": sum(payload_present(got[j]) for j in given),
                    "rouge-l": float(np.mean(scores)) if given else float("nan"),
                    "changed": sum(got[j] != labels["sentences"][j] for j in at),
                }
            )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Replay support on every run folder given and write the table."""
    parser = bench_parser(__doc__, "support-replay")
    parser.add_argument("runs", nargs="+", type=Path, help="FedSem run folders")
    parser.add_argument("--window", type=int, default=FedSemConfig().support_window)
    parser.add_argument(
        "--window-threshold", type=float, default=FedSemConfig().support_window_threshold
    )
    args = parser.parse_args(argv)
    rows = []
    for folder in args.runs:
        if not (folder / "consensus_samples.jsonl").is_file():
            parser.error(f"{folder}: no consensus_samples.jsonl (is it a FedSem run folder?)")
        rows += run_rows(folder, args.window, args.window_threshold)
    meta = {"machine": machine(), "args": vars(args)}
    finish(output_folder("support-replay", args.out), "support_replay", rows, meta, COLUMNS)


if __name__ == "__main__":
    main()
