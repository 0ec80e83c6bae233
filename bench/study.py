"""The study: every strategy variant for several seeds on ``conf/study.toml``.

Runs each (variant, seed) through the real ``flwr run`` path, one after the other,
into ``<out>/runs/<variant>-s<seed>``, skipping runs that already finished (so an
interrupted study resumes), then writes ``study.md`` / ``study.csv`` and the plots
with :func:`fedsem_app.tools.study.write_study`.

    python bench/study.py [--out DIR] [--seeds 1,2,3] [--variants local,pooled,...]
    python bench/study.py --report-only ...   # tables from the runs that finished
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedsem_app.tools.compare import DEFAULT_FEDERATION, default_app_dir, read_profile
from fedsem_app.tools.comparison import load_run
from fedsem_app.tools.study import write_study

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_parser, finished, run_named  # noqa: E402

# Two architectures under one federation: each model is held against the same model trained
# locally (``local-hetero``).
HETERO_MODELS = "smollm2-135m,gemma3-270m,smollm2-135m"

SIMILARITY = {"fedsem.relevance": "similarity"}
VARIANT_EXPERT_SELECTIVE = {"fedsem.consensus": "expert", "fedsem.selective": True, **SIMILARITY}

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
    # Answers cut at gen.max-new-tokens stay out of the vote.
    "fedsem-finished-only": ("fedsem", {"fedsem.vote-unfinished": False}),
    # Rules that weigh who knows: each client scores every public prompt by its top-3
    # similarity to its own private prompts (fedsem.relevance = "similarity").
    "fedsem-relevance": ("fedsem", {"fedsem.consensus": "relevance", **SIMILARITY}),
    "fedsem-expert": ("fedsem", {"fedsem.consensus": "expert", **SIMILARITY}),
    "fedsem-expert-lift": ("fedsem", {"fedsem.consensus": "expert", "fedsem.relevance": "lift"}),
    "fedsem-expert-selective": ("fedsem", VARIANT_EXPERT_SELECTIVE),
    "fedsem-expert-lift-selective": (
        "fedsem",
        {**VARIANT_EXPERT_SELECTIVE, "fedsem.relevance": "lift"},
    ),
    "local-hetero": ("local", {"model.names": HETERO_MODELS}),
    "fedsem-hetero": ("fedsem", {"model.names": HETERO_MODELS}),
    "fedsem-expert-selective-hetero": (
        "fedsem",
        {**VARIANT_EXPERT_SELECTIVE, "model.names": HETERO_MODELS},
    ),
}


def baseline(label: str) -> str:
    """The local run a variant is held against: the same models, trained alone."""
    return "local-hetero" if VARIANTS[label][1].get("model.names") == HETERO_MODELS else "local"


def main() -> None:
    """Run the study's variants for every seed, then write its tables and plots."""
    parser = bench_parser(__doc__)
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
    parser.add_argument(
        "--report-only", action="store_true", help="write the tables from finished runs only"
    )
    args = parser.parse_args()
    shared, compare = read_profile(args.profile)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    out = args.out.expanduser().resolve()
    federation = compare.get("federation-config", DEFAULT_FEDERATION)
    pairs = [(v, s) for s in seeds for v in variants]
    if args.order == "variant":
        pairs = [(v, s) for v in variants for s in seeds]
    runs = []
    for variant, seed in pairs:
        strategy, overrides = VARIANTS[variant]
        name = f"{variant}-s{seed}"
        folder = out / "runs" / name
        if finished(out, name):
            run = load_run(folder, strategy)
        elif args.report_only:
            continue
        else:
            config = {**shared, **overrides, "seed": seed}
            run = run_named(out, name, strategy, config, federation)
        run.label = variant
        runs.append(run)
        notes = {"profile": f"`{args.profile.name}`", "seeds": args.seeds}
        baselines = {v: baseline(v) for v in variants if baseline(v) != v}
        write_study(runs, out, notes, baselines)


if __name__ == "__main__":
    main()
