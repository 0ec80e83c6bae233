"""What a run leaves to use: its final LoRA adapters in ``<run folder>/final/``.

Layout::

    final/README.md          overview: strategy, rounds, data, final metrics, the adapters
    final/index.json         the same as data: one entry per adapter folder
    final/global/            parameter strategies (fedavg-lora, fedit, fedprox-lora): the
                             global adapter, written by the server after the last round
    final/client-<N>/        text strategies (fedsem, local, pooled): client N's own
                             adapter (N = partition id), written by the client itself

Every adapter folder is a peft ``save_pretrained`` folder (``adapter_config.json``,
``adapter_model.safetensors``) plus the tokenizer, ``fedsem.json`` (model name,
prompt template, strategy, round: what ``fedsem-chat`` needs) and a model card
``README.md``. Load one with ``PeftModel.from_pretrained(base_model, folder)``.

A client learns where to write from the config every train and evaluate message
carries (:func:`run_config_record`): the server's run folder, which in simulation
and on a shared file system is where the adapter belongs. A deployed SuperNode
can name its own place with ``--node-config "output-dir='/srv/fedsem'"``; it then
writes ``<output-dir>/<run folder name>/final/client-<N>/``. Either way the
client tells the server where, in its evaluate reply's ``info`` record
(:data:`~fedsem_app.protocol.FINAL_ADAPTER`), and ``final/index.json`` lists it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedsem_app import protocol as p
from fedsem_app.comm import PassThroughGrid
from fedsem_app.config import AppConfig

FINAL_DIR = "final"
GLOBAL_NAME = "global"
META_FILE = "fedsem.json"
INDEX_FILE = "index.json"
ADAPTER_CACHE = "_adapters"  # under model.cache-dir: each node's adapter between rounds
OUTPUT_DIR_KEY = "output-dir"  # node-config key of a SuperNode's own output folder
STATE_RUN = "fedsem-run"  # context.state record: the run this node works for

# Licence of each registered dataset, for the model cards. Anything else is the
# user's own data (a file or a hub dataset), whose licence the app cannot know.
DATA_LICENCES = {"construction-faq": "CC-BY-4.0 (zaragoza-construction-faq package)"}

CARD_METRICS = ("rouge-l", "embed-sim", "nll", "perplexity")


def client_folder_name(partition_id: int) -> str:
    """Name of a client's adapter folder inside ``final/``."""
    return f"client-{partition_id}"


# --- server -> client: which run, how many rounds, who saves -------------------------


def run_config_record(folder: Path, num_rounds: int, clients_export: bool) -> ConfigRecord:
    """The bookkeeping the server adds to every train and evaluate config.

    Parameters
    ----------
    folder
        The run folder (absolute). It names the run across a resume, where Flower's
        run id changes, so clients key their saved adapters by it.
    num_rounds
        The run's total rounds: a client knows when it evaluates the last one.
    clients_export
        True for strategies whose clients keep their own adapter (fedsem, local,
        pooled): each saves it after the last round.
    """
    return ConfigRecord(
        {
            p.RUN_FOLDER: str(folder),
            p.NUM_ROUNDS: int(num_rounds),
            p.CLIENT_EXPORT: bool(clients_export),
        }
    )


def remember_run(context: Context, config: ConfigRecord) -> None:
    """Keep the run folder a message names in the node's state (for :func:`run_key`)."""
    folder = str(config.get(p.RUN_FOLDER, "") or "")
    if folder:
        context.state[STATE_RUN] = ConfigRecord({p.RUN_FOLDER: folder})


def run_key(context: Context) -> str:
    """A file-name-safe name of this node's run, stable across a resume.

    The run folder's name plus a short hash of its full path, when the server named
    it (every message does); Flower's run id otherwise (a message from another app).
    """
    record = context.state.get(STATE_RUN)
    folder = str(record.get(p.RUN_FOLDER, "")) if isinstance(record, ConfigRecord) else ""
    if not folder:
        return f"run-{context.run_id}"
    digest = hashlib.sha256(folder.encode()).hexdigest()[:10]
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


# --- where a client saves ----------------------------------------------------------


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


# --- writing an adapter folder -----------------------------------------------------


def base_model_description(model_name: str) -> str:
    """One line on a base model: the registry's description, else the name itself."""
    from fedsem_app.clients import MODEL_REGISTRY

    spec = MODEL_REGISTRY.get(model_name)
    return f"`{model_name}`: {spec.description}" if spec else f"`{model_name}`"


