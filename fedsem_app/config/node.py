"""Per-node settings (a SuperNode's ``--node-config``) merged over the run config.

Runs on the client (and in the offline spec tools, to check a federation).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsem_app.config.app import AppConfig, coerce, flat_key
from fedsem_app.config.errors import ConfigError, check
from fedsem_app.config.registries import FAULT_MODES
from fedsem_app.config.sections import DataConfig, FaultConfig, LoraConfig


@dataclass(frozen=True)
class NodeConfig:
    """Per-node settings: simulation gives only the partition; a SuperNode may give more.

    Attributes
    ----------
    partition_id, num_partitions
        Which slice of the private pool this node owns.
    model_name
        The node's model (``model-name`` in node config, else run-config round-robin).
    data_path
        A node-local private data file (``data-path``); empty means the partition
        of the configured dataset.
    device
        ``device`` in node config, else ``model.device``.
    client_name
        The client's name in a federation spec (``client-name``); empty without one.
    lora, data, fault
        The run config's sections with this node's own values on top (``lora-rank``,
        ``lora-alpha``, ``lora-target-modules``; ``prompt-field``, ``answer-field``,
        ``category-field`` of its data file; ``fault-mode``); None: the run config's.
    """

    partition_id: int
    num_partitions: int
    model_name: str
    data_path: str
    device: str
    client_name: str = ""
    lora: LoraConfig | None = None
    data: DataConfig | None = None
    fault: FaultConfig | None = None

    def apply(self, app: AppConfig) -> AppConfig:
        """The run config this node runs with: its own LoRA, data mapping and fault on top."""
        return dataclasses.replace(
            app,
            lora=self.lora or app.lora,
            data=self.data or app.data,
            fault=self.fault or app.fault,
        )


# Node-config keys that override one field of a run-config section, by section.
NODE_LORA_KEYS = {
    "lora-rank": "rank",
    "lora-alpha": "alpha",
    "lora-target-modules": "target_modules",
}
NODE_DATA_KEYS = {
    "prompt-field": "prompt_field",
    "answer-field": "answer_field",
    "category-field": "category_field",
}


def _node_section(node_config, keys: dict[str, str], section, key_prefix: str):
    """``section`` with the node config's values for ``keys`` on top, or None if it sets none."""
    hints = typing.get_type_hints(type(section))
    changes = {
        attr: coerce(key, node_config[key], hints[attr])
        for key, attr in keys.items()
        if key in node_config
    }
    if not changes:
        return None
    try:
        return dataclasses.replace(section, **changes)
    except ConfigError as err:  # e.g. lora-rank=0: name the node-config key
        node_key = next(
            (k for k, a in keys.items() if f"{key_prefix}.{flat_key(a)}" == err.key), err.key
        )
        raise ConfigError(node_key, str(err).split(": ", 1)[1]) from err


def load_node_config(node_config: typing.Mapping[str, Any], app: AppConfig) -> NodeConfig:
    """Merge a node's config over the run config (node values win)."""
    partition_id = node_config.get("partition-id", 0)
    num_partitions = node_config.get("num-partitions", 1)
    check(
        isinstance(partition_id, int) and isinstance(num_partitions, int),
        "partition-id",
        "node config partition-id and num-partitions must be integers",
    )
    check(num_partitions > 0, "num-partitions", "must be a positive integer")
    check(
        0 <= partition_id < num_partitions,
        "partition-id",
        f"must be in [0, {num_partitions}), got {partition_id}",
    )
    model_name = str(node_config.get("model-name", "") or app.model.name_for(partition_id))
    data_path = str(node_config.get("data-path", "") or "")
    if data_path:
        data_path = os.path.expanduser(data_path)
        check(
            Path(data_path).is_file(),
            "data-path",
            f"node data file {data_path!r} does not exist; pass an existing "
            "JSON/JSONL/CSV/Parquet file with --node-config 'data-path=\"/abs/file.jsonl\"'",
        )
    device = str(node_config.get("device", "") or app.model.device)
    fault = None
    if "fault-mode" in node_config:
        mode = str(node_config["fault-mode"])
        FAULT_MODES.check(mode, "fault-mode")
        # The node's own mode applies to itself, whatever fault.clients lists.
        fault = dataclasses.replace(app.fault, mode=mode, clients=(str(partition_id),))
    return NodeConfig(
        partition_id,
        num_partitions,
        model_name,
        data_path,
        device,
        client_name=str(node_config.get("client-name", "") or ""),
        lora=_node_section(node_config, NODE_LORA_KEYS, app.lora, "lora"),
        data=_node_section(node_config, NODE_DATA_KEYS, app.data, "data"),
        fault=fault,
    )
