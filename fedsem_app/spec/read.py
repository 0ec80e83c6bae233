"""Reading a federation spec (YAML) and checking every key, with actionable errors.

Shared: the server, the clients and ``fedsem-spec`` read the same spec.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from fedsem_app.clients.faults import FAULT_MODES
from fedsem_app.config.sections import DEVICES
from fedsem_app.spec.schema import (
    CLIENT_KEYS,
    DATA_KEYS,
    LORA_KEYS,
    NODE_FIELDS,
    SPEC_KEY,
    TOP_KEYS,
    ClientSpec,
    FederationSpec,
    SpecError,
)


def resolve_spec_path(path: str, app_root: Path | None = None) -> Path:
    """The spec file a run-config value names.

    A relative path is taken from the working directory if the file is there,
    else from the app's folder (``flwr run`` runs the app elsewhere, e.g. in the
    SuperLink's working directory).
    """
    file = Path(path).expanduser()
    if file.is_absolute() or file.is_file():
        return file.resolve()
    root = app_root or Path(__file__).resolve().parents[2]  # fedsem_app/spec/ -> app root
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