def data_description(cfg: AppConfig) -> tuple[str, str]:
    """The data a run trained on and its licence, as far as the app knows it."""
    if cfg.data.path:
        return f"file `{cfg.data.path}`", "as stated by the file's owner (not known to fedsem)"
    licence = DATA_LICENCES.get(cfg.data.name, "see the dataset's own card (not known to fedsem)")
    return f"`{cfg.data.name}`", licence


def model_card(meta: Mapping[str, Any], cfg: AppConfig, metrics: Mapping[str, Any]) -> str:
    """A model card (markdown) for one adapter folder.

    Parameters
    ----------
    meta
        The folder's ``fedsem.json`` content (model name, template, strategy, round,
        partition).
    cfg
        The run's configuration.
    metrics
        Final metrics to show (a client's own evaluation, or the federation's mean).
    """
    data, licence = data_description(cfg)
    who = (
        "the federation's global adapter"
        if meta.get("partition-id") is None
        else f"the own adapter of client {meta['partition-id']} (node {meta.get('node-id')})"
    )
    rows = "\n".join(f"| {k} | {float(metrics[k]):.4f} |" for k in CARD_METRICS if k in metrics)
    metrics_table = (
        f"| metric | value |\n|---|---:|\n{rows}" if rows else "No evaluation was recorded."
    )
    tags = ", ".join(dict.fromkeys(["lora", "federated-learning", "fedsem", meta["strategy"]]))
    base_path = meta.get("base-model-path") or "<the base model's folder or hub id>"
    client_arg = "" if meta.get("partition-id") is None else f"--client {meta['partition-id']} "
    lora, train = cfg.lora, cfg.train
    return f"""---
library_name: peft
base_model: {meta["model-name"]}
tags: [{tags}]
---

# LoRA adapter: {meta["model-name"]}, {meta["strategy"]}, {who}

- **Base model**: {base_model_description(meta["model-name"])}, loaded from `{base_path}`
- **Strategy**: `{meta["strategy"]}`, after round {meta["round"]} of {cfg.num_server_rounds}
- **Data**: {data}; licence: {licence}; split seed {cfg.seed}, `{cfg.data.partitioner}` partitions
- **Prompt template**: `{meta["template"]}` (answers follow the template's prompt text)
- **LoRA**: rank {lora.rank}, alpha {lora.alpha}, dropout {lora.dropout}; {train.local_steps} \
local steps a round, batch {train.batch_size}, learning rate {train.learning_rate}

## Final metrics (held-out test prompts)

{metrics_table}

## Use

```bash
fedsem-chat <run folder> {client_arg}--prompt "How long does concrete cure?"
```

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base_path}")
model = PeftModel.from_pretrained(base, "<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```

The base model's weights are not in this folder (`base_model_name_or_path` in
`adapter_config.json` names where they were loaded from).
"""


def save_adapter_folder(
    client, target: Path, meta: Mapping[str, Any], cfg: AppConfig, metrics: Mapping[str, Any]
) -> Path:
    """Save ``client``'s current adapter, tokenizer, ``fedsem.json`` and card to ``target``.

    Written into a temporary sibling and renamed into place, replacing an older
    folder of the same name (a resumed run that goes on past its old end), so a
    crash never leaves half an adapter.

    Parameters
    ----------
    client
        A :class:`~fedsem_app.clients.CausalLMClient` with the adapter to save.
    target
        The adapter folder, e.g. ``<run>/final/client-0``.
    meta
        Its ``fedsem.json`` content.
    cfg, metrics
        For the model card (see :func:`model_card`).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        client.model.save_pretrained(tmp)
        client.tokenizer.save_pretrained(tmp)
        (tmp / META_FILE).write_text(json.dumps(dict(meta), indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(meta, cfg, metrics))
        tmp.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def adapter_meta(
    cfg: AppConfig,
    client,
    server_round: int,
    partition_id: int | None = None,
    node_id: int | None = None,
    client_name: str = "",
) -> dict[str, Any]:
    """The ``fedsem.json`` of an adapter folder (``client-name``: its federation-spec name)."""
    return {
        "client-name": client_name,
        "model-name": client.name,
        "architecture": client.architecture,
        "template": client.template,
        "strategy": cfg.strategy,
        "round": int(server_round),
        "partition-id": partition_id,
        "node-id": node_id,
        "max-new-tokens": cfg.gen.max_new_tokens,
        "cache-dir": str(cfg.model.cache_path),
        "base-model-path": str(
            getattr(client.model.peft_config.get("default"), "base_model_name_or_path", "") or ""
        ),
    }


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


# --- the server's side ---------------------------------------------------------------


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
