import csv
import json

from flwr.app import ConfigRecord, Message, RecordDict

from fedsem_app.run.meter import MeteredGrid, record_bytes
from fedsem_app.run.results import RunLog, make_run_folder
from tests.fake_grid import FakeGrid


def text_record(n: int) -> RecordDict:
    return RecordDict({"c": ConfigRecord({"t": "x" * n})})


def test_record_bytes_grow_with_the_payload():
    # Both lengths need a 1-byte varint, so the difference is the 100 characters.
    assert record_bytes(text_record(110)) - record_bytes(text_record(10)) == 100
    assert record_bytes(text_record(0)) > 0


def test_metered_grid_counts_both_directions_and_errors_as_zero():
    def client(msg, ctx):
        if ctx.node_config["partition-id"] == 1:
            raise RuntimeError("broken node")
        return Message(content=text_record(50), reply_to=msg)

    grid = MeteredGrid(FakeGrid(client, num_nodes=2, run_config={}))
    out = [
        Message(content=text_record(20), dst_node_id=n, message_type="train")
        for n in grid.get_node_ids()
    ]
    replies = list(grid.send_and_receive(out))
    assert len(replies) == 2 and replies[1].has_error()
    assert grid.totals[("down", "train")] == 2 * record_bytes(text_record(20))
    assert grid.totals[("up", "train")] == record_bytes(text_record(50))  # error reply: 0
    assert grid.messages[("up", "train")] == 2
    assert grid.snapshot() == {
        "bytes-down-train": 2 * record_bytes(text_record(20)),
        "bytes-up-train": record_bytes(text_record(50)),
    }


def test_run_log_derives_round_deltas_and_writes_files(tmp_path):
    totals = {"bytes-down-train": 100, "bytes-up-train": 40}
    folder = make_run_folder(tmp_path, "demo", "fedsem")
    run_log = RunLog(folder, {"strategy": "fedsem"}, 2, lambda: dict(totals))
    run_log.add(1, {"rouge-l": 0.1, "embed-sim": 0.5})
    run_log.close_round(1)
    totals.update({"bytes-down-train": 250, "bytes-up-train": 100, "bytes-down-evaluate": 7})
    run_log.add(2, {"rouge-l": 0.3, "embed-sim": 0.4})
    row = run_log.close_round(2)
    assert (row["bytes-down-train"], row["bytes-up-train"], row["bytes-down-evaluate"]) == (
        150,
        60,
        7,
    )
    assert row["bytes-down"] == 157 and row["bytes-up"] == 60
    assert row["bytes-cumulative"] == 357
    summary = run_log.finish()
    assert summary["best-rouge-l"] == 0.3 and summary["best-embed-sim"] == 0.5
    assert summary["bytes-total"] == 357 and summary["rounds"] == 2
    assert json.loads((folder / "config.json").read_text()) == {"strategy": "fedsem"}
    assert [r["round"] for r in json.loads((folder / "metrics.json").read_text())] == [1, 2]
    with open(folder / "metrics.csv") as fh:
        assert [r["bytes-cumulative"] for r in csv.DictReader(fh)] == ["140", "357"]
    assert (folder / "quality.png").stat().st_size > 1000
    assert (folder / "bytes.png").stat().st_size > 1000


def test_run_folders_are_never_reused(tmp_path):
    first = make_run_folder(tmp_path, "same", "fedsem")
    second = make_run_folder(tmp_path, "same", "fedsem")
    assert first != second and second.name == "same-2"


def test_silent_and_vanished_nodes_are_named(caplog):
    from flwr.app import Error

    from fedsem_app.run.meter import attribute_replies

    def client(msg, ctx):
        return Message(content=text_record(5), reply_to=msg)

    fake = FakeGrid(client, num_nodes=3, run_config={})
    fake.offline = {3}  # never answers
    grid = MeteredGrid(fake)
    out = [
        Message(content=text_record(1), dst_node_id=n, message_type="train")
        for n in grid.get_node_ids()
    ]
    replies = list(grid.send_and_receive(out, timeout=30))
    assert sorted(r.metadata.src_node_id for r in replies) == [1, 2]
    assert "train: no reply from node(s) 3 within 30 s (round-timeout)" in caplog.text

    # The SuperLink answers for a vanished node 2 with an error from itself (node 0 here).
    to_node_2 = out[1]
    from_link = Message(content=text_record(1), dst_node_id=0, message_type="train")
    from_link.metadata.__dict__["_message_id"] = to_node_2.metadata.message_id
    error = Message(error=Error(code=2, reason="Node Unavailable"), reply_to=from_link)
    assert error.metadata.src_node_id == 0
    fixed = attribute_replies([to_node_2], [error], timeout=30)
    assert fixed[0].metadata.src_node_id == 2 and fixed[0].error.reason == "Node Unavailable"
