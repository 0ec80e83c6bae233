"""ClientApp: one handler per message type; it does what each message holds.

Runs on the client: Flower starts it on every SuperNode (or virtual node).

A train message may carry a global adapter (load it), pseudo-labels (train on
them with the private data), public prompts (answer them) and a request to
return the adapter. The same code path serves every strategy, so the
comparison between them is fair: same data, same trainer, same evaluation.
"""

from __future__ import annotations

import functools
import io
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsem_app import protocol as p
from fedsem_app.clients import load_client, resolve_device, set_num_threads
from fedsem_app.clients.energy import EnergyMeter
from fedsem_app.clients.evaluation import evaluate_client
from fedsem_app.clients.export import (
    export_client,
    node_adapter_file,
    remember_run,
    saved_final_adapter,
)
from fedsem_app.clients.faults import ADAPTER, ANSWERS, corrupt_adapter, corrupt_answers, targets
from fedsem_app.clients.mods import dp_clipping_mod, progress_mod
from fedsem_app.config.app import AppConfig, load_app_config
from fedsem_app.config.errors import ConfigError
from fedsem_app.config.node import NodeConfig, load_node_config
from fedsem_app.config.sections import DataConfig
from fedsem_app.data.partition import load_partition
from fedsem_app.data.records import QAPair, load_node_private
from fedsem_app.files import atomic_write
from fedsem_app.quantize import decode_record, encode_record
from fedsem_app.spec.apply import node_config_with_spec
from fedsem_app.wire import pack_texts, unpack_texts

# progress_mod: a log line per message (visible in flwr run --stream); dp_clipping_mod:
# Flower's client-side clipping when the server asks for it (dp.clip-side='client').
app = ClientApp(mods=[progress_mod, dp_clipping_mod])

STATE_ADAPTER = "fedsem-adapter"  # key of this node's own adapter in context.state
SERVER_TEXT_LIMIT = 256 * 2**20  # most bytes a compressed text list from the server may inflate to


@functools.lru_cache(maxsize=32)
def private_pairs(
    data: DataConfig, seed: int, node: NodeConfig, source: str = p.OWN_DATA
) -> tuple[QAPair, ...]:
    """Private data of a node: its own file or partition, or (``all-partitions``) the pool."""
    if node.data_path:
        return tuple(load_node_private(node.data_path, data))
    if source == p.ALL_PARTITIONS:
        return tuple(load_partition(data, seed, 1, 0))
    return tuple(load_partition(data, seed, node.num_partitions, node.partition_id))


def _setup(context: Context, config: ConfigRecord):
    cfg = load_app_config(context.run_config)
    remember_run(context, config)  # names the run for adapter_file, also after a resume
    try:
        # A federation spec's entry for this node lies under its own node config.
        node = load_node_config(node_config_with_spec(cfg, context.node_config), cfg)
        cfg = node.apply(cfg)  # this client's LoRA, data mapping and fault mode
    except ConfigError as err:
        # The server logs only a node id; name the node's partition as model errors do.
        partition = context.node_config.get("partition-id", "?")
        raise RuntimeError(f"node with partition-id {partition}: {err}") from err
    set_num_threads(cfg.train.num_threads)
    try:
        client = load_client(
            node.model_name,
            cfg.lora,
            device=resolve_device(node.device),
            cache_dir=cfg.model.cache_path,
            # A strategy that defines its own prompt format (FedIT: alpaca) sends it.
            template=str(config.get(p.TEMPLATE, "") or cfg.model.template),
            seed=cfg.seed,
        )
    except Exception as err:
        raise RuntimeError(
            f"node with partition-id {node.partition_id}: cannot load model-name "
            f"{node.model_name!r}: {err}"
        ) from err
    return cfg, node, client


def adapter_file(cache_dir: Path, context: Context, model_name: str) -> Path:
    """Where this node keeps its own adapter of ``model_name`` on disk for this run.

    Keyed by the run folder and partition id, not Flower's run and node ids, which
    change when a run is resumed (see :func:`fedsem_app.clients.export.node_adapter_file`).
    """
    return node_adapter_file(cache_dir, context, model_name)


