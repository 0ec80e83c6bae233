"""Bytes per round with and without ``fedsem.wire-compression = "zlib"``, same consensus.

Runs ``fedsem`` twice through ``flwr run`` (local simulation) on the setting of
``conf/compare.toml`` (SmolLM2-135M on three clients; ``--rounds`` rounds), once
with plain text lists on the wire and once with zlib, and reads the byte meter of
both run folders. Bytes are those of the real Flower messages (see
:mod:`fedsem_app.comm`). The codec is lossless; the script also checks that both
runs chose the same consensus answers for the logged prompts and got the same
quality, which is what keeping the switch requires.

Run from the project root, with the CPU to itself (about 5 minutes)::

    flock /tmp/fedsem-cpu.lock .venv/bin/python bench/wire_compression.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, human_bytes, machine, markdown, output_folder, write_results  # noqa: E402

PHASES = ("down-train", "up-train", "down-evaluate", "up-evaluate")


def consensus_picks(folder: Path) -> list[tuple[int, int, str]]:
    """(round, prompt id, chosen text) of every logged consensus sample of a run."""
    picks = []
    for line in (folder / "consensus_samples.jsonl").open():
        sample = json.loads(line)
        chosen = sample["chosen"]
        text = sample["answers"][chosen]["text"] if chosen >= 0 else ""
        picks.append((sample["round"], sample["prompt-id"], text))
    return picks


def main() -> None:
    """Run both settings and print bytes per round side by side."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=str(ROOT / "conf" / "compare.toml"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", help="output folder (default /tmp/fedsem-bench/wire-*)")
    args = parser.parse_args()

    from fedsem_app.compare import read_profile, run_strategy

    folder = output_folder("wire", args.out)
    shared, compare = read_profile(Path(args.profile))
    federation = compare.get("federation-config", "num-supernodes=3")
    runs = {}
    for codec in ("none", "zlib"):
        flat = {**shared, "num-server-rounds": args.rounds, "fedsem.wire-compression": codec}
        run = run_strategy(
            "fedsem",
            flat,
            folder / "runs",
            f"fedsem-{codec}",
            app_dir=ROOT,
            federation_config=federation,
            log_path=folder / "logs" / f"{codec}.log",
        )
        if not run.ok:
            sys.exit(f"run with wire-compression={codec} failed: {run.error}")
        runs[codec] = run

    rows = []
    for codec, run in runs.items():
        for r in run.rows:
            rows.append(
                {
                    "codec": codec,
                    "round": r["round"],
                    **{p: r[f"bytes-{p}"] for p in PHASES},
                    "train-total": r["bytes-down-train"] + r["bytes-up-train"],
                    "rouge-l": r.get("rouge-l"),
                    "agreement-mean": r.get("agreement-mean"),
                }
            )
    same = consensus_picks(runs["none"].folder) == consensus_picks(runs["zlib"].folder)
    quality_same = [r.get("rouge-l") for r in runs["none"].rows] == [
        r.get("rouge-l") for r in runs["zlib"].rows
    ]
    plain = sum(r["train-total"] for r in rows if r["codec"] == "none")
    packed = sum(r["train-total"] for r in rows if r["codec"] == "zlib")
    meta = {
        "machine": machine(),
        "args": vars(args),
        "same-consensus-samples": same,
        "same-rouge-l": quality_same,
        "train-bytes-ratio": plain / packed,
    }
    write_results(folder, "wire_compression", rows, meta)
    print(
        markdown(
            [{**r, **{p: human_bytes(r[p]) for p in (*PHASES, "train-total")}} for r in rows],
            [
                ("codec", "wire-compression", ""),
                ("round", "round", ""),
                *[(p, p, "") for p in PHASES],
                ("train-total", "train total", ""),
                ("rouge-l", "ROUGE-L", ".4f"),
                ("agreement-mean", "agreement", ".4f"),
            ],
        )
    )
    print(
        f"train traffic: {human_bytes(plain)} plain, {human_bytes(packed)} zlib "
        f"({plain / packed:.2f}x smaller); same consensus samples: {same}; "
        f"same ROUGE-L every round: {quality_same}"
    )
    print(f"results in {folder}")


if __name__ == "__main__":
    main()
