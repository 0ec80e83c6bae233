"""Round rows of a run folder, the transfer estimate, the round-time model check, crossover."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from statistics import mean

from bench.common import read_jsonl
from fedsem_app.tools import analytic, roundtime


def round_rows(folder: Path, strategy: str, mbit: float, goodput: float, nodes: int) -> list[dict]:
    """Per-round wall, compute, server, bytes per node and rest of one run folder."""
    metrics = json.loads((folder / "metrics.json").read_text())
    phases: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in read_jsonl(folder / "clients.jsonl"):
        if c["phase"] == "train":
            phases[c["round"]]["train"].append(c.get("train-seconds", 0.0))
            phases[c["round"]]["train+gen"].append(
                c.get("train-seconds", 0.0) + c.get("generate-seconds", 0.0)
            )
            phases[c["round"]]["gen"].append(c.get("generate-seconds", 0.0))
        else:
            phases[c["round"]]["eval"].append(c.get("eval-seconds", 0.0))
    rows = []
    for m in metrics:
        if m["round"] == 0:  # the evaluation before training
            continue
        p = phases[m["round"]]
        compute = max(p["train+gen"], default=0.0) + max(p["eval"], default=0.0)
        server = m.get("server-seconds", 0.0)
        up = (m.get("bytes-up-train", 0) + m.get("bytes-up-evaluate", 0)) / nodes
        down = (m.get("bytes-down-train", 0) + m.get("bytes-down-evaluate", 0)) / nodes
        rows.append(
            {
                "strategy": strategy,
                "mbit": mbit,
                "goodput-mbit": goodput,
                "round": m["round"],
                "wall-s": m["round-seconds"],
                "train-s": max(p["train"], default=0.0),
                "generate-s": max(p["gen"], default=0.0),
                "evaluate-s": max(p["eval"], default=0.0),
                "compute-s": compute,
                "server-s": server,
                "rest-s": m["round-seconds"] - compute - server,
                "bytes-up-node": up,
                "bytes-down-node": down,
                "model-transfer-s": roundtime.transfer_seconds(up + down, goodput * 1e6),
            }
        )
    return rows


def add_transfer(rows: list[dict]) -> None:
    """Transfer estimate: rest minus the overhead seen at the highest bandwidth.

    The overhead of a strategy (scheduling, ClientApp start-up) is its mean rest at
    the highest bandwidth minus the model's transfer time there.
    """
    for strategy in {r["strategy"] for r in rows}:
        mine = [r for r in rows if r["strategy"] == strategy]
        top = max(r["mbit"] for r in mine)
        base = [r["rest-s"] - r["model-transfer-s"] for r in mine if r["mbit"] == top]
        overhead = mean(base)
        for r in mine:
            r["overhead-s"] = overhead
            r["transfer-s"] = r["rest-s"] - overhead
            r["transfer-share"] = r["transfer-s"] / r["wall-s"]


def model_check(rows: list[dict]) -> list[dict]:
    """Predicted against measured round time, per point (strategy, bandwidth, round).

    Two predictions: with the round's own compute (checks the transfer part), and with
    the strategy's mean compute + server over all its rounds (a forecast from the
    measured throughput alone).
    """
    out = []
    for strategy in sorted({r["strategy"] for r in rows}):
        mine = [r for r in rows if r["strategy"] == strategy]
        mean_fixed = mean(r["compute-s"] + r["server-s"] for r in mine) + mine[0]["overhead-s"]
        for r in mine:
            own = roundtime.round_seconds(
                r["compute-s"] + r["server-s"] + r["overhead-s"],
                r["bytes-up-node"],
                r["bytes-down-node"],
                r["goodput-mbit"] * 1e6,
            )
            forecast = roundtime.round_seconds(
                mean_fixed, r["bytes-up-node"], r["bytes-down-node"], r["goodput-mbit"] * 1e6
            )
            out.append(
                {
                    "strategy": strategy,
                    "mbit": r["mbit"],
                    "round": r["round"],
                    "measured-s": r["wall-s"],
                    "predicted-own-s": own,
                    "error-own": own / r["wall-s"] - 1,
                    "predicted-mean-s": forecast,
                    "error-mean": forecast / r["wall-s"] - 1,
                }
            )
    return out


# Projection assumptions (stated in the tables' notes).
CPU_BANDWIDTH = 39.8e9  # B/s, measured here (BENCHMARKS 4b)
CPU_FRACTION = 0.042  # SmolLM2, batch 16, float32 (BENCHMARKS 4b)
GPU_BANDWIDTH = 3.35e12  # B/s per GPU: H100 SXM HBM3, datasheet
GPU_FRACTION = 0.5  # assumed for batched decoding; not measured here
GPUS = {"SmolLM2-135M": 1, "Llama-3.1-8B": 1, "Llama-3.1-70B": 2, "Llama-3.1-405B": 16}
PROJECTED = ("Llama-3.1-8B", "Llama-3.1-70B", "Llama-3.1-405B")


def crossover_rows(rows: list[dict], setting: dict, shared_nodes: int) -> list[dict]:
    """Crossover bandwidth per model size: SmolLM2 measured, larger models projected.

    Measured, two ways: FedSem's extra fixed seconds per round as (a) the difference
    of compute + server + overhead (everything but the bytes, mean over rounds), and
    (b) of compute + server only (the overhead of a ClientApp process per message is
    the same for both strategies, two messages a round, so its difference is noise).
    Bytes per node and round: the measured means. Projected: FedSem bytes as
    measured (text does not grow with the model); FedAvg-LoRA bytes = the measured
    SmolLM2 bytes scaled by the analytic adapter size (rank 8, q/k/v/o, float32, as
    measured); FedSem's extra seconds = the projected generation of the model
    (``roundtime.decode_seconds``) plus the measured extra server work (embedding
    and consensus do not depend on the client model). Training and evaluation are
    the same code and steps for both strategies, so they cancel.
    """

    def mean_of(strategy: str, key) -> float:
        return mean(key(r) for r in rows if r["strategy"] == strategy)

    if not {"fedsem", "fedavg-lora"} <= {r["strategy"] for r in rows}:
        return []
    both = ("fedsem", "fedavg-lora")
    fixed = {
        s: mean_of(s, lambda r: r["compute-s"] + r["server-s"] + r["overhead-s"]) for s in both
    }
    work = {s: mean_of(s, lambda r: r["compute-s"] + r["server-s"]) for s in both}
    server = {s: mean_of(s, lambda r: r["server-s"]) for s in both}
    sent = {s: mean_of(s, lambda r: r["bytes-up-node"] + r["bytes-down-node"]) for s in both}
    generate = mean_of("fedsem", lambda r: r["generate-s"])
    rank, targets = 8, "attention"
    steps = int(setting["gen.max-new-tokens"])  # one batch: prompts <= gen.batch-size (16)

    def row(name: str, lora: float, extra: float, source: str, gen: float) -> dict:
        bw = roundtime.crossover_bandwidth(extra, sent["fedsem"], 0.0, lora)
        shared = roundtime.crossover_bandwidth(extra, sent["fedsem"], 0.0, lora, shared_nodes)
        return {
            "model": name,
            "source": source,
            "lora-bytes-node": lora,
            "fedsem-bytes-node": sent["fedsem"],
            "generate-s": gen,
            "extra-fixed-s": extra,
            "crossover-mbit": bw / 1e6,
            "crossover-shared-mbit": shared / 1e6,
        }

    lora = sent["fedavg-lora"]
    measured = (
        "SmolLM2-135M" if setting["model.names"] == "smollm2-135m" else setting["model.names"]
    )
    out = [
        row(measured, lora, fixed["fedsem"] - fixed["fedavg-lora"],
            "measured: compute + server + overhead", generate),
        row(measured, lora, work["fedsem"] - work["fedavg-lora"],
            "measured: compute + server", generate),
    ]  # fmt: skip
    if setting["model.names"] != "smollm2-135m":
        return out  # the projections scale SmolLM2's measured adapter bytes
    smol = analytic.get_architecture("SmolLM2-135M")
    smol_adapter = analytic.lora_parameters(smol, rank, targets)
    extra_server = server["fedsem"] - server["fedavg-lora"]
    # The model on these cores (float32, the measured fraction of the bound) as a check.
    gen = roundtime.decode_seconds(smol.num_parameters() * 4, steps, CPU_BANDWIDTH, CPU_FRACTION)
    out.append(row("SmolLM2-135M", lora, gen + extra_server, "model, these CPUs (check)", gen))
    for name in PROJECTED:
        arch = analytic.get_architecture(name)
        # bf16 weights spread over GPUS[name] GPUs (tensor parallel), assumed fraction.
        bandwidth = GPU_BANDWIDTH * GPUS[name]
        gen = roundtime.decode_seconds(arch.num_parameters() * 2, steps, bandwidth, GPU_FRACTION)
        scaled = lora * analytic.lora_parameters(arch, rank, targets) / smol_adapter
        label = f"projection, {GPUS[name]} GPU" + ("s" if GPUS[name] > 1 else "")
        out.append(row(name, scaled, gen + extra_server, label, gen))
    return out