def _save_adapter(state: dict[str, np.ndarray], path: Path) -> None:
    # A SuperNode keeps context.state in memory only; the file lets a restarted node
    # go on with its adapter. Write then rename: a crash never leaves half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **state)
    atomic_write(path, buffer.getvalue())


def _restore_adapter(client, msg: Message, context: Context, cache_dir: Path) -> None:
    # A global adapter sent by the server wins; otherwise this node's own one, from
    # memory, else from disk (after a SuperNode restart or a resume), else the one it
    # saved when the run ended (a finished run extended by a resume), else a fresh one.
    sent = msg.content.get(p.ADAPTER)
    saved = adapter_file(cache_dir, context, client.name)
    config = msg.content.get(p.TRAIN_CONFIG, ConfigRecord())
    if isinstance(sent, ArrayRecord) and len(sent) > 0:
        client.set_adapter(decode_record(sent))  # quantized on the wire or float32
    elif STATE_ADAPTER in context.state:
        client.set_adapter({k: v.numpy() for k, v in context.state[STATE_ADAPTER].items()})
    elif saved.is_file():
        with np.load(saved) as arrays:
            client.set_adapter({k: arrays[k] for k in arrays.files})
    elif (final := saved_final_adapter(config, context, _partition(context))) is not None:
        client.set_adapter(final)
    else:
        client.set_adapter(None)


def _partition(context: Context) -> int:
    return int(context.node_config.get("partition-id", 0))


def _adapter_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


def _qa(record: ConfigRecord | None) -> list[tuple[int, str, str]]:
    if record is None:
        return []
    ids = record.get(p.IDS, [])
    prompts = unpack_texts(record, p.PROMPTS, SERVER_TEXT_LIMIT) or []
    texts = unpack_texts(record, p.TEXTS, SERVER_TEXT_LIMIT) or [""] * len(ids)
    return list(zip(ids, prompts, texts, strict=True))


def _pseudo(record: ConfigRecord | None) -> list[tuple[str, str, bool]]:
    # (prompt, text, finished); a server that sends no flags sends finished labels.
    pairs = _qa(record)
    finished = list(record.get(p.FINISHED, [])) if record is not None else []
    finished = finished if len(finished) == len(pairs) else [True] * len(pairs)
    return [(q, a, bool(f)) for (_, q, a), f in zip(pairs, finished, strict=True)]


