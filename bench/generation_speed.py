"""Answer tokens/s of the client's generation, variants against compute and bandwidth bounds.

For one model, in this process, through the app's client class (``client.answer``): the
same ``--prompts`` public prompts (construction FAQ questions), greedy, ``--max-new-tokens``,
batch ``--batch-size``, for each variant, interleaved over ``--repeats`` passes (A/B/A/B)
so that load from other processes hits every variant alike. ``--adapter`` times the
adapted model of a finished run (a ``final/client-K`` folder); without it the client's
fresh adapter (LoRA on, ``B = 0``: the same arithmetic cost, the base model's answers).

Variants (``--variants``, comma list):

``lora``     the adapter as a separate path beside every adapted layer (as trained)
``merged``   the adapter folded into the weights for generation (``gen.merge-adapter``)
``1-thread`` ``merged`` with one torch thread instead of all
``int8``     ``merged``, then torch's dynamic int8 quantization of every linear layer
             (weights per tensor, activations per batch) on a copy of the model
``compiled`` ``merged`` with ``torch.compile`` of the model's forward (the first pass
             includes the compile time)

Per variant: answer tokens (generated tokens up to and including EOS, re-tokenised),
seconds per pass, tokens/s of the best pass, answers identical to the first variant's,
and the answers' mean ROUGE-L against the FAQ's reference answers (quality for the
variants that change the arithmetic).

The bounds, for the pass's own shapes:

compute
    Every linear layer of the model (the output head included) multiplied, one after
    the other with its own weight (so the weights stream from memory as in a real
    step), by an input of the step's rows: ``batch`` rows for a decoding step,
    ``batch x prompt length`` for the prefill (the head then sees ``batch`` rows: the
    last position only). The best of several timings gives the seconds a step cannot
    beat on this machine with these shapes; summed over each batch's prefill and
    decoding steps (as many as its longest answer) it bounds the whole pass. Attention,
    normalisation and sampling are left out: they are what the bound does not count.
bandwidth
    A decoding step reads every weight once: with ``W`` bytes of weights and a
    measured copy bandwidth ``B``, ``b`` sequences make at most ``b x B / W`` tokens/s.

    .venv/bin/python bench/generation_speed.py --model smollm2-135m
    .venv/bin/python bench/generation_speed.py --adapter ~/.fedsem/runs/RUN/final/client-0
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import bench_parser, finish, machine, output_folder  # noqa: E402

VARIANTS = ("lora", "merged", "1-thread", "int8", "compiled")


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


def linear_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The weight of every linear layer a forward pass multiplies by, in model order.

    LoRA's own small matrices are left out (merged, they cost nothing extra).
    """
    return [
        (name, module.weight.detach())
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and "lora_" not in name
    ]


def matmul_seconds(weights: list[tuple[str, torch.Tensor]], rows: int, head_rows: int) -> float:
    """Best-of-5 seconds to multiply ``rows`` inputs by every weight in turn.

    The output head (the last weight) gets ``head_rows`` rows: generation computes
    logits for the last position only.
    """
    inputs: dict[int, torch.Tensor] = {}
    best = float("inf")
    with torch.inference_mode():
        for _ in range(5):
            t0 = time.perf_counter()
            for k, (_, w) in enumerate(weights):
                n = head_rows if k == len(weights) - 1 else rows
                x = inputs.setdefault(n * 100_000 + w.shape[1], torch.randn(n, w.shape[1]))
                torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - t0)
    return best


def hot_matmul_seconds(weights: list[tuple[str, torch.Tensor]], rows: int) -> float:
    """Seconds of one decoding step's linear layers with every weight hot in cache.

    Each distinct weight shape is timed on its own (best of 20 products of ``rows``
    inputs by one weight, used over and over) and counted as often as the model has
    it: the machine's pure matrix throughput at the step's shapes, memory left out.
    """
    counts: dict[tuple[int, int], int] = {}
    for _, w in weights:
        counts[tuple(w.shape)] = counts.get(tuple(w.shape), 0) + 1
    total = 0.0
    with torch.inference_mode():
        for (out_features, in_features), count in counts.items():
            w, x = torch.randn(out_features, in_features), torch.randn(rows, in_features)
            torch.nn.functional.linear(x, w)
            best = float("inf")
            for _ in range(20):
                t0 = time.perf_counter()
                torch.nn.functional.linear(x, w)
                best = min(best, time.perf_counter() - t0)
            total += best * count
    return total


