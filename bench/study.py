"""The study: every strategy variant for several seeds on ``conf/study.toml``.

Runs each (variant, seed) through the real ``flwr run`` path, one after the other,
into ``<out>/runs/<variant>-s<seed>``, skipping runs that already finished (so an
interrupted study resumes), then writes ``study.md`` / ``study.csv`` and the plots
with :func:`fedsem_app.comparison.write_study`.

    python bench/study.py [--out DIR] [--seeds 1,2,3] [--variants local,pooled,...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedsem_app.compare import DEFAULT_FEDERATION, default_app_dir, read_profile, run_strategy
from fedsem_app.comparison import load_run, write_study

# label -> (strategy, run-config overrides on top of the profile)
VARIANTS: dict[str, tuple[str, dict]] = {
    "local": ("local", {}),
    "pooled": ("pooled", {}),
    "fedsem": ("fedsem", {}),
    "fedavg-lora": ("fedavg-lora", {}),
    # The compressed-adapter baselines: the adapter quantized on the wire, both ways.
    "fedavg-lora-int8": ("fedavg-lora", {"aggregation.quantize": "int8"}),
    "fedavg-lora-int4": ("fedavg-lora", {"aggregation.quantize": "int4"}),
    "fedprox-lora": ("fedprox-lora", {}),
    "fedit": ("fedit", {"fedit.fraction-train": 1.0}),
    "fedsem-confidence": ("fedsem", {"fedsem.consensus": "confidence"}),
    "fedsem-memory": ("fedsem", {"fedsem.label-memory": True}),
    "fedsem-share-0.5": ("fedsem", {"fedsem.pseudo-share": 0.5}),
    "fedsem-min-agreement": ("fedsem", {"fedsem.min-agreement": 0.8}),
}


def main() -> None:
    """Run the study's variants for every seed, then write its tables and plots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = default_app_dir()
    parser.add_argument("--profile", type=Path, default=root / "conf" / "study.toml")
    parser.add_argument("--out", type=Path, default=Path.home() / ".fedsem" / "study")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--order",
        choices=("seed", "variant"),
        default="seed",
        help="seed: every variant of seed 1 first (partial results cover all)",
    )
    args = parser.parse_args()
    shared, compare = read_profile(args.profile)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    out = args.out.expanduser().resolve()
    pairs = [(v, s) for s in seeds for v in variants]
    if args.order == "variant":
        pairs = [(v, s) for v in variants for s in seeds]
    runs = []
    for variant, seed in pairs:
        strategy, overrides = VARIANTS[variant]
        name = f"{variant}-s{seed}"
        folder = out / "runs" / name
        if (folder / "summary.json").is_file():
            run = load_run(folder, strategy)
        else:
            run = run_strategy(
                strategy,
                {**shared, **overrides, "seed": seed},
                out / "runs",
                name,
                app_dir=root,
                federation_config=compare.get("federation-config", DEFAULT_FEDERATION),
                log_path=out / "logs" / f"{name}.log",
            )
        run.label = variant
        runs.append(run)
        write_study(runs, out, {"profile": f"`{args.profile.name}`", "seeds": args.seeds})


if __name__ == "__main__":
    main()
