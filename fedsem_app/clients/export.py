"""A client's side of the final adapters: where it saves, and its adapter between rounds.

Runs on the client. The folder layout is :mod:`fedsem_app.final`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context
from flwr.common.logger import log

from fedsem_app import protocol as p
from fedsem_app.config.app import AppConfig
from fedsem_app.final import (
    ADAPTER_CACHE,
    FINAL_DIR,
    OUTPUT_DIR_KEY,
    STATE_RUN,
    adapter_meta,
    client_folder_name,
    save_adapter_folder,
)


def remember_run(context: Context, config: ConfigRecord) -> None:
    """Keep the run folder a message names in the node's state (for :func:`run_key`)."""
    folder = str(config.get(p.RUN_FOLDER, "") or "")
    if folder:
        token = str(config.get(p.RUN_TOKEN, "") or "")
        context.state[STATE_RUN] = ConfigRecord({p.RUN_FOLDER: folder, p.RUN_TOKEN: token})


def run_key(context: Context) -> str:
    """A file-name-safe name of this node's run, stable across a resume.

    The run folder's name plus a short hash of its full path and its run token, when
    the server named it (every message does); Flower's run id otherwise (a message
    from another app). The token keeps a run in a folder path that an earlier, deleted
    run used from loading that run's adapters.
    """
    record = context.state.get(STATE_RUN)
    folder = str(record.get(p.RUN_FOLDER, "")) if isinstance(record, ConfigRecord) else ""
    if not folder:
        return f"run-{context.run_id}"
    token = str(record.get(p.RUN_TOKEN, ""))
    digest = hashlib.sha256(f"{folder}\n{token}".encode()).hexdigest()[:10]
    return f"{Path(folder).name}-{digest}"


def node_adapter_file(cache_dir: Path, context: Context, model_name: str) -> Path:
    """Where a node keeps its own adapter of ``model_name`` between rounds.

    Keyed by the run folder (:func:`run_key`) and the partition id, both the same
    after a resume, where Flower gives the run a new id and in simulation the nodes
    new ids.
    """
    model = model_name.strip("/").replace("/", "--")
    partition = context.node_config.get("partition-id", f"node{context.node_id}")
    return Path(cache_dir) / ADAPTER_CACHE / run_key(context) / f"partition-{partition}-{model}.npz"


def forget_node_adapter(path: Path) -> None:
    """Delete a node's cached adapter (and its run folder there, once empty)."""
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass  # other nodes' adapters are still there


def node_output_dir(node_config: Mapping[str, Any]) -> Path | None:
    """A SuperNode's ``output-dir`` node-config value as an absolute path, if given.

    Raises
    ------
    ValueError
        If it is given but not a non-empty string.
    """
    value = node_config.get(OUTPUT_DIR_KEY)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(
            f"node config {OUTPUT_DIR_KEY!r} must be a folder path string, got {value!r}; "
            f"e.g. --node-config \"{OUTPUT_DIR_KEY}='/srv/fedsem'\""
        )
    return Path(value).expanduser().resolve()


def client_final_folder(
    config: ConfigRecord, node_config: Mapping[str, Any], partition_id: int
) -> Path | None:
    """Where this client saves its final adapter, or None if it saves none.

    None unless the message is the last round's and the strategy lets clients save
    (text strategies); the node's ``output-dir`` wins over the server's run folder.
    """
    if not bool(config.get(p.CLIENT_EXPORT, False)):
        return None
    run_folder = str(config.get(p.RUN_FOLDER, "") or "")
    if not run_folder or not is_last_round(config):
        return None
    own = node_output_dir(node_config)
    root = own / Path(run_folder).name if own else Path(run_folder)
    return root / FINAL_DIR / client_folder_name(partition_id)


def is_last_round(config: ConfigRecord) -> bool:
    """Whether a message's ``server-round`` is the run's last (needs both numbers)."""
    total = int(config.get(p.NUM_ROUNDS, 0) or 0)
    return total > 0 and int(config.get(p.ROUND, 0) or 0) >= total


def export_client(
    client,
    cfg: AppConfig,
    context: Context,
    config: ConfigRecord,
    partition_id: int,
    metrics: Mapping[str, Any],
    client_name: str = "",
) -> str:
    """After the last round's evaluation: save this client's adapter, drop its cache file.

    ``client_name`` (a federation spec's name for the client) goes into its
    ``fedsem.json`` and so into ``final/index.json``.

    Returns
    -------
    str
        Where the adapter folder went ("" if this message asks for none, or saving
        failed: then a warning says why and the evaluation reply still goes out).
    """
    if not is_last_round(config):
        return ""
    cached = node_adapter_file(cfg.model.cache_path, context, client.name)
    try:
        target = client_final_folder(config, context.node_config, partition_id)
        if target is None:  # parameter strategies: the server saves the global adapter
            forget_node_adapter(cached)
            return ""
        meta = adapter_meta(
            cfg, client, int(config.get(p.ROUND, 0)), partition_id, context.node_id, client_name
        )
        save_adapter_folder(client, target, meta, cfg, metrics)
    except (OSError, ValueError) as err:
        log(
            WARNING,
            "node with partition-id %d: final adapter not saved (%s); its adapter stays in %s",
            partition_id,
            err,
            cached,
        )
        return ""
    # The run is over and the adapter lives on in final/: the cache copy would only pile up.
    forget_node_adapter(cached)
    log(INFO, "node with partition-id %d: final adapter saved to %s", partition_id, target)
    return str(target)


def saved_final_adapter(config: ConfigRecord, context: Context, partition_id: int):
    """The adapter a client saved at the end of this run, as arrays, if there is one.

    A finished run whose ``num-server-rounds`` is raised and resumed finds each
    client's adapter here, as its cache file went when the run ended.

    Returns
    -------
    dict or None
        Tensor name -> numpy array, or None.
    """
    run_folder = str(config.get(p.RUN_FOLDER, "") or "")
    if not run_folder:
        return None
    own = node_output_dir(context.node_config)
    root = own / Path(run_folder).name if own else Path(run_folder)
    file = root / FINAL_DIR / client_folder_name(partition_id) / "adapter_model.safetensors"
    if not file.is_file():
        return None
    from safetensors.numpy import load_file

    return load_file(str(file))
