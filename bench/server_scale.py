"""Server scale: validate + embed + consensus for K clients x P prompts, against raw encode.

For every cell of the grid (K clients, P public prompts) it builds K synthetic replies
as clients send them (a ConfigRecord of ids, texts, confidences), then times the real
server code path of a FedSem round:

``validate``   :func:`fedsem_app.strategies.validation.check_answers` on every reply
``grid``       :func:`fedsem_app.strategies.fedsem.answer_grid`
``embed``      the embedding part of :func:`~fedsem_app.strategies.fedsem.vote_in_chunks`
``consensus``  the consensus part of it (rule ``medoid``, vectorised over prompts)

and, in the same process on the same texts, one raw ``SentenceTransformer.encode``
call (batch 128, normalised). ``overhead`` = (validate + grid + embed + consensus) /
raw encode. Peak memory is the peak RSS above the RSS before the step (sampled
every 5 ms), next to what a (P, K, 384) float32 tensor of the whole round would take.

Answers are synthetic but of realistic length: the packaged construction FAQ's
answers cut to 12-34 words (about 30 encoder tokens), one per prompt, and each
client's copy perturbed (words dropped or swapped, 1 in 5 answering another
prompt), so the texts differ and the consensus has something to decide.

Cells with more than ``--max-texts`` answers (default 4096) are not embedded: on 2
CPU cores the encoder manages roughly 75-400 answers a second depending on load, so
the largest cell, 524,288 answers, would take 20 minutes to 2 hours per encode. There validate,
grid and consensus are measured for real on random unit embeddings, and embed and raw
encode are **extrapolated** from the encoder throughput measured on the largest
embedded cell. Such rows say ``extrapolated``.

Run from the project root, with the CPU to itself::

    .venv/bin/python bench/server_scale.py
    .venv/bin/python bench/server_scale.py --clients 2,8 --prompts 64,512 --out /tmp/scale
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PeakRSS, bench_parser, finish, machine, output_folder  # noqa: E402
from fedsem_app import protocol as p  # noqa: E402
from fedsem_app.clients.energy import EnergyMeter  # noqa: E402
from fedsem_app.config.sections import FedSemConfig  # noqa: E402
from fedsem_app.embedding import get_embedder  # noqa: E402
from fedsem_app.strategies.fedsem import answer_grid, embed_grid, vote_in_chunks  # noqa: E402
from fedsem_app.strategies.validation import check_answers  # noqa: E402

DIM = 384  # all-MiniLM-L6-v2
ENCODE_BATCH = 128  # fedsem_app.embedding.embed's default


def base_answers() -> list[list[str]]:
    """The packaged dataset's answers as word lists."""
    import zaragoza_construction_faq

    return [row["a"].split() for row in zaragoza_construction_faq.load(lang="en")]


def synthetic_round(num_prompts: int, num_clients: int, seed: int = 0):
    """K replies (RecordDicts as clients send them) to P prompts, and the prompt ids."""
    from flwr.app import ConfigRecord, RecordDict

    bases = base_answers()
    vocabulary = sorted({w for words in bases for w in words})
    rng = np.random.default_rng(seed)
    lengths = rng.integers(12, 35, size=num_prompts)
    prompt_words = [bases[i % len(bases)][: lengths[i]] for i in range(num_prompts)]
    replies = []
    for k in range(num_clients):
        texts = []
        for i in range(num_prompts):
            words = list(prompt_words[i])
            if rng.random() < 0.2:  # an answer to another prompt: disagreement
                words = list(prompt_words[(i + 1 + k) % num_prompts])
            for _ in range(rng.integers(0, 4)):  # drop or swap a few words
                j = rng.integers(len(words))
                if rng.random() < 0.5 and len(words) > 4:
                    del words[j]
                else:
                    words[j] = vocabulary[rng.integers(len(vocabulary))]
            texts.append(" ".join(words))
        record = ConfigRecord(
            {
                p.IDS: list(range(num_prompts)),
                p.TEXTS: texts,
                p.CONFIDENCES: (-rng.random(num_prompts)).tolist(),
            }
        )
        replies.append(RecordDict({p.ANSWERS: record}))
    return replies, list(range(num_prompts))


def random_embed(texts, mask, embedder):
    """Stand-in embedder for cells too large to embed here: random unit rows."""
    rng = np.random.default_rng(len(texts))
    grid = rng.standard_normal((*mask.shape, DIM), dtype=np.float32)
    grid /= np.linalg.norm(grid, axis=-1, keepdims=True)
    grid[~mask] = 0.0
    return torch.from_numpy(grid)


