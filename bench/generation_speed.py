"""Answer tokens/s of the client's generation, variants against a memory-bandwidth bound.

For one model, in this process, through the app's client class (``client.answer``): the
same ``--prompts`` public prompts (construction FAQ questions), greedy, ``--max-new-tokens``,
for each variant (generation batch size, length-sorted batches), interleaved over
``--repeats`` passes (A/B/A/B) so that load from other processes hits every variant
alike. Tokens are the generated tokens up to and including EOS. ``same`` counts the
answers identical to the first variant's.

The bound: each decoding step reads every weight once, so with ``W`` bytes of weights
and a measured memory bandwidth ``B`` (a numpy copy of a 512 MB array, read + write
counted), a batch of ``b`` sequences makes at most ``b x B / W`` tokens/s (KV cache and
activations ignored; prefill not counted).

    .venv/bin/python bench/generation_speed.py --model smollm2-135m
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.common import bench_parser, finish, machine, output_folder  # noqa: E402


def bandwidth() -> float:
    """Memory bandwidth in bytes/s: best of 5 copies of a 512 MB array (read + write)."""
    src = np.ones(2**27, dtype=np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def main(argv: list[str] | None = None) -> int:
    """Measure every variant and print the table."""
    parser = bench_parser(__doc__, "generation-speed")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default="16,16-sorted,32")
    args = parser.parse_args(argv)

    import zaragoza_construction_faq

    from fedsem_app.clients import load_client, set_num_threads
    from fedsem_app.clients.batching import encode_prompt
    from fedsem_app.config.sections import GenerationConfig, LoraConfig, ModelConfig

    threads = set_num_threads(0)
    client = load_client(args.model, LoraConfig(), device="cpu", cache_dir=ModelConfig().cache_path)
    client.set_adapter(None)
    weight_bytes = sum(t.numel() * t.element_size() for t in client.model.parameters())
    bw = bandwidth()
    prompts = [r["q"] for r in zaragoza_construction_faq.load(lang="en")[: args.prompts]]
    settings = {}
    for name in args.variants.split(","):
        size, _, sort = name.partition("-")
        settings[name] = GenerationConfig(
            max_new_tokens=args.max_new_tokens,
            batch_size=int(size),
            sort_by_length=sort == "sorted",
        )
    seconds = {name: [] for name in settings}
    answers = {}
    for _ in range(args.repeats):
        for name, cfg in settings.items():
            t0 = time.perf_counter()
            answers[name] = client.answer(prompts, cfg)
            seconds[name].append(time.perf_counter() - t0)
    # Answer tokens: the texts re-tokenized, plus one EOS per finished answer (close to,
    # not exactly, the generated ids: decoding and re-encoding can merge tokens).
    first = next(iter(settings))
    rows = []
    for name, cfg in settings.items():
        a = answers[name]
        tokens = sum(len(encode_prompt(client.tokenizer, t)) if t else 0 for t in a.texts) + sum(
            a.finished
        )
        best = min(seconds[name])
        bound = cfg.batch_size * bw / weight_bytes
        rows.append(
            {
                "variant": name,
                "batch": cfg.batch_size,
                "sorted": cfg.sort_by_length,
                "tokens": tokens,
                "seconds-best": best,
                "seconds-all": ",".join(f"{s:.1f}" for s in seconds[name]),
                "tokens-per-s": tokens / best,
                "bound-tokens-per-s": bound,
                "fraction-of-bound": tokens / best / bound,
                "same-as-first": sum(
                    x == y for x, y in zip(a.texts, answers[first].texts, strict=True)
                ),
            }
        )
    meta = {
        "model": args.model,
        "weight-bytes": weight_bytes,
        "bandwidth-gb-s": bw / 1e9,
        "threads": threads,
        "prompts": args.prompts,
        **machine(),
    }
    folder = output_folder("generation-speed", args.out)
    columns = [
        ("variant", "variant", ""),
        ("tokens", "answer tokens", "d"),
        ("seconds-all", "seconds (each pass)", ""),
        ("tokens-per-s", "tokens/s (best)", ".1f"),
        ("bound-tokens-per-s", "bound tokens/s", ".0f"),
        ("fraction-of-bound", "of bound", ".1%"),
        ("same-as-first", f"same answers (of {args.prompts})", "d"),
    ]
    print(f"{args.model}: {weight_bytes / 1e6:.0f} MB of weights, bandwidth {bw / 1e9:.1f} GB/s")
    finish(folder, "generation_speed", rows, meta, columns, markdown_file=True)
    print(f"results in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
