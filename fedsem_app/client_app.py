"""ClientApp: one handler per message type; it does what each message holds.

Runs on the client: Flower starts it on every SuperNode (or virtual node).

A train message may carry a global adapter (load it), pseudo-labels (train on
them with the private data), public prompts (answer them) and a request to
return the adapter. The same code path serves every strategy, so the
comparison between them is fair: same data, same trainer, same evaluation.

The handlers do the work; mods wrap them (first is outermost): on every message
``progress_mod`` (a log line) and ``dp_clipping_mod`` (client-side DP clipping,
:mod:`fedsem_app.clients.mods`), then ``energy_mod`` (CPU-seconds and GPU joules into
the reply's metrics, :mod:`fedsem_app.clients.energy`) and, on train messages,
``fault_mod`` (a faulty node raises, stalls or corrupts its reply).
"""

from __future__ import annotations

import functools
import io
import time
from collections import Counter
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsem_app import protocol as p
from fedsem_app.clients import load_client, resolve_device, set_num_threads
from fedsem_app.clients.energy import energy_mod
from fedsem_app.clients.evaluation import FactTargets, evaluate_client
from fedsem_app.clients.export import (
    export_client,
    node_adapter_file,
    remember_run,
    saved_final_adapter,
)
from fedsem_app.clients.faults import corrupt_private
from fedsem_app.clients.mods import (
    STATE_ADAPTER,
    TEXT_LIMIT,
    adapter_reply,
    dp_clipping_mod,
    fault_mod,
    node_error,
    node_settings,
    progress_mod,
    read_request,
)
from fedsem_app.clients.relevance import relevance_scores
from fedsem_app.config.app import AppConfig
from fedsem_app.config.errors import ConfigError
from fedsem_app.config.node import NodeConfig
from fedsem_app.config.sections import DataConfig
from fedsem_app.data.partition import load_partition
from fedsem_app.data.records import QAPair, load_node_private
from fedsem_app.files import atomic_write
from fedsem_app.quantize import adapter_record, decode_record
from fedsem_app.wire import pack_texts, unpack_texts

# progress_mod: a log line per message (visible in flwr run --stream); dp_clipping_mod:
# Flower's client-side clipping when the server asks for it (dp.clip-side='client').
app = ClientApp(mods=[progress_mod, dp_clipping_mod])


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
    # The message's request, the node's settings and its model, read once per message.
    remember_run(context, config)  # names the run for adapter_file, also after a resume
    request = read_request(context, config)
    cfg, node = node_settings(context)
    set_num_threads(cfg.train.num_threads)
    try:
        client = load_client(
            node.model_name,
            cfg.lora,
            device=resolve_device(node.device),
            cache_dir=cfg.model.cache_path,
            # A strategy that defines its own prompt format (FedIT: alpaca) sends it.
            template=str(request.template or cfg.model.template),
            seed=cfg.seed,
        )
    except Exception as err:
        raise RuntimeError(
            f"node with partition-id {node.partition_id}: cannot load model-name "
            f"{node.model_name!r}: {err}"
        ) from err
    return cfg, node, request, client


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
        client.set_adapter(decode_record(context.state[STATE_ADAPTER]))
    elif saved.is_file():
        with np.load(saved) as arrays:
            client.set_adapter({k: arrays[k] for k in arrays.files})
    elif (final := saved_final_adapter(config, context, _partition(context))) is not None:
        client.set_adapter(final)
    else:
        client.set_adapter(None)


def _partition(context: Context) -> int:
    return int(context.node_config.get("partition-id", 0))


def _qa(record: ConfigRecord | None) -> list[tuple[int, str, str]]:
    if record is None:
        return []
    ids = record.get(p.IDS, [])
    prompts = unpack_texts(record, p.PROMPTS, TEXT_LIMIT) or []
    texts = unpack_texts(record, p.TEXTS, TEXT_LIMIT) or [""] * len(ids)
    return list(zip(ids, prompts, texts, strict=True))


def _pseudo(record: ConfigRecord | None) -> list[tuple[str, str, bool]]:
    # (prompt, text, finished); a server that sends no flags sends finished labels.
    pairs = _qa(record)
    finished = list(record.get(p.FINISHED, [])) if record is not None else []
    finished = finished if len(finished) == len(pairs) else [True] * len(pairs)
    return [(q, a, bool(f)) for (_, q, a), f in zip(pairs, finished, strict=True)]


def _fact_targets(
    record: ConfigRecord, cfg: AppConfig, node: NodeConfig, context: Context
) -> FactTargets | None:
    # The test record's short values, if it has them (facts data), with the subsets
    # fact-accuracy is reported on: covered by a public prompt or not (as the server
    # says), in this node's own private data or only in other clients' (its own data).
    values = [str(v) for v in record.get(p.VALUES, [])]
    if not values:
        return None
    subsets: list[tuple[str, tuple[bool, ...]]] = []
    covered = [bool(c) for c in record.get(p.COVERED, [])]
    if len(covered) == len(values):
        subsets += [("covered", tuple(covered)), ("uncovered", tuple(not c for c in covered))]
    facts = [str(f) for f in record.get(p.FACTS, [])]
    if len(facts) == len(values) and any(facts):
        try:
            own_facts = {q.fact for q in private_pairs(cfg.data, cfg.seed, node) if q.fact}
        except ConfigError as err:
            raise node_error(context, err) from err
        own = tuple(f in own_facts for f in facts)
        subsets += [
            ("own", own),
            ("other", tuple(bool(f) and not o for f, o in zip(facts, own, strict=True))),
        ]
    return FactTargets(tuple(values), tuple(subsets))


