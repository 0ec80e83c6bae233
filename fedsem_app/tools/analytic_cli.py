"""``fedsem-analytic``: the analytic byte model as Markdown tables and CSV files.

Offline tool; the model itself is :mod:`fedsem_app.tools.analytic`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from fedsem_app.run.meter import human_bytes
from fedsem_app.tools.analytic import (
    DIRECTIONS,
    KNOWN_MODELS,
    PAPER_REDUCTION,
    Architecture,
    Assumptions,
    compare_row,
    get_architecture,
    paper_sweep,
    parse_targets,
)


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Render rows as a Markdown table; ``columns`` are ``(key, header)`` pairs."""

    def cell(value: object, key: str) -> str:
        if key.endswith("bytes") or key.endswith("-bytes"):
            return human_bytes(float(value))
        if key in ("ratio", "off-by"):
            return f"{float(value):,.0f}x" if key == "ratio" else f"{float(value):.2f}"
        if key.endswith("params"):
            return f"{int(value) / 1e6:,.2f} M"
        if key.endswith("tokens") and isinstance(value, float):
            return f"{value:,.0f}"
        return str(value)

    lines = [
        "| " + " | ".join(h for _, h in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(r[k], k) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


MODEL_COLUMNS = [
    ("model", "model"),
    ("params", "parameters"),
    ("lora-params", "LoRA parameters"),
    ("lora-bytes", "LoRA bytes / round"),
    ("behaviour-bytes", "behaviour bytes / round"),
    ("ratio", "LoRA / behaviour"),
]
SWEEP_COLUMNS = [
    ("rank", "rank"),
    ("targets", "targets"),
    ("bytes_per_param", "bytes/param"),
    ("lora-bytes", "LoRA bytes / transfer"),
    ("needed-bytes", "text bytes for 1006x"),
    ("needed-tokens", "= tokens (4 B each)"),
    ("prompts", "nearest: prompts"),
    ("answer_tokens", "x answer tokens"),
    ("ratio", "ratio"),
    ("off-by", "ratio / 1006"),
]


def _write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the table for known (or given) models, optionally the 1006x sweep."""
    parser = argparse.ArgumentParser(
        prog="fedsem-analytic",
        description="Bytes per round of LoRA averaging versus behaviour exchange "
        "(assumptions: see the module docstring of fedsem_app.tools.analytic).",
    )
    parser.add_argument(
        "--models",
        default=",".join(a.name for a in KNOWN_MODELS.values()),
        help="comma list of known models (default: all)",
    )
    parser.add_argument(
        "--arch",
        metavar="H,LAYERS,HEADS,KV,HEAD_DIM,FFN,VOCAB",
        help="a custom architecture instead of --models",
    )
    d = Assumptions()
    parser.add_argument("--rank", type=int, default=d.rank)
    parser.add_argument(
        "--targets", default=d.targets, help="comma list or attention|qv|all (default attention)"
    )
    parser.add_argument("--bytes-per-param", type=float, default=d.bytes_per_param)
    parser.add_argument("--prompts", type=int, default=d.prompts, help="public prompts per round")
    parser.add_argument("--answer-tokens", type=float, default=d.answer_tokens)
    parser.add_argument("--prompt-tokens", type=float, default=d.prompt_tokens)
    parser.add_argument("--bytes-per-token", type=float, default=d.bytes_per_token)
    parser.add_argument("--directions", choices=DIRECTIONS, default=d.directions)
    parser.add_argument("--clients", type=int, default=d.clients, help="multiplies both sides")
    parser.add_argument(
        "--sweep",
        metavar="MODEL",
        help="also list the assumption combinations nearest the paper's 1006x for MODEL",
    )
    parser.add_argument("--top", type=int, default=15, help="rows of the sweep table")
    parser.add_argument("--out", type=Path, help="folder for JSON and CSV of the tables")
    args = parser.parse_args(argv)

    try:
        if args.arch:
            numbers = [int(x) for x in args.arch.split(",")]
            if len(numbers) != 7:
                raise ValueError("--arch needs 7 numbers: H,LAYERS,HEADS,KV,HEAD_DIM,FFN,VOCAB")
            archs = [Architecture("custom", *numbers)]
        else:
            archs = [get_architecture(n.strip()) for n in args.models.split(",") if n.strip()]
        a = Assumptions(
            args.rank,
            args.targets,
            args.bytes_per_param,
            args.prompts,
            args.answer_tokens,
            args.prompt_tokens,
            args.bytes_per_token,
            args.directions,
            args.clients,
        )
        parse_targets(a.targets)
        rows = [compare_row(arch, a) for arch in archs]
        sweep = paper_sweep(get_architecture(args.sweep)) if args.sweep else []
    except ValueError as err:
        print(f"fedsem-analytic: {err}", file=sys.stderr)
        return 2

    print(
        f"Assumptions: LoRA rank {a.rank} on {','.join(parse_targets(a.targets))}, "
        f"{a.bytes_per_param:g} bytes/parameter; {a.prompts} prompts/round, answers of "
        f"{a.answer_tokens:g} tokens, prompts of {a.prompt_tokens:g} tokens, "
        f"{a.bytes_per_token:g} bytes/token; directions: {a.directions}; "
        f"{a.clients} client(s).\n"
    )
    print(markdown_table(rows, MODEL_COLUMNS))
    if sweep:
        print(
            f"\nAssumptions nearest the paper's {PAPER_REDUCTION:g}x for {args.sweep} "
            "(text bytes per client and round that give it, and the nearest round budget):\n"
        )
        print(markdown_table(sweep[: args.top], SWEEP_COLUMNS))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "analytic.json").write_text(
            json.dumps({"assumptions": asdict(a), "models": rows, "sweep": sweep}, indent=2)
        )
        _write_rows(args.out / "analytic.csv", rows)
        if sweep:
            _write_rows(args.out / "sweep.csv", sweep)
        print(f"\nwrote {args.out}/analytic.json, analytic.csv" + (", sweep.csv" if sweep else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
