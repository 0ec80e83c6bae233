"""The round pipeline: a strategy supplies only what it sends, vets and combines."""

import json

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, RecordDict

from fedsem_app import protocol as p
from fedsem_app.config.app import load_app_config
from fedsem_app.data.split import load_split
from fedsem_app.run.meter import MeteredGrid
from fedsem_app.run.results import RunLog, make_run_folder
from fedsem_app.strategies import STRATEGIES
from fedsem_app.strategies.harness import AppStrategy, Combined, build_messages
from tests.fake_grid import FakeGrid
from tests.test_sampling import any_strategy_client


class EvenNodes(AppStrategy):
    """A whole strategy in a few lines: train every node, keep even node ids only."""

    def train_messages(self, server_round, arrays, config, grid):
        config.update(p.TrainRequest(server_round=server_round).to_config())
        content = RecordDict({p.TRAIN_CONFIG: config})
        return build_messages(content, self.train_nodes(grid), MessageType.TRAIN)

    def vet(self, server_round, message: Message):
        node = message.metadata.src_node_id
        return (node * 10, None) if node % 2 == 0 else (None, f"node {node} is odd")

    def combine(self, server_round, vetted):
        payloads = [payload for _, payload in vetted]
        return Combined(
            extra={"payload-sum": sum(payloads)},
            per_client={msg.metadata.src_node_id: {"payload": x} for msg, x in vetted},
        )


def run(tmp_path, monkeypatch, num_nodes, min_clients):
    monkeypatch.setitem(STRATEGIES, "even-nodes", EvenNodes)
    monkeypatch.setattr(EvenNodes, "name", "even-nodes")
    cfg = load_app_config(
        {
            "strategy": "even-nodes",
            "model.names": "tiny-llama",
            "num-server-rounds": 2,
            "min-clients": min_clients,
            "eval.num-prompts": 2,
        }
    )
    fake = FakeGrid(any_strategy_client, num_nodes, cfg.to_flat())
    grid = MeteredGrid(fake)
    folder = make_run_folder(tmp_path, "t", "even-nodes")
    run_log = RunLog(folder, {}, 2, grid.snapshot)
    strategy = EvenNodes(cfg, load_split(cfg.data, cfg.seed), run_log)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=2)
    rows = json.loads((folder / "metrics.json").read_text())
    clients = [json.loads(line) for line in (folder / "clients.jsonl").open()]
    return rows, clients


def test_a_new_strategy_gets_vetting_counting_and_rows_from_the_pipeline(tmp_path, monkeypatch):
    rows, clients = run(tmp_path, monkeypatch, num_nodes=5, min_clients=2)
    train_rows = [r for r in rows if r["round"] > 0]
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in train_rows:
        # Nodes 1..5: 2 and 4 pass the vet (payloads 20 + 40), 1, 3 and 5 are dropped.
        assert row["train-replies"] == 2 and row["dropped-replies"] == 3
        assert row["payload-sum"] == 60
        assert row["eval-replies"] == 5  # evaluation is the harness' own, every node
    trained = {(c["round"], c["node"]): c for c in clients if c["phase"] == "train"}
    assert sorted(trained) == [(1, 2), (1, 4), (2, 2), (2, 4)]
    assert trained[(1, 4)]["payload"] == 40


def test_too_few_vetted_replies_make_no_update(tmp_path, monkeypatch, caplog):
    # 3 nodes: only node 2 passes the vet, fewer than min-clients=2: combine is not called.
    rows, _ = run(tmp_path, monkeypatch, num_nodes=3, min_clients=2)
    for row in (r for r in rows if r["round"] > 0):
        assert row["train-replies"] == 1 and row["dropped-replies"] == 2
        assert "payload-sum" not in row
    assert "dropped reply of node 1: node 1 is odd" in caplog.text
    assert "only 1 usable replies, fewer than min-clients=2" in caplog.text


def gpu_on_node_1(msg: Message, ctx) -> Message:
    """The scripted client; node 1 alone has a GPU counter and reports gpu-joules."""
    reply = any_strategy_client(msg, ctx)
    if ctx.node_id == 1:
        reply.content[p.METRICS][p.GPU_JOULES] = 12.5
    return reply


def test_a_metric_only_some_nodes_report_stays_with_them(tmp_path, monkeypatch):
    # Flower refuses to average MetricRecords with different keys; a GPU node next to
    # CPU nodes must not stop the round (fedavg-lora combines with Flower's FedAvg).
    cfg = load_app_config(
        {"strategy": "fedavg-lora", "model.names": "tiny-llama", "num-server-rounds": 1}
    )
    fake = FakeGrid(gpu_on_node_1, 3, cfg.to_flat())
    grid = MeteredGrid(fake)
    folder = make_run_folder(tmp_path, "t", "fedavg-lora")
    strategy = STRATEGIES["fedavg-lora"](
        cfg, load_split(cfg.data, cfg.seed), RunLog(folder, {}, 1, grid.snapshot)
    )
    initial = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=1)
    assert list(result.arrays["w"].numpy()) == [0.0, 0.0]  # the round was aggregated
    rows = json.loads((folder / "metrics.json").read_text())
    assert rows[1]["train-replies"] == 3 and p.GPU_JOULES not in rows[1]
    clients = [json.loads(line) for line in (folder / "clients.jsonl").open()]
    joules = {(c["phase"], c["node"]): c.get(p.GPU_JOULES) for c in clients if c["round"] == 1}
    assert joules == {
        ("train", 1): 12.5,
        ("train", 2): None,
        ("train", 3): None,
        ("evaluate", 1): 12.5,
        ("evaluate", 2): None,
        ("evaluate", 3): None,
    }
