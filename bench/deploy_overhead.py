"""What a fresh ClientApp process per message costs in deployment, with and without the cache.

Flower's deployment engine starts a new ClientApp process for every message, so each
train and evaluate message pays Python imports and a model load. This script measures:

``load``
    In fresh processes, as a ClientApp would: the imports, then ``load_client`` with an
    empty model cache (build / GGUF conversion) and again with the cache filled. It also
    checks that the warm load did not rewrite the cached folder.
``deploy``
    A loopback deployment (TLS, node authentication, one SuperNode per ``--run-models``
    entry, default the quick profile's three tiny models; quick profile, 2 rounds) run
    twice on the same nodes: first with an empty model cache, then with the cache the
    first run filled.
``sim``
    The same run config in simulation, one virtual node per model.

Run from the project root (with the CPU to itself; it prints one table per part)::

    python bench/deploy_overhead.py                       # all parts
    python bench/deploy_overhead.py --parts load --models tiny-llama,smollm2-135m
    python bench/deploy_overhead.py --parts deploy,sim --run-models smollm2-135m,tiny-gpt2
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.test_deploy: the loopback deployment harness

from bench.common import bench_parser, markdown, markdown_header, markdown_row  # noqa: E402

# One fresh process, as a ClientApp: imports, then the model load; prints JSON.
LOAD_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from fedsem_app.clients import load_client, set_num_threads
from fedsem_app.config.sections import LoraConfig
t1 = time.perf_counter()
set_num_threads(0)
name, cache = sys.argv[1], Path(sys.argv[2])
folder = cache / name
stamp = folder.stat().st_mtime_ns if folder.exists() else None
client = load_client(name, LoraConfig(), device="cpu", cache_dir=cache)
t2 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "load": t2 - t1, "was-cached": stamp is not None,
                  "rewritten": stamp is not None and folder.stat().st_mtime_ns != stamp}))
"""


def _child_env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        OMP_WAIT_POLICY="PASSIVE",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
    )