def batch_shapes(client, prompts: list[str], texts: list[str], finished: list[bool], batch: int):
    """(batch rows, padded prompt length, decoding steps) of each generation batch."""
    from fedsem_app.clients.batching import encode_prompt

    shapes = []
    for start in range(0, len(prompts), batch):
        ids = [
            encode_prompt(client.tokenizer, client.prompt_text(p)) for p in prompts[start:][:batch]
        ]
        steps = max(
            len(encode_prompt(client.tokenizer, t)) + int(f) if t else 1
            for t, f in zip(texts[start:][:batch], finished[start:][:batch], strict=True)
        )
        shapes.append((len(ids), max(map(len, ids)), steps))
    return shapes


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def swapped_base(client, model: torch.nn.Module) -> Iterator[None]:
    """Generate with ``model`` in place of the client's base model (adapter disabled)."""
    wrapper = client.model.base_model
    original = wrapper.model
    wrapper.model = model
    try:
        yield
    finally:
        wrapper.model = original


def variant_runner(name: str, client) -> Callable[[Callable], object]:
    """A function that runs a generation call under variant ``name``'s settings."""
    from fedsem_app.clients.lora import merged_adapter

    state: dict[str, object] = {}

    def run(call: Callable):
        if name == "lora":
            return call()
        with merged_adapter(client.model):
            if name == "merged":
                return call()
            if name == "1-thread":
                with threads(1):
                    return call()
            if name == "int8":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch's notice that the API moves
                    quantized = torch.ao.quantization.quantize_dynamic(
                        copy.deepcopy(client.model.get_base_model()),
                        {torch.nn.Linear},
                        dtype=torch.qint8,
                    )
                with swapped_base(client, quantized):
                    return call()
            if name == "compiled":
                base = client.model.get_base_model()
                if "forward" not in state:
                    state["forward"] = torch.compile(base.forward, dynamic=True)
                plain = base.forward
                base.forward = state["forward"]
                try:
                    return call()
                finally:
                    base.forward = plain
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")

    return run


