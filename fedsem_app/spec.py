"""A federation described client by client in one YAML file.

The run-config key ``federation-spec`` names the file. It lists the clients in
order (client *i* is partition *i*), each with a name, its model, optional LoRA
settings, its data (a partition of the shared dataset, or its own file with a
field mapping), device and fault mode; ``defaults`` apply to every client that
does not name a key itself. The spec wins over the run config for what it names
per client; everything global stays in the run config::

    defaults:
      model: smollm2-135m
    clients:
      - name: alice
        lora: {rank: 4, target-modules: [q_proj, v_proj]}
      - name: bob
        data: {path: bob.jsonl, prompt-field: question, answer-field: response}
      - name: carol
        model: gemma3-270m

The file is read with ``yaml.safe_load`` only (a ``!!python/...`` tag is
refused) into frozen dataclasses, and checked before any training: an unknown
key (with the closest valid one), an unknown model, a missing data file,
duplicate client names, a wrong type or value stop with one line naming the
client and the key (:class:`SpecError`).

Each client becomes a SuperNode's node config (:meth:`ClientSpec.node_config`):
in simulation the ClientApp merges its spec entry under its own node config, in
deployment ``fedsem-spec deploy`` writes the same keys into each SuperNode's
``--node-config``. One translation serves both.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedsem_app.config import FAULT_MODES, AppConfig, ConfigError, LoraConfig

SPEC_KEY = "federation-spec"  # the run-config key that names the file

# Node-config keys a spec client sets (see fedsem_app.config.load_node_config).
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
DEVICES = ("auto", "cpu", "cuda", "mps")


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


# --- reading and checking ---------------------------------------------------------------


def resolve_spec_path(path: str, app_root: Path | None = None) -> Path:
    """The spec file a run-config value names.

    A relative path is taken from the working directory if the file is there,
    else from the app's folder (``flwr run`` runs the app elsewhere, e.g. in the
    SuperLink's working directory).
    """
    file = Path(path).expanduser()
    if file.is_absolute() or file.is_file():
        return file.resolve()
    root = app_root or Path(__file__).resolve().parents[1]
    return (root / file).resolve()


def _unknown(file: str, client: str, prefix: str, keys: Sequence[str], allowed: Sequence[str]):
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise SpecError(
                file,
                client,
                f"{prefix}{key}",
                f"unknown key{hint}; allowed: {', '.join(allowed)}",
            )


def _mapping(file: str, client: str, key: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(file, client, key, f"must be a mapping (key: value lines), got {value!r}")
    return value


def _string(file: str, client: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(file, client, key, f"must be a non-empty string, got {value!r}")
    return value.strip()


def _positive_int(file: str, client: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecError(file, client, key, f"must be a positive integer, got {value!r}")
    return value


def _modules(file: str, client: str, key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",")]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise SpecError(
            file,
            client,
            key,
            f"must be a list of module names like [q_proj, v_proj], got {value!r}",
        )
    return tuple(v.strip() for v in value)


def _client(
    file: str, base: Path, index: int, raw: Mapping[str, Any], defaults: Mapping[str, Any]
) -> ClientSpec:
    """One client entry over the defaults, checked key by key."""
    name = raw.get("name")
    label = str(name) if name else f"clients[{index}]"
    _unknown(file, label, "", list(raw), CLIENT_KEYS)
    name = _string(file, label, "name", name)
    merged = {**defaults, **raw}
    model = _string(file, name, "model", merged.get("model"))
    try:
        from fedsem_app.clients import check_model_name

        check_model_name(model)
    except ValueError as err:
        raise SpecError(file, name, "model", str(err)) from err

    lora = {**_mapping(file, name, "lora", defaults.get("lora"))}
    lora.update(_mapping(file, name, "lora", raw.get("lora")))
    _unknown(file, name, "lora.", list(lora), LORA_KEYS)
    rank = lora.get("rank")
    alpha = lora.get("alpha")
    targets = lora.get("target-modules")

    data = _mapping(file, name, "data", merged.get("data"))
    _unknown(file, name, "data.", list(data), DATA_KEYS)
    data_path = ""
    if "path" in data:
        path = Path(_string(file, name, "data.path", data["path"])).expanduser()
        data_path = str(path if path.is_absolute() else (base / path).resolve())
    fields = {k: _string(file, name, f"data.{k}", data[k]) for k in NODE_FIELDS if k in data}
    if fields and not data_path:
        key = next(iter(fields))
        raise SpecError(
            file,
            name,
            f"data.{key}",
            "maps the fields of the client's own file: give data.path too "
            "(the shared dataset's mapping is the run config's data.*-field)",
        )

    device = merged.get("device", "")
    if device:
        device = _string(file, name, "device", device)
        if device.split(":")[0] not in DEVICES:
            raise SpecError(file, name, "device", f"got {device!r}; allowed: {', '.join(DEVICES)}")
    fault = merged.get("fault", "")
    if fault:
        fault = _string(file, name, "fault", fault)
        if fault not in FAULT_MODES:
            raise SpecError(
                file, name, "fault", f"got {fault!r}; allowed: {', '.join(sorted(FAULT_MODES))}"
            )
    return ClientSpec(
        name=name,
        index=index,
        model=model,
        lora_rank=None if rank is None else _positive_int(file, name, "lora.rank", rank),
        lora_alpha=None if alpha is None else _positive_int(file, name, "lora.alpha", alpha),
        lora_target_modules=(
            None if targets is None else _modules(file, name, "lora.target-modules", targets)
        ),
        data_path=data_path,
        prompt_field=fields.get("prompt-field", ""),
        answer_field=fields.get("answer-field", ""),
        category_field=fields.get("category-field", ""),
        device=device,
        fault=fault,
    )


def parse_spec(text: str, file: str = "<spec>", base: Path | None = None) -> FederationSpec:
    """Parse and check a spec's YAML text.

    Parameters
    ----------
    text
        The YAML document.
    file
        Its name in error messages.
    base
        Folder that relative data paths start from (the spec file's folder).

    Raises
    ------
    SpecError
        On anything wrong, naming the client and the key.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        # safe_load refuses !!python/... tags ("could not determine a constructor").
        problem = " ".join(str(err).split())
        raise SpecError(file, "", "(yaml)", f"not a safe YAML document: {problem}") from err
    top = _mapping(file, "", "(top level)", raw)
    _unknown(file, "", "", list(top), TOP_KEYS)
    defaults = _mapping(file, "", "defaults", top.get("defaults"))
    _unknown(file, "", "defaults.", [k for k in defaults if k != "name"], CLIENT_KEYS[1:])
    if "name" in defaults:
        raise SpecError(file, "", "defaults.name", "every client names itself; remove it here")
    entries = top.get("clients")
    if not isinstance(entries, list) or not entries:
        raise SpecError(file, "", "clients", "give a list of clients, each with a name")
    check_files = top.get("check-data-files", True)
    if not isinstance(check_files, bool):
        raise SpecError(file, "", "check-data-files", f"must be true or false, got {check_files!r}")
    base = base or Path.cwd()
    clients = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise SpecError(
                file, f"clients[{index}]", "clients", f"each client is a mapping, got {entry!r}"
            )
        client = _client(file, base, index, entry, defaults)
        if client.name in seen:
            raise SpecError(
                file,
                client.name,
                "name",
                f"duplicate client name (clients[{seen[client.name]}] and clients[{index}]); "
                "give every client its own name",
            )
        seen[client.name] = index
        if check_files and client.data_path and not Path(client.data_path).is_file():
            raise SpecError(
                file,
                client.name,
                "data.path",
                f"file {client.data_path!r} does not exist; give an existing "
                "JSON/JSONL/CSV/Parquet file (relative paths start at the spec's folder)",
            )
        clients.append(client)
    return FederationSpec(file, tuple(clients), check_files)


def read_spec(path: str | Path) -> FederationSpec:
    """Read and check a spec file (relative data paths start at its folder).

    Raises
    ------
    SpecError
        If the file is missing or anything in it is wrong.
    """
    file = resolve_spec_path(str(path))
    if not file.is_file():
        raise SpecError(
            str(path), "", SPEC_KEY, f"file {str(file)!r} does not exist; give the spec's path"
        )
    return _read_cached(str(file), file.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_cached(file: str, mtime_ns: int) -> FederationSpec:
    # Every message of a simulation asks for the spec: read it once per version of the file.
    return parse_spec(Path(file).read_text(), file, Path(file).parent)


# --- the spec against the run ------------------------------------------------------------


def check_strategy(spec: FederationSpec, strategy: str, needs_shared_model: bool) -> None:
    """Refuse a strategy that averages parameters over clients that cannot share them.

    The message for mixed models is the one ``model.names`` gets
    (:func:`fedsem_app.strategies.shared_model_problem`); mixed LoRA settings
    would give adapters of different shapes.
    """
    if not needs_shared_model:
        return
    from fedsem_app.strategies import shared_model_problem

    first = spec.clients[0]
    problem = shared_model_problem(strategy, spec.models)
    if problem:
        other = next(c for c in spec.clients if c.model != first.model)
        raise SpecError(spec.path, other.name, "model", problem)
    for client in spec.clients[1:]:
        for key, attr in (
            ("lora.rank", "lora_rank"),
            ("lora.alpha", "lora_alpha"),
            ("lora.target-modules", "lora_target_modules"),
        ):
            if getattr(client, attr) != getattr(first, attr):
                raise SpecError(
                    spec.path,
                    client.name,
                    key,
                    f"strategy {strategy!r} averages adapters, so every client needs the same "
                    f"LoRA settings; {client.name!r} differs from {first.name!r}. Give them one "
                    "lora setting (e.g. under defaults) or use strategy='fedsem'",
                )


def apply_spec(cfg: AppConfig) -> tuple[AppConfig, FederationSpec | None]:
    """The run config as the server sees it with the spec: its models and client 0's LoRA.

    ``model.names`` becomes the spec's models in partition order (so the server's
    checks and a parameter strategy's shared model follow the spec), and the LoRA
    settings those of the first client (the same for all where a strategy shares
    adapters, see :func:`check_strategy`).
    """
    if not cfg.federation_spec:
        return cfg, None
    spec = read_spec(cfg.federation_spec)
    model = dataclasses.replace(cfg.model, names=spec.models)
    return dataclasses.replace(cfg, model=model, lora=spec.clients[0].lora(cfg.lora)), spec


def node_config_with_spec(cfg: AppConfig, node_config: Mapping[str, Any]) -> dict[str, Any]:
    """A node's config with its spec entry underneath (the node's own keys win).

    In simulation a node knows only its partition id: its entry is client
    ``partition-id`` of the spec. A SuperNode started from the spec
    (``fedsem-spec deploy``) already carries its entry as node config and is
    taken as it is, so its machine needs no copy of the spec.
    """
    node = dict(node_config)
    if not cfg.federation_spec or NODE_CLIENT_NAME in node:
        return node
    spec = read_spec(cfg.federation_spec)
    partition = node.get(NODE_PARTITION, 0)
    entry = spec.client(int(partition) if isinstance(partition, int) else 0)
    return {**entry.node_config(len(spec.clients)), **node}


def spec_summary(spec: FederationSpec) -> str:
    """One log line's worth: ``spec <file>: alice (smollm2-135m), bob (gemma3-270m)``."""
    clients = ", ".join(f"{c.name} ({c.model})" for c in spec.clients)
    return f"federation spec {spec.path}: {clients}"


def node_check(expected: Sequence[str], seen: Sequence[str]) -> tuple[list[str], list[str]]:
    """Which spec clients no node answered as, and which answering names the spec lacks.

    Returns
    -------
    tuple
        (missing, unexpected), each sorted; a node without a client name counts as
        unexpected under ``"(unnamed)"``.
    """
    names = [s or "(unnamed)" for s in seen]
    missing = sorted(set(expected) - set(names))
    unexpected = sorted(set(names) - set(expected))
    return missing, unexpected
