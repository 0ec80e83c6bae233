"""The server's side of the final adapters: the global one, the index and overview.

Runs on the server. The folder layout is :mod:`fedsem_app.final`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedsem_app import protocol as p
from fedsem_app.config.app import AppConfig
from fedsem_app.final import (
    FINAL_DIR,
    GLOBAL_NAME,
    INDEX_FILE,
    META_FILE,
    adapter_meta,
    data_description,
    save_adapter_folder,
)
from fedsem_app.run.meter import PassThroughGrid


class FinalAdapterWatch(PassThroughGrid):
    """A Grid wrapper that notes where clients report their final adapters.

    Everything is passed through; replies whose ``info`` names a
    :data:`~fedsem_app.protocol.FINAL_ADAPTER` are remembered by node id.
    """

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self.reported: dict[int, dict[str, str]] = {}

    def _note(self, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        for msg in replies:
            if msg.has_error():
                continue
            info = msg.content.get(p.INFO)
            if isinstance(info, ConfigRecord) and info.get(p.FINAL_ADAPTER):
                self.reported[msg.metadata.src_node_id] = {
                    "path": str(info[p.FINAL_ADAPTER]),
                    "model": str(info.get(p.MODEL_NAME, "")),
                    "client": str(info.get(p.CLIENT_NAME, "")),
                }
        return replies

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self._note(self._grid.pull_messages(message_ids))

    def send_and_receive(  # noqa: D102
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._note(self._grid.send_and_receive(messages, timeout=timeout))


def export_global(cfg: AppConfig, arrays, folder: Path, metrics: Mapping[str, Any]) -> Path:
    """Save the global adapter of a parameter strategy to ``final/global``.

    The server loads the shared base model on its CPU (as it did for the initial
    adapter), puts the global arrays in and saves the peft folder.
    """
    from fedsem_app.clients import clear_client_cache, load_client

    client = load_client(
        cfg.model.names[0],
        cfg.lora,
        device="cpu",
        cache_dir=cfg.model.cache_path,
        template=_template(cfg),
        seed=cfg.seed,
    )
    try:
        client.set_adapter({k: v.numpy() for k, v in arrays.items()})
        meta = adapter_meta(cfg, client, cfg.num_server_rounds)
        target = save_adapter_folder(client, folder / FINAL_DIR / GLOBAL_NAME, meta, cfg, metrics)
    finally:
        clear_client_cache()  # the server needs no model weights after this
    return target


def _template(cfg: AppConfig) -> str:
    # A strategy with its own prompt format (FedIT: alpaca) trained the adapter with it.
    from fedsem_app.strategies import get_strategy_class

    return getattr(get_strategy_class(cfg.strategy), "template", "") or cfg.model.template


def write_index(
    folder: Path, cfg: AppConfig, summary: Mapping[str, Any], reported: Mapping[int, Mapping]
) -> Path:
    """Write ``final/index.json`` and ``final/README.md`` once the run has ended.

    Lists the adapter folders found under ``final/`` and those clients reported
    elsewhere (a SuperNode's ``output-dir``).
    """
    final = folder / FINAL_DIR
    final.mkdir(parents=True, exist_ok=True)
    entries = []
    # Which node wrote which folder: an audit (bench/privacy.py) must tell whose
    # adapter is whose, and the server knows clients only by node id.
    node_of = {str(Path(where["path"]).resolve()): node for node, where in reported.items()}
    for meta_file in sorted(final.glob(f"*/{META_FILE}")):
        meta = json.loads(meta_file.read_text())
        entry = {"folder": meta_file.parent.name, "path": str(meta_file.parent), **meta}
        node = node_of.get(str(meta_file.parent.resolve()))
        if node is not None:
            entry["node-id"] = node
        entries.append(entry)
    local = {e["path"] for e in entries}
    for node_id, where in sorted(reported.items()):
        if where["path"] not in local:
            entries.append(
                {
                    "folder": "",
                    "path": where["path"],
                    "client-name": where.get("client", ""),
                    "model-name": where["model"],
                    "node-id": node_id,
                    "elsewhere": True,
                }
            )
    index = {
        "strategy": cfg.strategy,
        "rounds": summary.get("rounds", 0),
        "final": summary.get("final", {}),
        "adapters": entries,
    }
    (final / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    data, licence = data_description(cfg)
    lines = [
        f"# Final adapters of run `{folder.name}`",
        "",
        f"- strategy `{cfg.strategy}`, {index['rounds']} of {cfg.num_server_rounds} rounds",
        f"- data {data}; licence: {licence}",
        "- final metrics (mean over the evaluated clients): "
        + (", ".join(f"{k} {v:.4f}" for k, v in index["final"].items()) or "none"),
        "",
        "| folder | client | base model | template | where |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        lines.append(
            f"| {e['folder'] or '(on its node)'} | {e.get('client-name') or ''} | "
            f"{e.get('model-name', '')} | "
            f"{e.get('template', '')} | {e['path']} |"
        )
    lines += [
        "",
        "Talk to one: `fedsem-chat " + str(folder) + " [--client N]`. Each folder is a peft "
        "adapter (`PeftModel.from_pretrained(base, folder)`) with its tokenizer and a card.",
    ]
    (final / "README.md").write_text("\n".join(lines) + "\n")
    return final


def write_final(
    cfg: AppConfig,
    folder: Path,
    summary: Mapping[str, Any],
    reported: Mapping[int, Mapping],
    global_arrays=None,
) -> None:
    """Finish ``final/``: the global adapter (parameter strategies), index and overview.

    A failure is logged, never raised: the run's results are already written.
    """
    if global_arrays is not None and len(global_arrays):
        try:
            target = export_global(cfg, global_arrays, folder, summary.get("final", {}))
            log(INFO, "fedsem: global adapter saved to %s", target)
        except Exception as err:  # noqa: BLE001 - the run itself has succeeded
            log(WARNING, "fedsem: global adapter not saved: %s", err)
    try:
        final = write_index(folder, cfg, summary, reported)
        log(INFO, "fedsem: final adapters listed in %s", final / "README.md")
    except OSError as err:
        log(WARNING, "fedsem: final/ index not written: %s", err)
