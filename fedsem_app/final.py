"""What a run leaves to use: its final LoRA adapters in ``<run folder>/final/``.

Shared: the server and the clients write these folders, ``fedsem-chat`` reads them.

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

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord

from fedsem_app import protocol as p
from fedsem_app.config.app import AppConfig
from fedsem_app.run.results import run_token

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


def run_config_record(folder: Path, num_rounds: int, clients_export: bool) -> ConfigRecord:
    """The bookkeeping the server adds to every train and evaluate config.

    Parameters
    ----------
    folder
        The run folder (absolute). It and its run token name the run across a resume,
        where Flower's run id changes, so clients key their saved adapters by them.
    num_rounds
        The run's total rounds: a client knows when it evaluates the last one.
    clients_export
        True for strategies whose clients keep their own adapter (fedsem, local,
        pooled): each saves it after the last round.
    """
    return ConfigRecord(
        {
            p.RUN_FOLDER: str(folder),
            p.RUN_TOKEN: run_token(folder),
            p.NUM_ROUNDS: int(num_rounds),
            p.CLIENT_EXPORT: bool(clients_export),
        }
    )


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
