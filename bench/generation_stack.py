"""Generation time of the client under the stack's options: static KV cache, eager attention, bf16.

For one model, through the app's client class (``client.answer``, greedy, batch 16), each
option against the default (SDPA attention, dynamic cache, float32 weights), interleaved
over ``--repeats`` passes so that load from other processes hits every option alike.
``same`` counts answers identical to the default's. The static cache is passed through
transformers' ``GenerationConfig(cache_implementation="static")``, which the client does
not expose as a setting (nothing here won; see BENCHMARKS.md 4b).

    .venv/bin/python bench/generation_stack.py --model smollm2-135m --threads 1
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_parser, markdown  # noqa: E402

COLUMNS = [
    ("option", "option", ""),
    ("passes", "seconds (each pass)", ""),
    ("best", "best", ".1f"),
    ("ratio", "vs default", ">"),
    ("same", "same answers", ">"),
]


def main(argv: list[str] | None = None) -> int:
    """Time every option and print seconds and identical answers."""
    parser = bench_parser(__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = all cores)")
    args = parser.parse_args(argv)

    import torch
    import zaragoza_construction_faq

    import fedsem_app.clients.causal_lm as base
    from fedsem_app.clients import load_client, set_num_threads
    from fedsem_app.config.sections import GenerationConfig, LoraConfig, ModelConfig

    threads = set_num_threads(args.threads)
    client = load_client(args.model, LoraConfig(), device="cpu", cache_dir=ModelConfig().cache_path)
    client.set_adapter(None)
    model = client.model.get_base_model()
    prompts = [r["q"] for r in zaragoza_construction_faq.load(lang="en")[: args.prompts]]
    settings = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=16)
    hf_config = base.HFGenerationConfig

    def attention(name: str):
        return lambda: model.set_attn_implementation(name)

    def dtype(value: torch.dtype):
        def apply() -> None:
            client.model.to(value)
            client.dtype = value

        return apply

    def nothing() -> None:
        return None

    # option -> (set up, undo, extra transformers GenerationConfig fields)
    options = {
        "default": (nothing, nothing, {}),
        "static-cache": (nothing, nothing, {"cache_implementation": "static"}),
        "eager-attention": (attention("eager"), attention("sdpa"), {}),
        "bf16-weights": (dtype(torch.bfloat16), dtype(torch.float32), {}),
    }
    seconds: dict[str, list[float]] = {name: [] for name in options}
    texts: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, (setup, undo, extra) in options.items():
            setup()
            base.HFGenerationConfig = lambda **kw: hf_config(**kw, **extra)  # noqa: B023
            t0 = time.perf_counter()
            texts[name] = client.answer(prompts, settings).texts
            seconds[name].append(time.perf_counter() - t0)
            base.HFGenerationConfig = hf_config
            undo()
            print(f"{name}: {seconds[name][-1]:.1f} s", flush=True)
    print(f"{args.model}, {args.prompts} prompts, {threads} thread(s)")
    reference = min(seconds["default"])
    rows = []
    for name in options:
        best = min(seconds[name])
        same = sum(a == b for a, b in zip(texts[name], texts["default"], strict=True))
        rows.append(
            {
                "option": name,
                "passes": ", ".join(f"{s:.1f}" for s in seconds[name]),
                "best": best,
                "ratio": f"{best / reference:.2f}x",
                "same": f"{same}/{len(prompts)}",
            }
        )
    print(markdown(rows, COLUMNS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
