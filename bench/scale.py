"""K-scaling: server seconds, peak memory and bytes per round against the number of clients.

Runs ``fedsem`` and ``fedavg-lora`` with K simulated clients (tiny-llama, the app's real
ClientApp handlers called in this process through the test suite's Ray-free fake Grid,
every message through a protobuf round trip), ``fraction-train`` and
``fraction-evaluate`` sampling a share of them each round, and records per round:

* ``server-seconds``: the strategy's aggregate_train (validation, embedding and
  consensus for fedsem; checks and averaging for fedavg-lora), as the run log has it;
* peak RSS of the process above its RSS before the run (server and clients share the
  process here, so it bounds the server's memory from above);
* bytes per round, both directions, from the byte meter.

Run from the project root::

    .venv/bin/python bench/scale.py --clients 50,100 --fraction 0.1 --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PeakRSS, bench_parser, finish, machine, output_folder  # noqa: E402


def run_cell(strategy: str, k: int, args: argparse.Namespace) -> dict:
    """One run of ``strategy`` with ``k`` clients; mean per-round numbers over rounds 1+."""
    from fedsem_app.client_app import app as client_app
    from fedsem_app.config.app import load_app_config
    from fedsem_app.data.split import load_split
    from fedsem_app.run.meter import MeteredGrid
    from fedsem_app.run.results import RunLog, make_run_folder
    from fedsem_app.strategies import get_strategy_class
    from tests.fake_grid import FakeGrid

    cfg = load_app_config(
        {
            "strategy": strategy,
            "model.names": "tiny-llama",
            "num-server-rounds": args.rounds,
            "fraction-train": args.fraction,
            "fraction-evaluate": args.fraction,
            "data.partitioner": "iid",
            "train.local-steps": 1,
            "gen.max-new-tokens": 16,
            "fedsem.prompts-per-round": 8,
            "eval.num-prompts": 4,
            "eval.generate": False,
            "model.device": "cpu",
            "results-dir": tempfile.mkdtemp(prefix="fedsem-scale-"),
        }
    )

    def handler(msg, ctx):
        return client_app(msg, ctx)

    grid = MeteredGrid(FakeGrid(handler, k, cfg.to_flat()))
    folder = make_run_folder(cfg.results_root, f"{strategy}-{k}", strategy)
    run_log = RunLog(folder, cfg.to_flat(), cfg.num_server_rounds, grid.snapshot)
    instance = get_strategy_class(strategy)(cfg, load_split(cfg.data, cfg.seed), run_log)
    t0 = time.perf_counter()
    with PeakRSS() as peak:
        instance.start(
            grid=grid, initial_arrays=instance.initial_arrays(), num_rounds=cfg.num_server_rounds
        )
    rows = [r for r in run_log.rows if r["round"] >= 1]
    bytes_round = sum(v for key, v in grid.totals.items() if key[1] != "query") / (args.rounds + 1)
    return {
        "strategy": strategy,
        "clients": k,
        "trained / round": sum(r.get("train-replies", 0) for r in rows) / len(rows),
        "server-s / round": sum(r.get("server-seconds", 0.0) for r in rows) / len(rows),
        "peak-rss-mb": peak.above_start / 1e6,
        "bytes / round": bytes_round,
        "wall-s": time.perf_counter() - t0,
    }


COLUMNS = [
    ("strategy", "strategy", ""),
    ("clients", "K", "d"),
    ("trained / round", "trained / round", ".1f"),
    ("server-s / round", "server s / round", ".3f"),
    ("peak-rss-mb", "peak RSS above start (MB)", ".0f"),
    ("bytes / round", "bytes / round (incl. round 0)", ",.0f"),
    ("wall-s", "wall s", ".0f"),
]


def main(argv: list[str] | None = None) -> int:
    """Run every (strategy, K) cell and print the table."""
    parser = bench_parser(__doc__, "scale")
    parser.add_argument("--clients", default="50,100")
    parser.add_argument("--strategies", default="fedsem,fedavg-lora")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    rows = [
        run_cell(strategy, int(k), args)
        for strategy in args.strategies.split(",")
        for k in args.clients.split(",")
    ]
    folder = output_folder("scale", args.out)
    meta = {"fraction": args.fraction, **machine()}
    finish(folder, "scale", rows, meta, COLUMNS, markdown_file=True)
    print(f"results in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
