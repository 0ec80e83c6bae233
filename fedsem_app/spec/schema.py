"""What a federation spec holds: its keys, :class:`ClientSpec` and :class:`FederationSpec`.

Shared: the server, the clients and ``fedsem-spec`` read the same spec.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fedsem_app.config.errors import ConfigError
from fedsem_app.config.sections import LoraConfig

SPEC_KEY = "federation-spec"  # the run-config key that names the file

# Node-config keys a spec client sets (see fedsem_app.config.node.load_node_config).
NODE_CLIENT_NAME = "client-name"
NODE_MODEL = "model-name"
NODE_DATA_PATH = "data-path"
NODE_DEVICE = "device"
NODE_PARTITION = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
NODE_LORA = {"rank": "lora-rank", "alpha": "lora-alpha", "target-modules": "lora-target-modules"}
NODE_FIELDS = {
    "prompt-field": "prompt-field",
    "answer-field": "answer-field",
    "category-field": "category-field",
}
NODE_FAULT = "fault-mode"

TOP_KEYS = ("defaults", "clients", "check-data-files")
CLIENT_KEYS = ("name", "model", "lora", "data", "device", "fault")
LORA_KEYS = tuple(NODE_LORA)
DATA_KEYS = ("path", *NODE_FIELDS)


class SpecError(ConfigError):
    """A federation spec is wrong; the one-line message names the file, client and key."""

    def __init__(self, file: str, client: str, key: str, message: str) -> None:
        where = f"client {client!r}, key '{key}'" if client else f"key '{key}'"
        ValueError.__init__(self, f"federation spec {file}: {where}: {message}")
        self.key = key
        self.client = client


@dataclass(frozen=True)
class ClientSpec:
    """One client of the federation, as the spec names it.

    ``None`` (or an empty string / tuple for ``device`` and the fields) means
    the spec does not set it: the run config decides.

    Attributes
    ----------
    name
        Unique client name; results name the client by it.
    index
        Position in the spec: the client's partition id.
    model
        Registered model name, local folder or hub id.
    lora_rank, lora_alpha, lora_target_modules
        LoRA settings of this client.
    data_path
        The client's own data file (absolute); empty: partition ``index`` of the
        shared dataset.
    prompt_field, answer_field, category_field
        Field mapping of ``data_path``.
    device
        ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
    fault
        Fault mode of this client (``fault.mode`` values).
    """

    name: str
    index: int
    model: str
    lora_rank: int | None = None
    lora_alpha: int | None = None
    lora_target_modules: tuple[str, ...] | None = None
    data_path: str = ""
    prompt_field: str = ""
    answer_field: str = ""
    category_field: str = ""
    device: str = ""
    fault: str = ""

    def lora(self, base: LoraConfig) -> LoraConfig:
        """The run config's LoRA settings with this client's own ones on top."""
        changes = {
            "rank": self.lora_rank,
            "alpha": self.lora_alpha,
            "target_modules": self.lora_target_modules,
        }
        return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})

    def node_config(self, num_clients: int) -> dict[str, Any]:
        """The client as a SuperNode's node config (only the keys the spec sets)."""
        config: dict[str, Any] = {
            NODE_PARTITION: self.index,
            NODE_NUM_PARTITIONS: num_clients,
            NODE_CLIENT_NAME: self.name,
            NODE_MODEL: self.model,
        }
        optional = {
            NODE_DATA_PATH: self.data_path,
            NODE_DEVICE: self.device,
            NODE_LORA["rank"]: self.lora_rank,
            NODE_LORA["alpha"]: self.lora_alpha,
            NODE_LORA["target-modules"]: (
                ",".join(self.lora_target_modules) if self.lora_target_modules else None
            ),
            NODE_FIELDS["prompt-field"]: self.prompt_field,
            NODE_FIELDS["answer-field"]: self.answer_field,
            NODE_FIELDS["category-field"]: self.category_field,
            NODE_FAULT: self.fault,
        }
        config.update({k: v for k, v in optional.items() if v not in (None, "")})
        return config


@dataclass(frozen=True)
class FederationSpec:
    """The whole federation: its clients in partition order and where it was read from."""

    path: str
    clients: tuple[ClientSpec, ...]
    check_data_files: bool = True

    @property
    def names(self) -> tuple[str, ...]:
        """Client names in partition order."""
        return tuple(c.name for c in self.clients)

    @property
    def models(self) -> tuple[str, ...]:
        """Each client's model, in partition order."""
        return tuple(c.model for c in self.clients)

    @property
    def federation_config(self) -> str:
        """What ``flwr run --federation-config`` needs to simulate this federation."""
        return f"num-supernodes={len(self.clients)}"

    def client(self, partition_id: int) -> ClientSpec:
        """The client with this partition id.

        Raises
        ------
        SpecError
            If the spec has fewer clients.
        """
        if not 0 <= partition_id < len(self.clients):
            raise SpecError(
                self.path,
                "",
                "clients",
                f"lists {len(self.clients)} clients but a node has partition-id "
                f"{partition_id}; simulate with --federation-config "
                f'"{self.federation_config}"',
            )
        return self.clients[partition_id]