def main(argv: list[str] | None = None) -> int:
    """Measure every variant and print the table."""
    parser = bench_parser(__doc__, "generation-speed")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapter", type=Path, help="a final/client-K folder of a finished run")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default="lora,merged,1-thread,int8")
    args = parser.parse_args(argv)

    import zaragoza_construction_faq

    from fedsem_app.clients import load_client, set_num_threads
    from fedsem_app.clients.evaluation import rouge_l
    from fedsem_app.config.sections import GenerationConfig, LoraConfig, ModelConfig

    all_threads = set_num_threads(0)
    if args.adapter:
        from fedsem_app.tools.chat import load_adapter

        client, meta = load_adapter(args.adapter.expanduser())
        model_name = f"{meta['model-name']} + adapter {args.adapter}"
    else:
        client = load_client(
            args.model, LoraConfig(), device="cpu", cache_dir=ModelConfig().cache_path
        )
        client.set_adapter(None)
        model_name = args.model
    weights = linear_weights(client.model)
    weight_bytes = sum(t.numel() * t.element_size() for t in client.model.parameters())
    bw = bandwidth()
    rows = zaragoza_construction_faq.load(lang="en")[: args.prompts]
    prompts, references = [r["q"] for r in rows], [r["a"] for r in rows]
    # Unmerged here: each variant decides itself whether the adapter is folded in.
    settings = GenerationConfig(
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, merge_adapter=False
    )
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    runners = {name: variant_runner(name, client) for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    answers = {}
    for _ in range(args.repeats):
        for name in names:
            t0 = time.perf_counter()
            answers[name] = runners[name](lambda: client.answer(prompts, settings))
            seconds[name].append(time.perf_counter() - t0)

    # The compute bound of each variant's own batches (same shapes unless answers differ).
    decode_step = matmul_seconds(weights, args.batch_size, args.batch_size)
    hot_step = hot_matmul_seconds(weights, args.batch_size)
    out = []
    first = names[0]
    for name in names:
        a = answers[name]
        shapes = batch_shapes(client, prompts, a.texts, a.finished, args.batch_size)
        n_threads = 1 if name == "1-thread" else all_threads
        with threads(n_threads):
            # Prefill (many rows: compute-bound either way) plus the decoding steps,
            # with the weights streamed and with them hot in cache.
            prefill = sum(matmul_seconds(weights, b * length, b) for b, length, _ in shapes)
            streamed = prefill + sum(
                (steps - 1) * matmul_seconds(weights, b, b) for b, _, steps in shapes
            )
            hot = prefill + sum(
                (steps - 1) * hot_matmul_seconds(weights, b) for b, _, steps in shapes
            )
        tokens = sum(steps * b for b, _, steps in shapes)
        answer_tokens = sum(
            len(client.tokenizer(t, add_special_tokens=False)["input_ids"]) + int(f)
            for t, f in zip(a.texts, a.finished, strict=True)
        )
        best = min(seconds[name])
        out.append(
            {
                "variant": name,
                "threads": n_threads,
                "answer-tokens": answer_tokens,
                "slot-tokens": tokens,
                "seconds-all": ",".join(f"{s:.2f}" for s in seconds[name]),
                "seconds-best": best,
                "tokens-per-s": answer_tokens / best,
                "bound-seconds-streamed": streamed,
                "of-bound-streamed": streamed / best,
                "bound-seconds-hot": hot,
                "of-bound-hot": hot / best,
                "bandwidth-bound-tokens-per-s": args.batch_size * bw / weight_bytes,
                "same-as-first": sum(
                    x == y for x, y in zip(a.texts, answers[first].texts, strict=True)
                ),
                "rouge-l": float(np.mean(rouge_l(a.texts, references))),
            }
        )
    meta_out = {
        "model": model_name,
        "weight-bytes": weight_bytes,
        "bandwidth-gb-s": bw / 1e9,
        "decode-step-bound-ms": decode_step * 1e3,
        "decode-step-hot-ms": hot_step * 1e3,
        "decode-step-gflop": 2 * args.batch_size * sum(w.numel() for _, w in weights) / 1e9,
        "threads": all_threads,
        "prompts": args.prompts,
        "batch-size": args.batch_size,
        "max-new-tokens": args.max_new_tokens,
        **machine(),
    }
    folder = output_folder("generation-speed", args.out)
    columns = [
        ("variant", "variant", ""),
        ("threads", "threads", "d"),
        ("answer-tokens", "answer tokens", "d"),
        ("seconds-all", "seconds (each pass)", ""),
        ("tokens-per-s", "tokens/s (best)", ".1f"),
        ("bound-seconds-hot", "compute bound s (hot)", ".2f"),
        ("of-bound-hot", "of it", ".0%"),
        ("bound-seconds-streamed", "compute bound s (streamed)", ".2f"),
        ("of-bound-streamed", "of it", ".0%"),
        ("bandwidth-bound-tokens-per-s", "bandwidth bound tokens/s", ".0f"),
        ("same-as-first", f"same answers (of {args.prompts})", "d"),
        ("rouge-l", "ROUGE-L", ".3f"),
    ]
    print(
        f"{model_name}: {weight_bytes / 1e6:.0f} MB of weights, bandwidth {bw / 1e9:.1f} GB/s, "
        f"decoding step of {args.batch_size}: {meta_out['decode-step-gflop']:.2f} GFLOP in "
        f"linear layers, bound {decode_step * 1e3:.1f} ms with the weights streamed, "
        f"{hot_step * 1e3:.1f} ms hot in cache "
        f"({meta_out['decode-step-gflop'] / hot_step:.0f} GFLOP/s)"
    )
    finish(folder, "generation_speed", out, meta_out, columns, markdown_file=True)
    print(f"results in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
