"""ClientApp mods: what wraps the messages a client handles, and what they share.

Runs on the client. Each mod is ``mod(msg, context, call_next) -> reply``, as Flower's
own (``message_size_mod``, ``fixedclipping_mod``):

- :func:`progress_mod`: one line through Flower's logger when a client starts and
  ends each train and evaluate message (what it does, loss, answers, scores,
  seconds), so ``flwr run --stream`` shows the clients at work.
- :func:`dp_clipping_mod`: Flower's client-side clipping when the server asks for it
  (``dp.clip-side = "client"``, see :mod:`fedsem_app.strategies.dp`).
- :func:`fault_mod`: fault injection on train messages (:mod:`fedsem_app.clients.faults`):
  raise or stall before the handler, corrupt its reply after it.

The energy meter's mod is :func:`fedsem_app.clients.energy.energy_mod`.
:func:`node_settings`, :func:`read_request` and :func:`adapter_reply` are the pieces
the handlers and the mods both need, so that both read a node and a request the
same way.
"""

from __future__ import annotations

import time
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp.mod import fixedclipping_mod
from flwr.common.logger import log
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedsem_app import protocol as p
from fedsem_app.clients.faults import ADAPTER, ANSWERS, corrupt_adapter, corrupt_answers, targets
from fedsem_app.config.app import AppConfig, load_app_config
from fedsem_app.config.errors import ConfigError
from fedsem_app.config.node import NodeConfig, load_node_config
from fedsem_app.quantize import decode_record, encode_record
from fedsem_app.spec.apply import node_config_with_spec
from fedsem_app.wire import pack_texts, unpack_texts

# The train handler keeps the adapter it trained under this key of context.state (the
# node goes on with it); fault_mod corrupts a copy of it for the reply.
STATE_ADAPTER = "fedsem-adapter"
# Most bytes a compressed text list may inflate to (the server's, or a reply's own).
TEXT_LIMIT = 256 * 2**20


def node_error(context: Context, err: Exception) -> RuntimeError:
    """``err`` as the error this node reports, naming its partition.

    The server logs only a node id; the partition id is what a person can look up.
    """
    partition = context.node_config.get("partition-id", "?")
    return RuntimeError(f"node with partition-id {partition}: {err}")


def node_settings(context: Context) -> tuple[AppConfig, NodeConfig]:
    """The run config as this node runs it, and the node's own settings.

    Raises
    ------
    RuntimeError
        Naming the node's partition, if its node config (or spec entry) is wrong.
    """
    cfg = load_app_config(context.run_config)
    try:
        # A federation spec's entry for this node lies under its own node config.
        node = load_node_config(node_config_with_spec(cfg, context.node_config), cfg)
    except ConfigError as err:
        raise node_error(context, err) from err
    return node.apply(cfg), node  # this client's LoRA, data mapping and fault mode


def read_request(context: Context, config: ConfigRecord) -> p.TrainRequest:
    """The train request of a message's config, with the node named if it is wrong."""
    try:
        return p.TrainRequest.from_config(config)
    except ValueError as err:  # e.g. an unknown train-data source
        raise node_error(context, err) from err


def adapter_reply(state: dict[str, np.ndarray], request: p.TrainRequest) -> ArrayRecord:
    """The adapter as the request asks for it on the wire: float32, or int8/int4 codes."""
    code = "none" if request.quantize is None else str(request.quantize)
    scales = "row" if request.quantize_scales is None else str(request.quantize_scales)
    return encode_record(state, code, scales)


def describe_request(msg) -> str:
    """What a train or evaluate message asks of the client, in a few words."""
    config = msg.content.get(p.TRAIN_CONFIG)
    server_round = config.get(p.ROUND, "?") if config is not None else "?"
    parts = [f"round {server_round}"]
    if msg.metadata.message_type.startswith(p.TRAIN):
        pseudo = msg.content.get(p.PSEUDO)
        public = msg.content.get(p.PUBLIC)
        if pseudo is not None and len(pseudo.get(p.IDS, [])):
            parts.append(f"training with {len(pseudo[p.IDS])} pseudo-labels")
        else:
            parts.append("training")
        if public is not None and len(public.get(p.IDS, [])):
            parts.append(f"then generating {len(public[p.IDS])} answers")
    else:
        test = msg.content.get(p.TEST)
        parts.append(
            f"evaluating on {len(test.get(p.IDS, [])) if test is not None else 0} test prompts"
        )
    return ", ".join(parts)


