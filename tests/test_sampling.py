"""Client sampling by config (fraction-train, fraction-evaluate, floors) for every strategy."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedsem_app import protocol as p
from fedsem_app.config.app import load_app_config
from fedsem_app.config.errors import ConfigError
from fedsem_app.data.split import load_split
from fedsem_app.run.meter import MeteredGrid
from fedsem_app.run.results import RunLog, make_run_folder
from fedsem_app.strategies import get_strategy_class
from tests.fake_grid import FakeGrid

EVAL_METRICS = {p.NUM_EXAMPLES: 2, p.ROUGE_L: 0.25, p.EMBED_SIM: 0.5, p.NLL: 2.0}


def any_strategy_client(msg: Message, ctx: Context) -> Message:
    """A scripted client that answers what any strategy asks: answers, adapter, metrics."""
    # Logged on arrival: the server reuses one config record from round to round.
    rnd = int(msg.content[p.TRAIN_CONFIG].get(p.ROUND, 0))
    ctx.state[f"seen-{rnd}-{msg.metadata.message_type}"] = ConfigRecord({"n": 1})
    if msg.metadata.message_type == p.EVALUATE:
        return Message(content=RecordDict({p.METRICS: MetricRecord(EVAL_METRICS)}), reply_to=msg)
    content = RecordDict(
        {
            p.METRICS: MetricRecord({p.NUM_EXAMPLES: 3, p.TRAIN_LOSS: 1.0}),
            p.INFO: ConfigRecord({p.MODEL_NAME: "scripted"}),
        }
    )
    if p.PUBLIC in msg.content:
        ids = list(msg.content[p.PUBLIC][p.IDS])
        content[p.ANSWERS] = ConfigRecord(
            {p.IDS: ids, p.TEXTS: ["an answer"] * len(ids), p.CONFIDENCES: [-0.5] * len(ids)}
        )
    if msg.content[p.TRAIN_CONFIG].get(p.RETURN_ADAPTER, False):
        content[p.ADAPTER] = msg.content[p.ADAPTER]
    return Message(content=content, reply_to=msg)


def messages_per_round(tmp_path, strategy, num_nodes=10, rounds=2, **overrides):
    """Run on a fake grid; return {(round, kind): [node ids messaged]}."""
    cfg = load_app_config(
        {
            "strategy": strategy,
            "model.names": "tiny-llama",
            "num-server-rounds": rounds,
            "eval.num-prompts": 2,
            "fedsem.prompts-per-round": 2,
            **overrides,
        }
    )
    fake = FakeGrid(any_strategy_client, num_nodes, cfg.to_flat())
    grid = MeteredGrid(fake)
    run_log = RunLog(make_run_folder(tmp_path, "t", strategy), {}, rounds, grid.snapshot)
    instance = get_strategy_class(strategy)(cfg, load_split(cfg.data, cfg.seed), run_log)
    initial = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    instance.start(grid=grid, initial_arrays=initial, num_rounds=rounds)
    out: dict[tuple[int, str], list[int]] = {}
    for node, ctx in sorted(fake.contexts.items()):
        for key in ctx.state:
            _, rnd, kind = key.split("-", 2)
            out.setdefault((int(rnd), kind), []).append(node)
    return out


SAMPLED = ["fedsem", "fedavg-lora", "fedprox-lora", "local"]


@pytest.mark.parametrize("strategy", SAMPLED)
def test_every_strategy_samples_the_configured_fractions(tmp_path, strategy):
    sent = messages_per_round(
        tmp_path, strategy, **{"fraction-train": 0.3, "fraction-evaluate": 0.5}
    )
    for rnd in (1, 2):
        # int(10 x 0.3) = 3 nodes train, int(10 x 0.5) = 5 are evaluated, all distinct.
        assert len(sent[(rnd, p.TRAIN)]) == 3
        assert len(set(sent[(rnd, p.TRAIN)])) == 3
        assert len(set(sent[(rnd, p.EVALUATE)])) == 5
    assert len(sent[(0, p.EVALUATE)]) == 5  # round 0 evaluates a sample too
    assert set(sent[(1, p.TRAIN)]) <= set(range(1, 11))


@pytest.mark.parametrize("strategy", SAMPLED)
def test_default_trains_and_evaluates_every_node(tmp_path, strategy):
    sent = messages_per_round(tmp_path, strategy, num_nodes=4, rounds=1)
    assert sorted(sent[(1, p.TRAIN)]) == [1, 2, 3, 4]
    assert sorted(sent[(1, p.EVALUATE)]) == [1, 2, 3, 4]


def test_floors_win_over_small_fractions(tmp_path):
    sent = messages_per_round(
        tmp_path,
        "fedsem",
        rounds=1,
        **{
            "fraction-train": 0.1,
            "fraction-evaluate": 0.1,
            "min-train-nodes": 4,
            "min-evaluate-nodes": 6,
        },
    )
    # int(10 x 0.1) = 1 < the floors: 4 train, 6 are evaluated.
    assert len(sent[(1, p.TRAIN)]) == 4
    assert len(sent[(1, p.EVALUATE)]) == 6


def test_fedit_keeps_its_own_fraction_and_pooled_one_node(tmp_path):
    fedit = messages_per_round(tmp_path, "fedit", rounds=1, **{"fraction-train": 0.5})
    # fedit.fraction-train (0.1) wins: int(10 x 0.1) = 1, raised to min-clients = 2.
    assert len(fedit[(1, p.TRAIN)]) == 2
    pooled = messages_per_round(tmp_path, "pooled", rounds=1, **{"fraction-train": 0.5})
    assert pooled[(1, p.TRAIN)] == [1] and pooled[(1, p.EVALUATE)] == [1]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"fraction-train": 0.0}, "fraction-train"),
        ({"fraction-evaluate": 1.5}, "fraction-evaluate"),
        ({"min-clients": 3, "min-train-nodes": 2}, "min-train-nodes"),
    ],
)
def test_bad_sampling_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_app_config(overrides)