def _info(cfg: AppConfig, node: NodeConfig) -> ConfigRecord:
    return ConfigRecord({p.MODEL_NAME: node.model_name, p.CLIENT_NAME: node.client_name})


# energy_mod outside fault_mod: a stalling node's sleep is metered, as its work.
@app.train(mods=[energy_mod, fault_mod])
def train(msg: Message, context: Context) -> Message:
    """Fine-tune on private data (+ pseudo-labels); answer public prompts if sent."""
    config = msg.content.get(p.TRAIN_CONFIG, ConfigRecord())
    cfg, node, request, client = _setup(context, config)
    server_round = 0 if request.server_round is None else int(request.server_round)
    _restore_adapter(client, msg, context, cfg.model.cache_path)

    try:
        private = private_pairs(cfg.data, cfg.seed, node, str(request.train_data or p.OWN_DATA))
    except ConfigError as err:  # e.g. a node's data file without the mapped fields
        raise node_error(context, err) from err
    stats = client.train(
        # A backdoor node (fault.mode='backdoor') trains on poisoned pairs: the one
        # fault that acts inside the handler, since it changes what the node learns.
        corrupt_private(cfg.fault, node.partition_id, [(q.prompt, q.answer) for q in private]),
        cfg.train,
        seed=cfg.seed + 1000 * server_round + node.partition_id,
        proximal_mu=0.0 if request.proximal_mu is None else float(request.proximal_mu),
        pseudo=_pseudo(msg.content.get(p.PSEUDO)),
        pseudo_share=cfg.fedsem.pseudo_share,
        # pooled trains with the federation's compute: the server sends its step count.
        steps=cfg.train.local_steps if request.local_steps is None else int(request.local_steps),
    )
    trained = client.adapter_state()
    # fault_mod corrupts a copy of this one: the node itself stays honest.
    context.state[STATE_ADAPTER] = adapter_record(trained)
    _save_adapter(trained, adapter_file(cfg.model.cache_path, context, node.model_name))

    content = RecordDict({p.INFO: _info(cfg, node)})
    if cfg.fedsem.diagnostics:  # benchmarks: which categories this node's data covers
        counts = Counter(q.category for q in private if q.category)
        content[p.INFO][p.CATEGORIES] = sorted(counts)
        content[p.INFO][p.CATEGORY_COUNTS] = [counts[c] for c in sorted(counts)]
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
        record = ConfigRecord(
            {
                p.IDS: [i for i, _, _ in public],
                **pack_texts(p.TEXTS, texts, cfg.fedsem.wire_compression),
                p.CONFIDENCES: [float(c) for c in answers.confidences],
                p.FINISHED: finished,
            }
        )
        # How relevant each prompt is to this node's private data (not sent for "none").
        relevance = relevance_scores(
            cfg.fedsem.relevance,
            client,
            [prompt for _, prompt, _ in public],
            [q.prompt for q in private],
            cfg.fedsem,
        )
        if relevance is not None:
            record[p.RELEVANCE] = relevance
        content[p.ANSWERS] = record
    if request.return_adapter:
        content[p.ADAPTER] = adapter_reply(trained, request)
    content[p.METRICS] = MetricRecord(metrics)
    return Message(content=content, reply_to=msg)


@app.evaluate(mods=[energy_mod])
def evaluate(msg: Message, context: Context) -> Message:
    """Score the current model (global adapter if sent, else its own) on the test prompts."""
    config = msg.content.get(p.TRAIN_CONFIG, ConfigRecord())
    cfg, node, _, client = _setup(context, config)
    _restore_adapter(client, msg, context, cfg.model.cache_path)
    record = msg.content.get(p.TEST)
    test = _qa(record)
    if not test:
        raise ValueError("evaluate message carries no test prompts")
    facts = _fact_targets(record, cfg, node, context) if cfg.eval.generate else None
    metrics = evaluate_client(
        client,
        [prompt for _, prompt, _ in test],
        [ref for _, _, ref in test],
        cfg.gen,
        cfg.fedsem.embedder,
        device=client.device,
        generate=cfg.eval.generate,
        facts=facts,
    )
    info = _info(cfg, node)
    # After the last round: the client's own adapter goes to final/ (text strategies).
    final = export_client(
        client, cfg, context, config, node.partition_id, metrics, node.client_name
    )
    if final:
        info[p.FINAL_ADAPTER] = final
    content = RecordDict({p.METRICS: MetricRecord(metrics), p.INFO: info})
    return Message(content=content, reply_to=msg)
