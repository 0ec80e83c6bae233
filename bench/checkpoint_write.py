"""Time one checkpoint write per round, as the server does it after every round.

Two payloads:

- fedsem: the state after a round of the default run: 16 pseudo-labels (the
  dataset's reference answers cut to about 32 tokens, as generated answers are)
  plus the metrics rows so far; no arrays.
- fedavg-lora: the same plus the global LoRA adapter of SmolLM2-135M-Instruct
  (rank 8 on the attention projections, the default), built from the converted
  model in the model cache.

Usage (with the CPU to itself)::

    python bench/checkpoint_write.py --repeats 20
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord

from fedsem_app.config.app import AppConfig
from fedsem_app.data.records import QAPair
from fedsem_app.data.split import load_split
from fedsem_app.quantize import adapter_record
from fedsem_app.run.checkpoint import CHECKPOINT_DIR, save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_parser  # noqa: E402


def fedsem_state(cfg: AppConfig) -> dict:
    """16 pseudo-labels with answers of about 32 tokens (~150 characters)."""
    split = load_split(cfg.data, cfg.seed)
    test = split.test[: cfg.fedsem.prompts_per_round]
    labels = [QAPair(q.id, q.prompt, q.answer[:150], q.category) for q in test]
    return {"pseudo-labels": [vars(q) for q in labels]}


def run_state(rounds: int) -> dict:
    """Metrics rows of a run that has done ``rounds`` rounds (about 40 columns each)."""
    row = {f"metric-{i}": 0.123456789 * i for i in range(40)}
    rows = [{"round": r, **row} for r in range(1, rounds + 1)]
    return {"rows": rows, "byte-totals": {"bytes-down-train": 10**6}, "log-sizes": {}}


def smollm2_adapter(cfg: AppConfig) -> ArrayRecord:
    """The fresh global adapter of SmolLM2-135M, as fedavg-lora's server builds it."""
    from fedsem_app.clients import clear_client_cache, load_client

    client = load_client(
        "smollm2-135m", cfg.lora, device="cpu", cache_dir=cfg.model.cache_path, seed=cfg.seed
    )
    state = client.adapter_state()
    clear_client_cache()
    return adapter_record(state)


def time_writes(arrays: ArrayRecord | None, strategy_state: dict, rounds: int, repeats: int):
    """Median, min and max seconds of ``repeats`` writes, and bytes written per write."""
    cfg = AppConfig()
    times, written = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(repeats):
            t0 = time.perf_counter()
            written = save_checkpoint(
                folder,
                rounds + i,  # a new arrays file every round, the old one deleted
                strategy="bench",
                config=cfg.to_flat(),
                strategy_state=strategy_state,
                run_state=run_state(rounds),
                arrays=arrays,
            )
            times.append(time.perf_counter() - t0)
        files = sorted(p.name for p in (folder / CHECKPOINT_DIR).iterdir())
    return {
        "median-s": statistics.median(times),
        "min-s": min(times),
        "max-s": max(times),
        "bytes": written,
        "files": files,
    }


def main() -> None:
    """Print one JSON line per payload."""
    parser = bench_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="metrics rows in the state")
    args = parser.parse_args()
    cfg = AppConfig()
    state = fedsem_state(cfg)
    result = time_writes(None, state, args.rounds, args.repeats)
    print(json.dumps({"payload": "fedsem", **result}))
    adapter = smollm2_adapter(cfg)
    params = sum(int(np.prod(a.shape)) for a in adapter.values())
    result = time_writes(adapter, {}, args.rounds, args.repeats)
    print(json.dumps({"payload": "fedavg-lora smollm2-135m", "parameters": params, **result}))


if __name__ == "__main__":
    main()