def _info(cfg: AppConfig, node: NodeConfig) -> ConfigRecord:
    return ConfigRecord({p.MODEL_NAME: node.model_name, p.CLIENT_NAME: node.client_name})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Fine-tune on private data (+ pseudo-labels); answer public prompts if sent."""
    meter = EnergyMeter.start()
    config = msg.content.get(p.TRAIN_CONFIG, ConfigRecord())
    cfg, node, client = _setup(context, config)
    server_round = int(config.get(p.ROUND, 0))
    faulty = cfg.fault.applies_to(node.partition_id)
    if faulty and cfg.fault.mode == "raise":
        raise RuntimeError(
            f"node with partition-id {node.partition_id}: injected fault (fault.mode='raise')"
        )
    if faulty and cfg.fault.mode == "stall":
        time.sleep(cfg.fault.stall_seconds)
    rng = np.random.default_rng([cfg.seed, server_round, node.partition_id])
    _restore_adapter(client, msg, context, cfg.model.cache_path)

    try:
        private = private_pairs(cfg.data, cfg.seed, node, str(config.get(p.TRAIN_DATA, p.OWN_DATA)))
    except ConfigError as err:  # e.g. a node's data file without the mapped fields
        raise RuntimeError(f"node with partition-id {node.partition_id}: {err}") from err
    stats = client.train(
        [(q.prompt, q.answer) for q in private],
        cfg.train,
        seed=cfg.seed + 1000 * server_round + node.partition_id,
        proximal_mu=float(config.get(p.PROXIMAL_MU, 0.0)),
        pseudo=_pseudo(msg.content.get(p.PSEUDO)),
        pseudo_share=cfg.fedsem.pseudo_share,
        # pooled trains with the federation's compute: the server sends its step count.
        steps=int(config.get(p.LOCAL_STEPS, cfg.train.local_steps)),
    )
    trained = client.adapter_state()
    context.state[STATE_ADAPTER] = _adapter_record(trained)
    _save_adapter(trained, adapter_file(cfg.model.cache_path, context, node.model_name))

    content = RecordDict({p.INFO: _info(cfg, node)})
    metrics = {
        p.NUM_EXAMPLES: max(len(private), 1),
        p.TRAIN_LOSS: float(stats["train-loss"]),
        p.TRAIN_SECONDS: float(stats["train-seconds"]),
        p.GENERATE_SECONDS: 0.0,
    }
    public = _qa(msg.content.get(p.PUBLIC))
    if public:
        t0 = time.perf_counter()
        answers = client.answer([prompt for _, prompt, _ in public], cfg.gen)
        metrics[p.GENERATE_SECONDS] = time.perf_counter() - t0
        # The server refuses longer answers; cut them here rather than lose the vote.
        texts = [t[: cfg.fedsem.max_answer_chars] for t in answers.texts]
        finished = [
            done and len(t) <= cfg.fedsem.max_answer_chars
            for t, done in zip(answers.texts, answers.finished, strict=True)
        ]
        confidences = [float(c) for c in answers.confidences]
        if faulty and targets(cfg.fault.mode, ANSWERS):
            texts, confidences = corrupt_answers(cfg.fault, texts, confidences, rng)
        content[p.ANSWERS] = ConfigRecord(
            {
                p.IDS: [i for i, _, _ in public],
                **pack_texts(p.TEXTS, texts, cfg.fedsem.wire_compression),
                p.CONFIDENCES: confidences,
                p.FINISHED: finished,
            }
        )
    if config.get(p.RETURN_ADAPTER, False):
        code = str(config.get(p.QUANTIZE, "none"))
        content[p.ADAPTER] = context.state[STATE_ADAPTER]
        if faulty and targets(cfg.fault.mode, ADAPTER):
            trained = corrupt_adapter(cfg.fault, client.adapter_state(), rng)
            content[p.ADAPTER] = _adapter_record(trained)
        if code != "none":  # the strategy asked for the adapter quantized on the wire
            content[p.ADAPTER] = encode_record(
                trained, code, str(config.get(p.QUANTIZE_SCALES, "row"))
            )
    metrics.update(meter.stop().as_metrics())
    content[p.METRICS] = MetricRecord(metrics)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the current model (global adapter if sent, else its own) on the test prompts."""
    meter = EnergyMeter.start()
    config = msg.content.get(p.TRAIN_CONFIG, ConfigRecord())
    cfg, node, client = _setup(context, config)
    _restore_adapter(client, msg, context, cfg.model.cache_path)
    test = _qa(msg.content.get(p.TEST))
    if not test:
        raise ValueError("evaluate message carries no test prompts")
    metrics = evaluate_client(
        client,
        [prompt for _, prompt, _ in test],
        [ref for _, _, ref in test],
        cfg.gen,
        cfg.fedsem.embedder,
        device=client.device,
        generate=cfg.eval.generate,
    )
    info = _info(cfg, node)
    # After the last round: the client's own adapter goes to final/ (text strategies).
    final = export_client(
        client, cfg, context, config, node.partition_id, metrics, node.client_name
    )
    if final:
        info[p.FINAL_ADAPTER] = final
    metrics.update(meter.stop().as_metrics())
    content = RecordDict({p.METRICS: MetricRecord(metrics), p.INFO: info})
    return Message(content=content, reply_to=msg)
