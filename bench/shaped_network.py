"""Round time on shaped links: the real deployment at several bandwidths per node.

The deployment of ``deploy/`` (SuperLink with TLS, node authentication and the
Fleet-only proxy; registered SuperNodes) runs inside Linux network namespaces:

```
 namespace PREFIX-link                         namespace PREFIX-nI (one per SuperNode)
 nginx 0.0.0.0:PORT, flower-superlink           flower-supernode -> 10.213.I.1:PORT
 127.0.0.1:PORT+1, SuperExec, ServerApp,        its ClientApps (127.0.0.1, loopback)
 the operator's flwr run
      10.213.I.1 PREFIX-lI  <==== veth pair ====>  PREFIX-nI 10.213.I.2
                 tbf egress                        tbf egress
```

Each veth end's egress is shaped with a token-bucket filter (``tc qdisc tbf``) at
the bandwidth, so every node has its own link of that rate in both directions
(netem is not available here; tbf is). First the script measures the payload rate
a plain TCP socket achieves through each shaped link, both directions; then, at
each bandwidth and for each strategy, one ``flwr run`` on the same deployment, and
per round it records

* wall time (the ServerApp's ``round-seconds``: configure train to the end of
  evaluate),
* client compute: the slowest node's train + generate seconds plus the slowest
  node's evaluate seconds (the nodes run in parallel, each phase waits for the
  last reply), from the run's ``clients.jsonl``,
* server seconds (``server-seconds``: validation, embedding, consensus / FedAvg),
* bytes per node, both directions (the app's byte meter, ``metrics.json``),
* rest = wall - compute - server: transfer plus Flower's scheduling and the start
  of a ClientApp process per message (imports, model load from the cache). The
  same overhead exists without shaping, so the transfer share is estimated as
  ``rest - rest at the highest bandwidth`` (where the bytes take well under a
  second) plus the model's transfer time there.

Then the round-time model (``fedsem_app.tools.roundtime``) is checked against the
points, and the crossover bandwidth is computed for SmolLM2 (measured) and
projected for Llama-3.1-8B/70B/405B from the analytic adapter bytes and a stated
generation-speed assumption.

Run as root from the project root (needs ``ip netns``, ``tc``, nginx, openssl)::

    python bench/shaped_network.py                     # 1000,100,20,5 Mbit/s, both strategies
    python bench/shaped_network.py --bandwidths 100,5 --strategies fedsem --out /tmp/shaped
    python bench/shaped_network.py --report /tmp/shaped   # tables again from its results

Everything it starts (namespaces, veth pairs, processes) is removed on exit, also
on Ctrl-C or an error. This file holds the runs; the namespaces, the deployment,
the analysis and the tables are in :mod:`bench.shaped`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, bench_parser, human_bytes, machine, output_folder, write_results  # noqa: E402
from bench.shaped.analysis import (  # noqa: E402
    CPU_BANDWIDTH,
    CPU_FRACTION,
    GPU_BANDWIDTH,
    GPU_FRACTION,
    GPUS,
    round_rows,
)
from bench.shaped.deployment import PATH, Deployment  # noqa: E402
from bench.shaped.net import ShapedNet, burst_bytes, log, measure_rate, sh  # noqa: E402
from bench.shaped.report import report  # noqa: E402
from fedsem_app.tools.compare import run_config_text  # noqa: E402

# The setting both strategies run (small so that every point fits in minutes on 2 cores).
SETTING = {
    "num-server-rounds": 2,
    "model.names": "smollm2-135m",
    "train.local-steps": 2,
    "train.batch-size": 4,
    "train.max-seq-len": 96,
    # Two ClientApps share two cores: one torch thread each, no oversubscription.
    "train.num-threads": 1,
    "gen.max-new-tokens": 32,
    "fedsem.prompts-per-round": 8,
    "eval.num-prompts": 4,
    "eval.generate": False,
    "round-timeout": 900,
}

# Warm the model cache once, outside the timed runs (SmolLM2's GGUF conversion).
WARM_CODE = """
import sys
from pathlib import Path
from fedsem_app.clients import load_client
from fedsem_app.config.sections import LoraConfig
load_client(sys.argv[1], LoraConfig(), device="cpu", cache_dir=Path(sys.argv[2]))
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = bench_parser(__doc__, "shaped")
    parser.add_argument("--bandwidths", default="1000,100,20,5", help="Mbit/s per node, comma list")
    parser.add_argument("--strategies", default="fedsem,fedavg-lora", help="comma list")
    parser.add_argument("--nodes", type=int, default=2, help="SuperNodes (default 2)")
    parser.add_argument("--model", default="smollm2-135m", help="every node's model")
    parser.add_argument("--rounds", type=int, default=SETTING["num-server-rounds"])
    parser.add_argument("--cache-dir", help="model cache (default: the app's, ~/.fedsem/models)")
    parser.add_argument("--netns-prefix", default="fsbw", help="namespace/interface prefix")
    parser.add_argument("--subnet", default="10.213", help="first two octets of the links")
    parser.add_argument("--port", type=int, default=29400, help="proxy port (+1, +2 used too)")
    parser.add_argument(
        "--shared-nodes", type=int, default=10, help="K for the one-shared-link crossover column"
    )
    parser.add_argument("--report", metavar="DIR", help="only print the tables of a finished DIR")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Set up the namespaces and the deployment, run every point, write the tables."""
    args = parse_args(argv)
    if args.report:
        report(Path(args.report))
        return 0
    for cmd in ("ip", "tc", "nginx", "openssl", "ssh-keygen", "flwr"):
        if shutil.which(cmd, path=PATH) is None:
            raise SystemExit(f"{cmd} not found on PATH (see the docstring)")
    if os.geteuid() != 0:
        raise SystemExit("network namespaces and tc need root")
    bandwidths = [float(b) for b in args.bandwidths.split(",")]
    strategies = args.strategies.split(",")
    folder = output_folder("shaped", args.out)
    work = folder / "work"
    cache = Path(args.cache_dir) if args.cache_dir else Path.home() / ".fedsem" / "models"
    setting = {**SETTING, "num-server-rounds": args.rounds, "model.names": args.model}
    setting.update({"min-clients": args.nodes, "model.cache-dir": str(cache)})
    net = ShapedNet(args.netns_prefix, args.nodes, args.subnet)
    dep = Deployment(work, net, args.port)
    # SIGTERM (and SIGHUP) end the run like Ctrl-C, so the finally block cleans up.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    rows: list[dict] = []
    links: list[dict] = []
    meta = {"machine": machine(), "setting": setting, "strategies": strategies}
    meta.update({"nodes": args.nodes, "shared-nodes": args.shared_nodes})
    try:
        log(f"warming the model cache {cache} ({args.model})")
        sh(sys.executable, "-c", WARM_CODE, args.model, str(cache), cwd=ROOT, env=dep.env)
        log(f"creating namespaces {net.link}, {', '.join(net.nodes)}")
        net.create()
        goodput = {}
        for mbit in bandwidths:
            net.shape(mbit)
            size = int(min(max(mbit * 1e6 / 8 * 2, 1e6), 250e6))  # about 2 s of traffic
            up = measure_rate(net, 0, "up", size, args.port + 5)
            down = measure_rate(net, 0, "down", size, args.port + 5)
            goodput[mbit] = (up + down) / 2
            burst = human_bytes(burst_bytes(mbit * 1e6))
            links.append({"mbit": mbit, "burst": burst, "up-mbit": up, "down-mbit": down})
            links[-1]["ratio"] = goodput[mbit] / mbit
            log(f"link at {mbit:g} Mbit/s (burst {burst}): up {up:.2f}, down {down:.2f} Mbit/s")
        net.shape(max(bandwidths))
        dep.start(args.model)
        for mbit in bandwidths:
            net.shape(mbit)
            for strategy in strategies:
                name = f"{strategy}-{mbit:g}mbit"
                values = {**setting, "strategy": strategy, "run-name": name}
                values["results-dir"] = str(folder / "runs")
                profile = work / f"{name}.toml"
                profile.write_text(run_config_text(values))
                log(f"run {name}")
                drops = net.drops()
                seconds = dep.flwr_run(profile, timeout=3600)
                new = round_rows(folder / "runs" / name, strategy, mbit, goodput[mbit], args.nodes)
                for r in new:
                    r["tbf-drops"] = net.drops() - drops
                rows += new
                walls = ", ".join(f"{r['wall-s']:.1f}" for r in new)
                log(f"run {name} done in {seconds:.0f} s; rounds {walls} s")
    except KeyboardInterrupt:
        log(f"interrupted: tables of the {len(rows)} rounds finished so far")
    finally:
        log("stopping the deployment and removing the namespaces")
        dep.stop()
        net.destroy()
    if not rows:
        return 1
    meta["links"] = links
    meta["assumptions"] = {
        "cpu-bandwidth": CPU_BANDWIDTH,
        "cpu-fraction": CPU_FRACTION,
        "gpu-bandwidth": GPU_BANDWIDTH,
        "gpu-fraction": GPU_FRACTION,
        "gpus": GPUS,
    }
    write_results(folder, "shaped_network", rows, meta)
    report(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