def _load_once(name: str, cache: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", LOAD_CHILD, name, str(cache)],
        cwd=ROOT,
        env=_child_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


LOAD_COLUMNS = [
    ("model", "model", ""),
    ("imports", "imports s", ""),
    ("cold", "load, empty cache s", ""),
    ("warm", "load, filled cache s", ""),
    ("rewritten", "cache rewritten", ""),
]
AGREEMENT_COLUMNS = [
    ("round", "round", ""),
    ("model", "model", ""),
    ("loss", "train loss dep / sim", ""),
    ("nll", "eval NLL dep / sim", ""),
]


def bench_load(models: list[str], work: Path, repeats: int) -> None:
    """Imports and model load per fresh process, cold cache versus warm cache."""
    print("\n## per ClientApp process (fresh Python process, CPU)\n")
    print(markdown_header(LOAD_COLUMNS))
    for name in models:
        cache = work / f"cache-{name}"
        cold = _load_once(name, cache)
        warm = [_load_once(name, cache) for _ in range(repeats)]
        imports = sorted(r["imports"] for r in [cold, *warm])
        loads = sorted(r["load"] for r in warm)
        row = {
            "model": name,
            "imports": f"{imports[0]:.1f}-{imports[-1]:.1f}",
            "cold": f"{cold['load']:.1f}",
            "warm": f"{loads[0]:.2f}-{loads[-1]:.2f}",
            "rewritten": any(r["rewritten"] for r in warm),
        }
        print(markdown_row(row, LOAD_COLUMNS))  # a row as each model is done


def _round_seconds(folder: Path) -> list[float]:
    return [row["round-seconds"] for row in json.loads((folder / "metrics.json").read_text())]


def _client_scores(folder: Path) -> dict[tuple[int, str], tuple[float, float]]:
    """(round, model) -> (train loss, evaluation NLL) from a run's clients.jsonl."""
    rows = [json.loads(line) for line in (folder / "clients.jsonl").open()]
    loss = {(r["round"], r["model"]): r["train-loss"] for r in rows if r["phase"] == "train"}
    return {
        (r["round"], r["model"]): (loss.get((r["round"], r["model"]), float("nan")), r["nll"])
        for r in rows
        if r["phase"] == "evaluate"
    }


def _print_agreement(deployed: Path, simulated: Path) -> None:
    # Evaluation runs in a new process after training; the same NLL as in simulation
    # (one process) shows the trained adapter came back from context.state.
    dep, sim = _client_scores(deployed), _client_scores(simulated)
    print("\n## per client: deployment (filled cache) vs simulation\n")
    rows = []
    for key in sorted(dep.keys() & sim.keys()):
        (dl, dn), (sl, sn) = dep[key], sim[key]
        rows.append(
            {
                "round": key[0],
                "model": key[1],
                "loss": f"{dl:.5f} / {sl:.5f}",
                "nll": f"{dn:.5f} / {sn:.5f}",
            }
        )
    print(markdown(rows, AGREEMENT_COLUMNS))


def _flwr_run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def bench_runs(work: Path, parts: list[str], models: list[str]) -> None:
    """Per-round seconds: loopback deployment cold/warm cache, and simulation."""
    from tests.test_deploy import CONNECTION, Deployment, run_profile

    dep = Deployment(work / "deploy")
    dep.base.mkdir(parents=True, exist_ok=True)
    nodes = [f"node{i}" for i in range(len(models))]
    # Every node answers every round; simulation assigns the same models by partition id.
    setting = {"min-clients": len(models), "model.names": ",".join(models)}
    rows = []
    try:
        if "deploy" in parts:
            dep.start_authenticated(nodes, nodes)
            for i, (name, model) in enumerate(zip(nodes, models, strict=True)):
                dep.start_supernode(
                    name,
                    name,
                    "--model-name", model,
                    "--partition-id", str(i),
                    "--num-partitions", str(len(models)),
                )  # fmt: skip
            # The same nodes twice: the first run fills the empty cache, the second reuses it.
            for label in ("deployment, empty cache", "deployment, filled cache"):
                run_name = "cold" if "empty" in label else "warm"
                profile = run_profile(dep, run_name, **setting)
                cmd = ["flwr", "run", ".", CONNECTION, "--stream", "--run-config", str(profile)]
                total = _flwr_run(cmd, dep.env)
                rows.append((label, _round_seconds(dep.base / "runs" / run_name), total))
        if "sim" in parts:
            # The same run config (and the cache the deployment runs filled, if they ran).
            profile = run_profile(dep, "sim", **setting)
            cmd = ["flwr", "run", ".", "--stream", "--run-config", str(profile)]
            cmd += ["--federation-config", f"num-supernodes={len(models)}"]
            total = _flwr_run(cmd, _child_env())
            rows.append(
                (
                    f"simulation, {len(models)} virtual nodes",
                    _round_seconds(dep.base / "runs" / "sim"),
                    total,
                )
            )
    finally:
        left = dep.stop_all()
        if left:
            print("warning: processes left after deploy/stop.sh (killed):", *left, sep="\n  ")
    runs = dep.base / "runs"
    if (runs / "warm").is_dir() and (runs / "sim").is_dir():
        _print_agreement(runs / "warm", runs / "sim")
    print(f"\n## quick profile, models {', '.join(models)}, 2 rounds, train.num-threads=1\n")
    rounds = max((len(seconds) for _, seconds, _ in rows), default=2)
    columns = [
        ("setting", "setting", ""),
        *((f"round {r}", f"round {r} s", "") for r in range(1, rounds + 1)),
        ("total", "flwr run total s", ""),
    ]
    table = [
        {"setting": label, "total": f"{total:.1f}"}
        | {f"round {r}": f"{s:.1f}" for r, s in enumerate(seconds, 1)}
        for label, seconds, total in rows
    ]
    print(markdown(table, columns))


def main() -> None:
    """Parse the options and run the chosen parts."""
    parser = bench_parser(__doc__)
    parser.add_argument("--parts", default="load,deploy,sim", help="comma-separated parts")
    parser.add_argument(
        "--models", default="tiny-llama,smollm2-135m", help="models for the load part"
    )
    parser.add_argument("--repeats", type=int, default=2, help="warm loads per model")
    parser.add_argument(
        "--run-models",
        default="tiny-llama,tiny-gpt2,tiny-qwen2",
        help="one SuperNode (simulation: one virtual node) per model for the deploy/sim parts",
    )
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory(prefix="fedsem-deploy-bench-") as tmp:
        work = args.work or Path(tmp)
        if "load" in parts:
            bench_load(args.models.split(","), work, args.repeats)
        if "deploy" in parts or "sim" in parts:
            bench_runs(work, parts, args.run_models.split(","))


if __name__ == "__main__":
    main()
