"""The Markdown tables of a shaped-network results folder (``shaped_network.json``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean

from bench.common import human_bytes, markdown, write_results
from bench.shaped.analysis import add_transfer, crossover_rows, model_check

LINK_COLUMNS = [
    ("mbit", "tbf rate Mbit/s", ".0f"),
    ("burst", "burst", ""),
    ("up-mbit", "payload up Mbit/s", ".2f"),
    ("down-mbit", "payload down Mbit/s", ".2f"),
    ("ratio", "payload / rate", ".3f"),
]
ROUND_COLUMNS = [
    ("pass", "pass", ""),
    ("mbit", "Mbit/s", ".0f"),
    ("strategy", "strategy", ""),
    ("round", "round", ""),
    ("wall-s", "wall s", ".1f"),
    ("train-s", "train s", ".1f"),
    ("generate-s", "generate s", ".1f"),
    ("evaluate-s", "evaluate s", ".1f"),
    ("server-s", "server s", ".2f"),
    ("rest-s", "rest s", ".1f"),
    ("transfer-s", "transfer s", ".1f"),
    ("model-transfer-s", "bytes / goodput s", ".2f"),
    ("transfer-share-pct", "transfer share %", ".0f"),
    ("bytes", "bytes / node (up + down)", ""),
]
MEAN_COLUMNS = [
    ("mbit", "Mbit/s", ".0f"),
    ("strategy", "strategy", ""),
    ("wall-s", "round s", ".1f"),
    ("compute-s", "compute s", ".1f"),
    ("server-s", "server s", ".2f"),
    ("transfer-s", "transfer s", ".1f"),
    ("transfer-share-pct", "transfer share %", ".0f"),
    ("bytes", "bytes / node", ""),
]
CHECK_COLUMNS = [
    ("mbit", "Mbit/s", ".0f"),
    ("strategy", "strategy", ""),
    ("round", "round", ""),
    ("measured-s", "measured s", ".1f"),
    ("predicted-own-s", "predicted (own compute) s", ".1f"),
    ("error-own-pct", "error %", "+.1f"),
    ("predicted-mean-s", "predicted (mean compute) s", ".1f"),
    ("error-mean-pct", "error %", "+.1f"),
]
CROSS_COLUMNS = [
    ("model", "model", ""),
    ("source", "source", ""),
    ("lora", "FedAvg-LoRA bytes / node / round", ""),
    ("fedsem", "FedSem bytes / node / round", ""),
    ("generate-s", "generate s / round", ".2f"),
    ("extra-fixed-s", "FedSem extra fixed s / round", ".2f"),
    ("crossover", "crossover Mbit/s (own link per node)", ""),
    ("crossover-shared", "crossover Mbit/s (one link, K nodes)", ""),
]


def fmt_mbit(value: float) -> str:
    """A crossover bandwidth for a table cell."""
    if math.isinf(value):
        return "always faster"
    if value == 0:
        return "never faster"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def report(folder: Path) -> None:
    """Print and write the Markdown tables from ``folder/shaped_network.json``."""
    data = json.loads((folder / "shaped_network.json").read_text())
    meta, rows = data["meta"], data["rows"]
    # Derived numbers are recomputed from the measured rows (the model may have changed).
    add_transfer(rows)
    meta["model-check"] = model_check(rows)
    meta["crossover"] = crossover_rows(rows, meta["setting"], meta["shared-nodes"])
    write_results(folder, "shaped_network", rows, meta)
    links, checks, cross = meta["links"], meta["model-check"], meta["crossover"]
    for r in rows:
        r["transfer-share-pct"] = 100 * r["transfer-share"]
        r["bytes"] = human_bytes(r["bytes-up-node"] + r["bytes-down-node"])
    means = []
    for mbit in sorted({r["mbit"] for r in rows}, reverse=True):
        for strategy in meta["strategies"]:
            mine = [r for r in rows if r["mbit"] == mbit and r["strategy"] == strategy]
            if not mine:
                continue
            keys = ("wall-s", "compute-s", "server-s", "transfer-s", "bytes-up-node")
            avg = {k: mean(r[k] for r in mine) for k in (*keys, "bytes-down-node")}
            avg.update(mbit=mbit, strategy=strategy)
            avg["transfer-share-pct"] = 100 * avg["transfer-s"] / avg["wall-s"]
            avg["bytes"] = human_bytes(avg["bytes-up-node"] + avg["bytes-down-node"])
            means.append(avg)
    for c in checks:
        c["error-own-pct"] = 100 * c["error-own"]
        c["error-mean-pct"] = 100 * c["error-mean"]
    for c in cross:
        c["lora"] = human_bytes(c["lora-bytes-node"])
        c["fedsem"] = human_bytes(c["fedsem-bytes-node"])
        c["crossover"] = fmt_mbit(c["crossover-mbit"])
        c["crossover-shared"] = fmt_mbit(c["crossover-shared-mbit"])
    errors = [abs(c["error-own"]) for c in checks]
    forecast = [abs(c["error-mean"]) for c in checks]
    text = "\n\n".join(
        [
            "## links: payload rate of one TCP connection through each shaped veth pair",
            markdown(links, LINK_COLUMNS),
            "## rounds (compute = slowest node's train + generate, plus slowest evaluate)",
            markdown(rows, ROUND_COLUMNS if any("pass" in r for r in rows) else ROUND_COLUMNS[1:]),
            "## mean over rounds",
            markdown(means, MEAN_COLUMNS),
            "## model check: compute + server + overhead + bytes / goodput",
            markdown(checks, CHECK_COLUMNS),
            f"mean |error|: own compute {100 * mean(errors):.1f} % (max "
            f"{100 * max(errors):.1f} %), mean compute {100 * mean(forecast):.1f} % "
            f"(max {100 * max(forecast):.1f} %)"
            if checks
            else "",
            f"## crossover (K = {meta['shared-nodes']} nodes for the shared link)",
            markdown(cross, CROSS_COLUMNS) if cross else "(needs fedsem and fedavg-lora)",
        ]
    )
    (folder / "shaped_network.md").write_text(text + "\n")
    print(text)
    print(f"\nresults in {folder}")
