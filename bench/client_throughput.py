"""Client throughput: generated tokens/s batched versus one prompt at a time, train steps/s.

For each model, in a fresh process of its own (so peak memory is that client's), through
the app's client class (:func:`fedsem_app.clients.load_client`, ``client.generate``,
``client.train``):

* generation of the same public prompts (greedy, ``--max-new-tokens``), first in
  batches of ``--batch`` prompts, then one prompt at a time; tokens are the generated
  tokens up to and including EOS, counted exactly from ``generate``'s output;
  ``same answers`` says how many answers the two passes agree on (left padding may
  change greedy choices in the last digits);
* LoRA training: ``--steps`` AdamW steps at batch 4 x ``--max-seq-len`` tokens on
  private-data pairs (the first step included: it builds the optimizer state);
* peak RSS of the process (``ru_maxrss``; includes Python, torch and the model) and
  the RSS after the imports, before the model load;
* CPU-seconds of each phase; energy is not measured on a CPU (no counter we can
  read; no estimate from assumed watts).

Run from the project root, with the CPU to itself::

    .venv/bin/python bench/client_throughput.py
    .venv/bin/python bench/client_throughput.py --models tiny-llama --out /tmp/tp
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_parser, finish, machine, output_folder, rss_bytes  # noqa: E402

DEFAULT_MODELS = "tiny-llama,tiny-gpt2,smollm2-135m"


def measure(model: str, args: argparse.Namespace) -> dict:
    """Measure one model in this process (the child side)."""
    rss_imports = rss_bytes()
    import zaragoza_construction_faq

    from fedsem_app.clients import load_client, set_num_threads
    from fedsem_app.clients.energy import EnergyMeter, peak_rss_bytes
    from fedsem_app.clients.generation import answer_length
    from fedsem_app.config.sections import GenerationConfig, LoraConfig, ModelConfig, TrainConfig

    threads = set_num_threads(0)
    rss_imports = rss_bytes()
    t0 = time.perf_counter()
    client = load_client(model, LoraConfig(), device="cpu", cache_dir=ModelConfig().cache_path)
    load_s = time.perf_counter() - t0
    rows = zaragoza_construction_faq.load(lang="en")
    prompts = [r["q"] for r in rows[: args.prompts]]
    pairs = [(r["q"], r["a"]) for r in rows[100:164]]

    counted: list[int] = []
    generate = client.model.generate

    def counting_generate(*a, **kw):
        # Count the generated tokens of every sequence up to and including its EOS.
        sequences = generate(*a, **kw)
        width = kw["input_ids"].shape[1]
        for ids in sequences[:, width:].tolist():
            counted.append(answer_length(ids, client.eos_ids))
        return sequences

    client.model.generate = counting_generate
    client.generate(prompts[:2], GenerationConfig(args.max_new_tokens, 2))  # warm-up
    result = {"model": model, "threads": threads, "load-s": load_s}
    answers = {}
    for label, batch in (("batched", args.batch), ("single", 1)):
        counted.clear()
        with EnergyMeter() as meter:
            texts, _ = client.generate(prompts, GenerationConfig(args.max_new_tokens, batch))
        reading = meter.reading
        answers[label] = texts
        result[f"{label}-s"] = reading.wall_seconds
        result[f"{label}-tokens"] = sum(counted)
        result[f"{label}-tok-s"] = sum(counted) / reading.wall_seconds
        result[f"{label}-cpu-s"] = reading.cpu_seconds
    result["batch-speedup"] = result["batched-tok-s"] / result["single-tok-s"]
    result["same-answers"] = sum(
        a == b for a, b in zip(answers["batched"], answers["single"], strict=True)
    )
    train = TrainConfig(local_steps=args.steps, batch_size=4, max_seq_len=args.max_seq_len)
    with EnergyMeter() as meter:
        stats = client.train(pairs, train, seed=0)
    result["train-steps"] = stats["train-steps"]
    result["train-s"] = meter.reading.wall_seconds
    result["steps-s"] = stats["train-steps"] / meter.reading.wall_seconds
    result["train-cpu-s"] = meter.reading.cpu_seconds
    result["energy"] = meter.reading.energy_text()
    result["rss-imports-mb"] = rss_imports / 1e6
    result["peak-rss-mb"] = peak_rss_bytes() / 1e6
    result["params-m"] = sum(p.numel() for p in client.model.parameters()) / 1e6
    return result


COLUMNS = [
    ("model", "model", ""),
    ("params-m", "params M", ".1f"),
    ("batched-tok-s", "tok/s batched", ".1f"),
    ("single-tok-s", "tok/s one at a time", ".1f"),
    ("batch-speedup", "batched / single", ".2f"),
    ("same-answers", "same answers", ""),
    ("steps-s", "train steps/s", ".3f"),
    ("peak-rss-mb", "peak RSS MB", ".0f"),
    ("rss-imports-mb", "RSS before load MB", ".0f"),
    ("energy", "energy", ""),
]


def main(argv: list[str] | None = None) -> int:
    """Run every model in its own process and print the table."""
    parser = bench_parser(__doc__, "client-throughput")
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--prompts", type=int, default=16, help="public prompts generated")
    parser.add_argument("--batch", type=int, default=16, help="generation batch size")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="training steps")
    parser.add_argument("--max-seq-len", type=int, default=96)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(measure(args.child, args)))
        return 0

    folder = output_folder("client-throughput", args.out)
    rows = []
    for model in args.models.split(","):
        cmd = [sys.executable, __file__, "--child", model, *(argv or sys.argv[1:])]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{model}: failed")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{model}: done", file=sys.stderr)
    meta = {**machine(), **{k: v for k, v in vars(args).items() if k != "child"}}
    print(
        f"Client throughput on CPU: {args.prompts} prompts x up to {args.max_new_tokens} new "
        f"tokens, batch {args.batch} vs 1; {args.steps} LoRA steps (rank 8, attention) at "
        f"batch 4 x {args.max_seq_len} tokens.\n"
    )
    finish(folder, "client_throughput", rows, meta, COLUMNS)
    print(f"\nwrote {folder}/client_throughput.json, client_throughput.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
