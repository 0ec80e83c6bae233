"""Checkpoint and resume: stopped after round 2 of 4 and resumed, a run ends as if uninterrupted.

The server's ``main`` runs on the Ray-free fake Grid with scripted clients. A crash is
simulated by a Grid that raises during round 3's evaluation, after round 3's training
has already appended to the logs; the resumed run gets fresh node contexts, as a new
Flower run would.
"""

import json
import math
import os
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedsem_app import protocol as p
from fedsem_app.config.app import load_app_config
from fedsem_app.config.errors import ConfigError
from fedsem_app.run.checkpoint import CHECKPOINT_DIR, open_resume, read_checkpoint, save_checkpoint
from fedsem_app.server_app import main
from fedsem_app.strategies.fedavg_lora import FedAvgLora
from tests.fake_grid import FakeGrid, wire_copy
from tests.test_fedsem_strategy import GOOD, GOOD_TOO, OFF_TOPIC, answer_all, scripted_client

BASE = {
    "model.names": "tiny-llama",
    "num-server-rounds": 4,
    "min-clients": 2,
    "fedsem.prompts-per-round": 4,
    "eval.num-prompts": 3,
    "run-name": "job",
}


class SimulatedCrash(Exception):
    pass


class CrashingGrid(FakeGrid):
    """Raises on the n-th send_and_receive (round 0 evaluates; then train, evaluate a round)."""

    def __init__(self, *args, crash_on_call=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.crash_on_call = crash_on_call
        self.contents = []  # per call: the contents of the messages sent

    def send_and_receive(self, messages, *, timeout=None):
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise SimulatedCrash(f"server died in call {self.calls}")
        messages = list(messages)
        # Copies as sent: strategies reuse one config record across rounds.
        self.contents.append([wire_copy(m.content) for m in messages])
        return super().send_and_receive(messages, timeout=timeout)


ROUND_3_EVALUATE = 7  # r0 eval, r1 train, r1 eval, r2 train, r2 eval, r3 train, r3 eval


def run_main(client_app, num_nodes, run_config, crash_on_call=None):
    grid = CrashingGrid(client_app, num_nodes, run_config, crash_on_call=crash_on_call)
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config)
    )
    main(grid, context)
    return grid


def layout(folder):
    return sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file())


def jsonl(path):
    return [json.loads(line) for line in path.open()]


def without_seconds(rows):
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]


def in_node_order(rows):
    """Log lines without timings, in a fixed order (Flower samples nodes in random order)."""
    rows = without_seconds(rows)
    for row in rows:
        if "answers" in row:  # a consensus sample: name the choice by node, not position
            row["chosen"] = row["answers"][row["chosen"]]["node"]
            row["answers"] = sorted(row["answers"], key=lambda a: a["node"])
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def train_contents(grid, server_round):
    """Contents of the train messages of a round, as sent."""
    return [
        c
        for call in grid.contents
        for c in call
        if p.TEST not in c and c[p.TRAIN_CONFIG][p.ROUND] == server_round
    ]


