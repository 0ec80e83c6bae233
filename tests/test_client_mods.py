"""The ClientApp's fault and energy mods, around fake handlers (no model is loaded)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict

from fedsem_app import protocol as p
from fedsem_app.clients import energy
from fedsem_app.clients.energy import energy_mod
from fedsem_app.clients.faults import corrupt_answers
from fedsem_app.clients.mods import STATE_ADAPTER, fault_mod, node_settings, read_request
from fedsem_app.config.app import load_app_config
from fedsem_app.quantize import adapter_record, decode_record, is_quantized
from fedsem_app.wire import pack_texts, unpack_texts

HONEST_TEXTS = ["mortar binds bricks", "rebar takes tension", "concrete cures slowly"]
HONEST_CONFIDENCES = [-0.5, -1.0, -1.5]


def context(partition: int, **run_config) -> Context:
    cfg = load_app_config({"model.names": "tiny-llama", "fault.clients": "1", **run_config})
    return Context(
        run_id=1,
        node_id=partition + 1,
        node_config={"partition-id": partition, "num-partitions": 3},
        state=RecordDict(),
        run_config=cfg.to_flat(),
    )


def train_message(**request) -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    # A Message is stamped with the task that creates it (Flower sets this in a run).
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    config = ConfigRecord(p.TrainRequest(server_round=3, **request).to_config())
    return Message(RecordDict({p.TRAIN_CONFIG: config}), dst_node_id=2, message_type=p.TRAIN)


def answering(codec: str = "none"):
    """A handler that answers three prompts honestly, texts packed with ``codec``."""
    calls = []

    def handler(msg: Message, ctx: Context) -> Message:
        calls.append(time.perf_counter())
        answers = ConfigRecord(
            {
                p.IDS: [4, 5, 6],
                **pack_texts(p.TEXTS, HONEST_TEXTS, codec),
                p.CONFIDENCES: list(HONEST_CONFIDENCES),
                p.FINISHED: [True, False, True],
            }
        )
        metrics = MetricRecord({p.NUM_EXAMPLES: 3})
        return Message(RecordDict({p.ANSWERS: answers, p.METRICS: metrics}), reply_to=msg)

    handler.calls = calls
    return handler


def returning_adapter(msg: Message, ctx: Context) -> Message:
    """A handler that keeps its trained adapter in the state and sends it as asked."""
    from fedsem_app.clients.mods import adapter_reply

    trained = {"a": np.array([[1.0, -2.0], [0.5, 4.0]], np.float32)}
    ctx.state[STATE_ADAPTER] = adapter_record(trained)
    request = read_request(ctx, msg.content[p.TRAIN_CONFIG])
    return Message(RecordDict({p.ADAPTER: adapter_reply(trained, request)}), reply_to=msg)


def failing(msg: Message, ctx: Context) -> Message:
    return Message(Error(code=1, reason="out of memory"), reply_to=msg)


# --- fault_mod ---------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["none", "zlib"])
def test_adversarial_node_sends_its_text_in_the_same_codec(codec):
    ctx = context(1, **{"fault.mode": "adversarial", "fedsem.wire-compression": codec})
    reply = fault_mod(train_message(), ctx, answering(codec))
    answers = reply.content[p.ANSWERS]
    text = load_app_config({}).fault.text
    assert unpack_texts(answers, p.TEXTS, 2**20) == [text, text, text]
    assert list(answers[p.CONFIDENCES]) == [0.0, 0.0, 0.0]
    # Ids and finished flags are the honest ones; the texts stay under their codec's key.
    assert list(answers[p.IDS]) == [4, 5, 6] and list(answers[p.FINISHED]) == [True, False, True]
    assert list(answers.keys())[:2] == [p.IDS, p.TEXTS if codec == "none" else "texts-zlib"]


def test_garbage_node_draws_from_the_seed_round_and_partition():
    ctx = context(1, **{"fault.mode": "garbage", "seed": 7})
    reply = fault_mod(train_message(), ctx, answering())
    cfg, _ = node_settings(ctx)
    expected, _ = corrupt_answers(
        cfg.fault, HONEST_TEXTS, HONEST_CONFIDENCES, np.random.default_rng([7, 3, 1])
    )
    answers = reply.content[p.ANSWERS]
    assert list(answers[p.TEXTS]) == expected and expected != HONEST_TEXTS
    assert list(answers[p.CONFIDENCES]) == HONEST_CONFIDENCES


def test_malformed_node_drops_one_text_and_breaks_its_confidences():
    reply = fault_mod(train_message(), context(1, **{"fault.mode": "malformed"}), answering())
    answers = reply.content[p.ANSWERS]
    assert list(answers[p.TEXTS]) == HONEST_TEXTS[:2]
    assert all(math.isnan(c) for c in answers[p.CONFIDENCES]) and len(answers[p.CONFIDENCES]) == 3


def test_honest_node_and_error_replies_pass_untouched():
    honest = fault_mod(train_message(), context(0, **{"fault.mode": "garbage"}), answering())
    assert list(honest.content[p.ANSWERS][p.TEXTS]) == HONEST_TEXTS
    failed = fault_mod(train_message(), context(1, **{"fault.mode": "garbage"}), failing)
    assert failed.has_error() and failed.error.reason == "out of memory"


def test_raising_node_fails_before_the_handler_runs():
    handler = answering()
    injected = r"partition-id 1: injected fault \(fault.mode='raise'\)"
    with pytest.raises(RuntimeError, match=injected):
        fault_mod(train_message(), context(1, **{"fault.mode": "raise"}), handler)
    assert handler.calls == []


def test_stalling_node_sleeps_before_the_handler():
    ctx = context(1, **{"fault.mode": "stall", "fault.stall-seconds": 0.2})
    handler = answering()
    start = time.perf_counter()
    reply = fault_mod(train_message(), ctx, handler)
    assert handler.calls[0] - start >= 0.2
    assert list(reply.content[p.ANSWERS][p.TEXTS]) == HONEST_TEXTS  # then answers honestly


def test_scaled_adapter_is_sent_corrupted_but_kept_honest():
    ctx = context(1, **{"fault.mode": "scaled-adapter", "fault.scale": 3.0})
    reply = fault_mod(train_message(return_adapter=True), ctx, returning_adapter)
    sent = decode_record(reply.content[p.ADAPTER])
    np.testing.assert_array_equal(sent["a"], np.array([[3.0, -6.0], [1.5, 12.0]], np.float32))
    kept = decode_record(ctx.state[STATE_ADAPTER])
    np.testing.assert_array_equal(kept["a"], np.array([[1.0, -2.0], [0.5, 4.0]], np.float32))


def test_scaled_adapter_is_corrupted_before_it_is_quantized():
    ctx = context(1, **{"fault.mode": "scaled-adapter", "fault.scale": 3.0})
    message = train_message(return_adapter=True, quantize="int8", quantize_scales="tensor")
    reply = fault_mod(message, ctx, returning_adapter)
    assert is_quantized(reply.content[p.ADAPTER])
    # Scaled first, [[3, -6], [1.5, 12]], then coded with one scale 12/127: codes
    # rint(x * 127/12) = 32 (31.75), -64 (-63.5, to even), 16 (15.875), 127.
    sent = decode_record(reply.content[p.ADAPTER])["a"]
    step = np.float32(12.0) / np.float32(127)
    np.testing.assert_array_equal(
        sent, np.array([[32, -64], [16, 127]], np.float32) * np.float32(step)
    )


def test_adapter_fault_leaves_a_text_reply_alone():
    ctx = context(1, **{"fault.mode": "random-adapter"})
    reply = fault_mod(train_message(), ctx, answering())
    assert p.ADAPTER not in reply.content
    assert list(reply.content[p.ANSWERS][p.TEXTS]) == HONEST_TEXTS


def test_unknown_train_data_names_the_node():
    config = ConfigRecord({p.TRAIN_DATA: "everything"})
    with pytest.raises(RuntimeError, match="node with partition-id 2: train request asks for"):
        read_request(context(2), config)


def test_bad_node_config_names_the_node():
    ctx = context(0)
    ctx.node_config["lora-rank"] = "many"
    with pytest.raises(RuntimeError, match="node with partition-id 0: .*lora-rank"):
        node_settings(ctx)


# --- energy_mod --------------------------------------------------------------------


def test_energy_mod_adds_cpu_seconds_and_joules_after_the_handler(monkeypatch):
    counter = iter([1_000, 3_500])  # millijoules before and after the handler
    monkeypatch.setattr(energy, "gpu_energy_millijoules", lambda: next(counter))

    def busy(msg, ctx):
        deadline = time.process_time() + 0.1
        while time.process_time() < deadline:
            pass
        return answering()(msg, ctx)

    reply = energy_mod(train_message(), context(0), busy)
    metrics = reply.content[p.METRICS]
    assert list(metrics.keys()) == [p.NUM_EXAMPLES, p.CPU_SECONDS, p.GPU_JOULES]
    assert metrics[p.NUM_EXAMPLES] == 3 and metrics[p.CPU_SECONDS] >= 0.1
    assert metrics[p.GPU_JOULES] == 2.5


def test_energy_mod_without_a_counter_sends_cpu_seconds_only(monkeypatch):
    monkeypatch.setattr(energy, "gpu_energy_millijoules", lambda: None)

    def bare(msg, ctx):
        return Message(RecordDict(), reply_to=msg)

    reply = energy_mod(train_message(), context(0), bare)
    assert list(reply.content[p.METRICS].keys()) == [p.CPU_SECONDS]


def test_energy_mod_leaves_an_error_reply_alone():
    reply = energy_mod(train_message(), context(0), failing)
    assert reply.has_error() and reply.error.reason == "out of memory"