def describe_reply(reply) -> str:
    """What a client's reply reports: loss, answers, scores and seconds."""
    if reply.has_error():
        return f"failed: {reply.error.reason}"
    metrics = reply.content.get(p.METRICS)
    if metrics is None:
        return "done"
    shown = []
    for key, fmt in (
        (p.TRAIN_LOSS, "train-loss {:.4f}"),
        (p.TRAIN_SECONDS, "trained in {:.1f} s"),
        (p.GENERATE_SECONDS, "generated in {:.1f} s"),
        (p.ROUGE_L, "rouge-l {:.3f}"),
        (p.EMBED_SIM, "embed-sim {:.3f}"),
        (p.NLL, "nll {:.3f}"),
        (p.FACT_ACCURACY, "fact-accuracy {:.3f}"),
        (p.EVAL_SECONDS, "in {:.1f} s"),
    ):
        if key in metrics and not (key == p.GENERATE_SECONDS and not metrics[key]):
            shown.append(fmt.format(float(metrics[key])))
    return "done: " + ", ".join(shown)


def progress_mod(msg, context, call_next):
    """ClientApp mod: a log line as each message starts and ends, with its numbers."""
    who = f"client with partition-id {context.node_config.get('partition-id', '?')}"
    kind = msg.metadata.message_type
    if not kind.startswith(("train", "evaluate")):
        return call_next(msg, context)
    log(INFO, "%s: %s", who, describe_request(msg))
    reply = call_next(msg, context)
    log(INFO, "%s: %s %s", who, kind, describe_reply(reply))
    return reply


def dp_clipping_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's ``fixedclipping_mod`` on train messages that ask for it, else pass through.

    The client-side wrapper puts the clipping norm into the train config; other
    strategies' messages (fedsem's, without any ArrayRecord) must not meet the mod,
    which would refuse them.
    """
    config = msg.content.get(p.TRAIN_CONFIG)
    if (
        msg.metadata.message_type == p.TRAIN
        and isinstance(config, ConfigRecord)
        and KEY_CLIPPING_NORM in config
    ):
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def fault_mod(msg: Message, context: Context, call_next) -> Message:
    """Make a faulty node misbehave (``fault.mode``, ``fault.clients``) on train messages.

    Before the handler: raise, or sleep ``fault.stall-seconds``. After it: corrupt
    the answers or the adapter of the reply, so the server sees what a broken or
    malicious node would send, with the generator the mode has always had,
    ``default_rng([seed, server_round, partition_id])``. Honest nodes pass through.
    """
    cfg, node = node_settings(context)
    if not cfg.fault.applies_to(node.partition_id):
        return call_next(msg, context)
    if cfg.fault.mode == "raise":
        raise RuntimeError(
            f"node with partition-id {node.partition_id}: injected fault (fault.mode='raise')"
        )
    if cfg.fault.mode == "stall":
        time.sleep(cfg.fault.stall_seconds)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    request = read_request(context, msg.content.get(p.TRAIN_CONFIG, ConfigRecord()))
    server_round = 0 if request.server_round is None else int(request.server_round)
    rng = np.random.default_rng([cfg.seed, server_round, node.partition_id])
    answers = reply.content.get(p.ANSWERS)
    if targets(cfg.fault.mode, ANSWERS) and isinstance(answers, ConfigRecord):
        texts, confidences = corrupt_answers(
            cfg.fault,
            list(unpack_texts(answers, p.TEXTS, TEXT_LIMIT)),
            list(answers[p.CONFIDENCES]),
            rng,
        )
        # Same codec, so the same keys: they keep their place in the record.
        answers.update(pack_texts(p.TEXTS, texts, cfg.fedsem.wire_compression))
        answers[p.CONFIDENCES] = confidences
    if targets(cfg.fault.mode, ADAPTER) and p.ADAPTER in reply.content:
        # The reply's adapter may already be int8/int4 codes; the node's own float32
        # one (the handler keeps it in its state) is corrupted and then encoded, so a
        # quantized reply carries the corrupted adapter's codes.
        honest = decode_record(context.state[STATE_ADAPTER])
        reply.content[p.ADAPTER] = adapter_reply(corrupt_adapter(cfg.fault, honest, rng), request)
    return reply