def assert_same_run(resumed, through):
    """The resumed folder matches the uninterrupted one in layout, rows, logs and bytes."""
    assert layout(resumed) == layout(through)
    rows = json.loads((resumed / "metrics.json").read_text())
    expected = json.loads((through / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    # Same messages, same replies: every quality and byte column is equal, round by round,
    # and the cumulative bytes of rounds 3-4 go on from round 2's.
    assert without_seconds(rows) == without_seconds(expected)
    assert rows[-1]["bytes-cumulative"] == sum(r["bytes-down"] + r["bytes-up"] for r in rows)
    elapsed = [r["elapsed-seconds"] for r in rows]
    assert elapsed == sorted(elapsed)
    for name in ("clients.jsonl", "consensus_samples.jsonl"):
        if (through / name).exists():
            # Round 3's train lines, written before the crash, were cut and written again once.
            assert in_node_order(jsonl(resumed / name)) == in_node_order(jsonl(through / name))
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["rounds"] == 4
    assert (
        summary["bytes-total"] == json.loads((through / "summary.json").read_text())["bytes-total"]
    )
    assert not [f for f in layout(resumed) if f.endswith(".tmp")]


# --- fedsem ---------------------------------------------------------------------------------


def fedsem_clients():
    return [answer_all(GOOD), answer_all(OFF_TOPIC), answer_all(GOOD_TOO)]


def test_fedsem_stopped_after_round_2_resumes_like_an_uninterrupted_run(tmp_path, caplog):
    # Prepare: one run straight through, one that dies in round 3's evaluation. Folder
    # names of equal length: every message names the run folder, so bytes depend on it.
    through_cfg = {**BASE, "results-dir": str(tmp_path / "through")}
    crash_cfg = {**BASE, "results-dir": str(tmp_path / "stopped")}
    app, _ = scripted_client(fedsem_clients())
    through_grid = run_main(app, 3, through_cfg)
    app, _ = scripted_client(fedsem_clients())
    with pytest.raises(SimulatedCrash):
        run_main(app, 3, crash_cfg, crash_on_call=ROUND_3_EVALUATE)
    folder = tmp_path / "stopped" / "job"
    checkpoint = read_checkpoint(folder)
    assert checkpoint.round == 2 and checkpoint.arrays is None
    assert not (folder / "summary.json").exists()

    # Execute: resume in a new server with fresh node contexts
    app, seen = scripted_client(fedsem_clients())
    resumed_grid = run_main(app, 3, {**crash_cfg, "resume-from": str(folder)})

    # Assert
    assert f"resuming {folder} at round 3 of 4" in caplog.text
    assert_same_run(folder, tmp_path / "through" / "job")
    # Only rounds 3 and 4 ran: 2 rounds x (3 train + 3 evaluate) messages.
    assert len(resumed_grid.sent) == 12
    # The pseudo-labels of round 2 were carried over: round 3 sends the same ones.
    sent = train_contents(resumed_grid, 3)[0][p.PSEUDO]
    expected = train_contents(through_grid, 3)[0][p.PSEUDO]
    assert len(sent[p.TEXTS]) == 4 and set(sent[p.TEXTS]) <= {GOOD, GOOD_TOO}
    assert list(sent[p.IDS]) == list(expected[p.IDS])
    assert list(sent[p.TEXTS]) == list(expected[p.TEXTS])
    assert seen[0][0] == list(expected[p.TEXTS])
    assert read_checkpoint(folder).round == 4


def test_resume_of_a_finished_run_has_nothing_to_do(tmp_path, caplog):
    cfg = {**BASE, "num-server-rounds": 2, "results-dir": str(tmp_path)}
    app, _ = scripted_client(fedsem_clients())
    run_main(app, 3, cfg)
    folder = tmp_path / "job"
    (folder / "summary.json").unlink()  # as if the server died right after the last round

    grid = run_main(app, 3, {**cfg, "resume-from": str(folder)})

    assert grid.sent == []
    assert "nothing to do" in caplog.text
    assert json.loads((folder / "summary.json").read_text())["rounds"] == 2


def test_resume_can_extend_a_run_and_the_profile_file_resumes_it(tmp_path):
    cfg = {**BASE, "num-server-rounds": 2, "results-dir": str(tmp_path)}
    app, _ = scripted_client(fedsem_clients())
    run_main(app, 3, cfg)
    folder = tmp_path / "job"
    # checkpoint/resume.toml is a ready-made --run-config: the run config plus resume-from.
    profile = tomllib.loads((folder / CHECKPOINT_DIR / "resume.toml").read_text())
    assert profile["resume-from"] == str(folder) and profile["num-server-rounds"] == 2

    run_main(app, 3, {**profile, "num-server-rounds": 3})

    rows = json.loads((folder / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2, 3]


# --- fedavg-lora ----------------------------------------------------------------------------

START = np.array([0.1, -0.2, 0.3], dtype=np.float32)


def lora_client():
    """Each node returns the received adapter scaled and shifted by its partition id."""

    def app(msg: Message, ctx: Context) -> Message:
        part = ctx.node_config["partition-id"]
        if msg.metadata.message_type == p.EVALUATE:
            w = msg.content[p.ADAPTER]["w"].numpy()
            metrics = {p.NUM_EXAMPLES: 2, p.ROUGE_L: float(w.mean()), p.EMBED_SIM: 0.5, p.NLL: 2}
            return Message(content=RecordDict({p.METRICS: MetricRecord(metrics)}), reply_to=msg)
        w = msg.content[p.ADAPTER]["w"].numpy()
        trained = (w * np.float32(1.1) + np.float32(0.01 * (part + 1))).astype(np.float32)
        content = RecordDict(
            {
                p.ADAPTER: ArrayRecord({"w": Array(trained)}),
                p.METRICS: MetricRecord(
                    {p.NUM_EXAMPLES: part + 1, p.TRAIN_LOSS: 1.0, p.TRAIN_SECONDS: 0.1}
                ),
                p.INFO: ConfigRecord({p.MODEL_NAME: "scripted"}),
            }
        )
        return Message(content=content, reply_to=msg)

    return app


def test_fedavg_lora_resumes_from_the_byte_identical_global_adapter(tmp_path, monkeypatch):
    monkeypatch.setattr(FedAvgLora, "initial_arrays", lambda self: ArrayRecord({"w": Array(START)}))
    # The server saves the final global adapter through the model: keep it in tmp_path.
    base = {**BASE, "strategy": "fedavg-lora", "model.cache-dir": str(tmp_path / "models")}
    through_cfg = {**base, "results-dir": str(tmp_path / "through")}
    crash_cfg = {**base, "results-dir": str(tmp_path / "stopped")}
    through_grid = run_main(lora_client(), 2, through_cfg)
    with pytest.raises(SimulatedCrash):
        run_main(lora_client(), 2, crash_cfg, crash_on_call=ROUND_3_EVALUATE)
    folder = tmp_path / "stopped" / "job"
    checkpoint = read_checkpoint(folder)
    # The global adapter after round 2 is what the uninterrupted run sent in round 3.
    expected = train_contents(through_grid, 3)[0][p.ADAPTER]["w"]
    assert checkpoint.round == 2
    assert checkpoint.arrays["w"].numpy().tobytes() == expected.numpy().tobytes()
    assert checkpoint.arrays["w"].data == expected.data
    assert layout(folder / CHECKPOINT_DIR) == [
        "arrays-round-0002.safetensors",
        "resume.toml",
        "state.json",
    ]

    # Resume without building the model: initial_arrays must not be called.
    monkeypatch.setattr(FedAvgLora, "initial_arrays", lambda self: pytest.fail("rebuilt adapter"))
    resumed_grid = run_main(lora_client(), 2, {**crash_cfg, "resume-from": str(folder)})

    assert train_contents(resumed_grid, 3)[0][p.ADAPTER]["w"].data == expected.data
    assert_same_run(folder, tmp_path / "through" / "job")
    final = read_checkpoint(folder).arrays["w"].numpy()
    assert (
        final.tobytes()
        == read_checkpoint(tmp_path / "through" / "job").arrays["w"].numpy().tobytes()
    )
    # Only the latest round's arrays are kept.
    assert "arrays-round-0004.safetensors" in layout(folder / CHECKPOINT_DIR)
    assert "arrays-round-0002.safetensors" not in layout(folder / CHECKPOINT_DIR)


# --- validation of resume-from ---------------------------------------------------------------


def write_checkpoint(folder, server_round=2, arrays=None, **config):
    cfg = load_app_config({**BASE, **config})
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        folder,
        server_round,
        strategy=cfg.strategy,
        config=cfg.to_flat(),
        strategy_state={},
        run_state={"rows": [], "byte-totals": {}, "log-sizes": {}},
        arrays=arrays,
    )
    return folder


def test_missing_folder_is_refused(tmp_path):
    cfg = load_app_config({**BASE, "resume-from": str(tmp_path / "gone")})
    with pytest.raises(ConfigError, match="does not exist") as err:
        open_resume(cfg)
    assert err.value.key == "resume-from"


def test_folder_without_checkpoint_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = load_app_config({**BASE, "resume-from": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match="holds no checkpoint") as err:
        open_resume(cfg)
    assert err.value.key == "resume-from"
    assert "without resume-from" in str(err.value)


def test_mismatched_strategy_is_refused_with_the_fix(tmp_path):
    folder = write_checkpoint(tmp_path / "job")
    cfg = load_app_config({**BASE, "strategy": "local", "resume-from": str(folder)})
    with pytest.raises(ConfigError) as err:
        open_resume(cfg)
    message = str(err.value)
    assert err.value.key == "strategy"
    assert 'strategy="fedsem"' in message and 'strategy="local"' in message
    assert "resume.toml" in message


def test_a_setting_that_shapes_learning_must_match(tmp_path):
    folder = write_checkpoint(tmp_path / "job")
    cfg = load_app_config({**BASE, "fedsem.prompts-per-round": 8, "resume-from": str(folder)})
    with pytest.raises(ConfigError) as err:
        open_resume(cfg)
    assert err.value.key == "fedsem.prompts-per-round"
    assert "fedsem.prompts-per-round=4" in str(err.value)


def test_operational_settings_may_change_and_a_name_resolves_under_results_dir(tmp_path):
    write_checkpoint(tmp_path / "job")
    cfg = load_app_config(
        {
            **BASE,
            "results-dir": str(tmp_path),
            "resume-from": "job",  # a folder name under results-dir
            "num-server-rounds": 9,
            "round-timeout": 60,
            "min-clients": 1,
            "model.device": "cpu",
        }
    )
    checkpoint = open_resume(cfg)
    assert checkpoint.folder == tmp_path / "job" and checkpoint.round == 2


def test_fewer_rounds_than_done_is_refused(tmp_path):
    folder = write_checkpoint(tmp_path / "job", server_round=3)
    cfg = load_app_config({**BASE, "num-server-rounds": 2, "resume-from": str(folder)})
    with pytest.raises(ConfigError, match="set it to 3 or more") as err:
        open_resume(cfg)
    assert err.value.key == "num-server-rounds"


def test_damaged_arrays_are_refused(tmp_path):
    folder = write_checkpoint(tmp_path / "job", arrays=ArrayRecord({"w": Array(START)}))
    path = folder / CHECKPOINT_DIR / "arrays-round-0002.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    cfg = load_app_config({**BASE, "resume-from": str(folder)})
    with pytest.raises(ConfigError, match="sha256") as err:
        open_resume(cfg)
    assert err.value.key == "resume-from"


def test_checkpoint_round_trips_arrays_in_order(tmp_path):
    arrays = ArrayRecord(
        {
            "z": Array(np.arange(6, dtype=np.float32).reshape(2, 3)),
            "a": Array(np.array([math.pi], dtype=np.float32)),
        }
    )
    folder = write_checkpoint(tmp_path / "job", arrays=arrays)
    restored = read_checkpoint(folder).arrays
    assert list(restored) == ["z", "a"]
    for key in arrays:
        assert restored[key].data == arrays[key].data
        assert restored[key].shape == arrays[key].shape and restored[key].dtype == "float32"


def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    before = ArrayRecord({"w": Array(START)})
    after = ArrayRecord({"w": Array(START * 2)})
    folder = write_checkpoint(tmp_path / "job", server_round=2, arrays=before)
    real_replace = os.replace

    def die_on_state(src, dst):
        if Path(dst).name == "state.json":
            raise OSError("killed")
        real_replace(src, dst)

    monkeypatch.setattr("fedsem_app.files.os.replace", die_on_state)
    with pytest.raises(OSError):
        write_checkpoint(folder, server_round=3, arrays=after)
    # The round-3 arrays are on disk, but state.json still names round 2's.
    checkpoint = read_checkpoint(folder)
    assert checkpoint.round == 2 and checkpoint.arrays["w"].data == before["w"].data
    assert "state.json.tmp" in layout(folder / CHECKPOINT_DIR)

    monkeypatch.setattr("fedsem_app.files.os.replace", real_replace)
    write_checkpoint(folder, server_round=3, arrays=after)
    assert read_checkpoint(folder).arrays["w"].data == after["w"].data
    assert layout(folder / CHECKPOINT_DIR) == [
        "arrays-round-0003.safetensors",
        "resume.toml",
        "state.json",
    ]
