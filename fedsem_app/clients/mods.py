"""ClientApp mods: what wraps every message a client handles.

Runs on the client. Each mod is ``mod(msg, context, call_next) -> reply``, as Flower's
own (``message_size_mod``, ``fixedclipping_mod``):

- :func:`progress_mod`: one line through Flower's logger when a client starts and
  ends each train and evaluate message (what it does, loss, answers, scores,
  seconds), so ``flwr run --stream`` shows the clients at work.
- :func:`dp_clipping_mod`: Flower's client-side clipping when the server asks for it
  (``dp.clip-side = "client"``, see :mod:`fedsem_app.strategies.dp`).
"""

from __future__ import annotations

from logging import INFO

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.mod import fixedclipping_mod
from flwr.common.logger import log
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedsem_app import protocol as p


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