def run_cell(k: int, num_prompts: int, cfg: FedSemConfig, embed: bool) -> dict:
    """Time one cell; ``embed=False`` uses random embeddings (embed time extrapolated later)."""
    replies, ids = synthetic_round(num_prompts, k)
    encoder = get_embedder(cfg.embedder, "cpu")
    gc.collect()
    with PeakRSS() as peak, EnergyMeter() as meter:
        t0 = time.perf_counter()
        valid = [check_answers(r, ids, cfg.max_answer_chars)[0] for r in replies]
        t1 = time.perf_counter()
        texts, mask, confidences, _ = answer_grid(valid)  # finished: all vote (the default)
        t2 = time.perf_counter()
        result, embed_s, consensus_s = vote_in_chunks(
            texts, mask, confidences, cfg, embed_fn=embed_grid if embed else random_embed
        )
    flat = [texts[i][j] for i, j in zip(*np.nonzero(mask), strict=True)]
    row = {
        "clients": k,
        "prompts": num_prompts,
        "answers": len(flat),
        "validate-s": t1 - t0,
        "grid-s": t2 - t1,
        "embed-s": embed_s,
        "consensus-s": consensus_s,
        "cpu-s": meter.reading.cpu_seconds,
        "peak-rss-mb": peak.above_start / 1e6,
        "full-grid-mb": num_prompts * k * DIM * 4 / 1e6,
        "pseudo-labels": int((~result.abstained).sum()),
        "embedded": "measured" if embed else "extrapolated",
    }
    if embed:
        gc.collect()
        t0 = time.perf_counter()
        encoder.encode(
            flat,
            batch_size=ENCODE_BATCH,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        row["raw-encode-s"] = time.perf_counter() - t0
        tokens = encoder.tokenizer(flat[:2000])["input_ids"]
        row["tokens-per-answer"] = float(np.mean([len(t) for t in tokens]))
    return row


def derive(row: dict, rate_ours: float, rate_raw: float) -> dict:
    """Derived columns; extrapolated cells get embed and raw encode from the rates."""
    if row["embedded"] == "extrapolated":
        row["embed-s"] = row["answers"] / rate_ours
        row["raw-encode-s"] = row["answers"] / rate_raw
    total = row["validate-s"] + row["grid-s"] + row["embed-s"] + row["consensus-s"]
    row["total-s"] = total
    row["overhead"] = total / row["raw-encode-s"]
    row["embed-vs-raw"] = row["embed-s"] / row["raw-encode-s"]
    row["consensus-share"] = row["consensus-s"] / total
    return row


COLUMNS = [
    ("clients", "K", ""),
    ("prompts", "P", ""),
    ("answers", "answers", ""),
    ("validate-s", "validate s", ".3f"),
    ("embed-s", "embed s", ".2f"),
    ("consensus-s", "consensus s", ".3f"),
    ("raw-encode-s", "raw encode s", ".2f"),
    ("overhead", "ours / raw", ".3f"),
    ("consensus-share", "consensus share", ".2%"),
    ("peak-rss-mb", "peak RSS MB", ".0f"),
    ("full-grid-mb", "K x P x 384 fp32 MB", ".0f"),
    ("embedded", "embedding", ""),
]


def main(argv: list[str] | None = None) -> int:
    """Run the grid and print the table."""
    parser = bench_parser(__doc__, "server-scale")
    parser.add_argument("--clients", default="2,8,32,128")
    parser.add_argument("--prompts", default="64,512,4096")
    parser.add_argument(
        "--max-texts", type=int, default=4096, help="embed cells with at most this many answers"
    )
    args = parser.parse_args(argv)
    folder = output_folder("server-scale", args.out)
    cfg = FedSemConfig()
    clients = [int(x) for x in args.clients.split(",")]
    prompts = [int(x) for x in args.prompts.split(",")]

    get_embedder(cfg.embedder, "cpu").encode(["warm up"] * 256, batch_size=ENCODE_BATCH)
    cells = sorted(((k, q) for k in clients for q in prompts), key=lambda c: c[0] * c[1])
    rows = []
    for k, q in cells:
        embed = k * q <= args.max_texts
        started = time.perf_counter()
        rows.append(run_cell(k, q, cfg, embed))
        print(f"K={k} P={q}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    measured = [r for r in rows if r["embedded"] == "measured"]
    if not measured:
        raise SystemExit("no cell was embedded: raise --max-texts")
    largest = max(measured, key=lambda r: r["answers"])
    rate_ours = largest["answers"] / largest["embed-s"]
    rate_raw = largest["answers"] / largest["raw-encode-s"]
    rows = [derive(r, rate_ours, rate_raw) for r in rows]
    rows.sort(key=lambda r: (r["clients"], r["prompts"]))

    meta = {
        **machine(),
        "embedder": cfg.embedder,
        "consensus": cfg.consensus,
        "max-texts": args.max_texts,
        "encode-rate-ours": rate_ours,
        "encode-rate-raw": rate_raw,
        "rates-from": f"K={largest['clients']} P={largest['prompts']}",
    }
    tokens = np.mean([r["tokens-per-answer"] for r in measured])
    print(
        f"Server scale, all-MiniLM-L6-v2 on CPU, medoid consensus; answers of "
        f"{tokens:.1f} encoder tokens on average. Extrapolated rows: embed and raw "
        f"encode from {rate_ours:.0f} / {rate_raw:.0f} answers/s measured at "
        f"{meta['rates-from']}.\n"
    )
    finish(folder, "server_scale", rows, meta, COLUMNS)
    print(f"\nwrote {folder}/server_scale.json, server_scale.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
