"""Per-round metrics to TensorBoard, the client progress lines, and the tracking key."""

import logging

import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedsem_app import protocol as p
from fedsem_app.clients.mods import progress_mod
from fedsem_app.config.app import load_app_config
from fedsem_app.config.errors import ConfigError
from fedsem_app.run import tracking
from fedsem_app.run.results import RunLog
from fedsem_app.run.tracking import NoTracker, TensorBoardTracker, open_tracker, tracked


def test_tensorboard_gets_every_closed_rounds_numbers(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = open_tracker("tensorboard", tmp_path)
    assert isinstance(tracker, TensorBoardTracker)
    run_log = tracked(RunLog(tmp_path, {}, 2), tracker)
    for server_round, rouge in ((1, 0.25), (2, 0.5)):
        run_log.add(server_round, {"rouge-l": rouge, "nll": float("nan"), "note": "x"})
        run_log.close_round(server_round)
    tracker.close()

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert [(e.step, e.value) for e in events.Scalars("quality/rouge-l")] == [(1, 0.25), (2, 0.5)]
    assert "seconds/round-seconds" in tags and "bytes/bytes-cumulative" in tags
    assert "quality/nll" not in tags and not [t for t in tags if "note" in t]  # NaN, text
    assert [r["round"] for r in run_log.rows] == [1, 2]  # the run folder's log is unchanged


def test_a_tracker_that_cannot_start_leaves_the_run_going(tmp_path, monkeypatch, caplog):
    def missing(folder):
        raise ImportError("No module named 'tensorboard'")

    monkeypatch.setitem(tracking.TRACKERS, "tensorboard", missing)
    with caplog.at_level(logging.WARNING):
        tracker = open_tracker("tensorboard", tmp_path)
    assert isinstance(tracker, NoTracker)
    assert "the run goes on without it (pip install tensorboard)" in caplog.text


def test_tracking_key_takes_only_registered_trackers():
    assert load_app_config({}).tracking == "none"
    assert load_app_config({"tracking": "tensorboard"}).tracking == "tensorboard"
    with pytest.raises(ConfigError, match="allowed values: none, tensorboard"):
        load_app_config({"tracking": "wandb"})


def message(kind, **records):
    from flwr.supercore.task_identity import TaskIdentity

    # Building a Message outside a run needs these ids, as in tests/fake_grid.py.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    return Message(RecordDict(records), dst_node_id=3, message_type=kind)


def test_client_progress_lines_say_what_each_message_does(caplog):
    class Ctx:
        node_config = {"partition-id": 2}

    train = message(
        "train",
        config=ConfigRecord({p.ROUND: 3}),
        public=ConfigRecord({p.IDS: [1, 2, 3, 4]}),
        pseudo=ConfigRecord({p.IDS: [7, 8]}),
    )
    metrics = {p.TRAIN_LOSS: 1.23456, p.TRAIN_SECONDS: 2.04, p.GENERATE_SECONDS: 0.5}

    def handler(msg, ctx):
        return Message(RecordDict({p.METRICS: MetricRecord(metrics)}), reply_to=msg)

    with caplog.at_level(logging.INFO):
        progress_mod(train, Ctx(), handler)
        evaluate = message(
            "evaluate", config=ConfigRecord({p.ROUND: 3}), test=ConfigRecord({p.IDS: [1, 2]})
        )
        metrics = {p.ROUGE_L: 0.5, p.EMBED_SIM: 0.25, p.NLL: 2.0, p.EVAL_SECONDS: 1.0}
        progress_mod(evaluate, Ctx(), handler)
        progress_mod(train, Ctx(), lambda m, c: Message(Error(1, "boom"), reply_to=m))
    lines = [r.getMessage() for r in caplog.records]
    who = "client with partition-id 2: "
    assert lines == [
        who + "round 3, training with 2 pseudo-labels, then generating 4 answers",
        who + "train done: train-loss 1.2346, trained in 2.0 s, generated in 0.5 s",
        who + "round 3, evaluating on 2 test prompts",
        who + "evaluate done: rouge-l 0.500, embed-sim 0.250, nll 2.000, in 1.0 s",
        who + "round 3, training with 2 pseudo-labels, then generating 4 answers",
        who + "train failed: boom",
    ]
