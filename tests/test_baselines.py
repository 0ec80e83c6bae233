"""Baseline strategies (fedavg-lora, fedit, local, pooled) on a fake Grid with scripted clients."""

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedsem_app import protocol as p
from fedsem_app.config.app import load_app_config
from fedsem_app.config.errors import ConfigError
from fedsem_app.data.split import load_split
from fedsem_app.run.meter import MeteredGrid
from fedsem_app.run.results import RunLog, make_run_folder
from fedsem_app.server_app import check_setup
from fedsem_app.strategies import get_strategy_class
from fedsem_app.strategies.validation import adapter_layout, adapter_problem
from tests.fake_grid import FakeGrid

EVAL_METRICS = {p.NUM_EXAMPLES: 2, p.ROUGE_L: 0.25, p.EMBED_SIM: 0.5, p.NLL: 2.0}


def adapter(**tensors) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()})


def train_reply(num_examples, arrays=None) -> RecordDict:
    content = RecordDict(
        {
            p.METRICS: MetricRecord(
                {
                    p.NUM_EXAMPLES: num_examples,
                    p.TRAIN_LOSS: 1.0,
                    p.TRAIN_SECONDS: 0.5,
                    p.GENERATE_SECONDS: 0.0,
                }
            ),
            p.INFO: ConfigRecord({p.MODEL_NAME: "scripted"}),
        }
    )
    if arrays is not None:
        content[p.ADAPTER] = arrays
    return content


def scripted(replies):
    """replies[partition] -> RecordDict answered to every train message; log what arrives."""
    inbox = []

    def app(msg: Message, ctx: Context) -> Message:
        part = ctx.node_config["partition-id"]
        inbox.append((ctx.node_id, msg.metadata.message_type, msg.content))
        if msg.metadata.message_type == p.EVALUATE:
            return Message(
                content=RecordDict({p.METRICS: MetricRecord(EVAL_METRICS)}), reply_to=msg
            )
        return Message(content=replies[part], reply_to=msg)

    return app, inbox


def run(tmp_path, strategy, replies, initial=None, num_nodes=None, **overrides):
    cfg = load_app_config(
        {
            "strategy": strategy,
            "model.names": "tiny-llama",
            "num-server-rounds": 1,
            "eval.num-prompts": 2,
            **overrides,
        }
    )
    app, inbox = scripted(replies)
    grid = MeteredGrid(FakeGrid(app, num_nodes or len(replies), cfg.to_flat()))
    run_log = RunLog(
        make_run_folder(tmp_path, "t", strategy), {}, cfg.num_server_rounds, grid.snapshot
    )
    instance = get_strategy_class(strategy)(cfg, load_split(cfg.data, cfg.seed), run_log)
    result = instance.start(
        grid=grid, initial_arrays=initial or ArrayRecord(), num_rounds=cfg.num_server_rounds
    )
    # Round 0 (evaluation before training) is checked in its own test; these check rounds 1+.
    assert run_log.rows[0]["round"] == 0
    trained = [m for m in inbox if m[2][p.TRAIN_CONFIG].get(p.ROUND) != 0]
    return result, run_log.rows[1:], trained


def sent(inbox, kind):
    return [(node, content) for node, mtype, content in inbox if mtype == kind]


# --- fedavg-lora ---------------------------------------------------------------------------


def test_fedavg_lora_weights_adapters_by_num_examples(tmp_path):
    replies = [train_reply(1, adapter(w=[0, 4])), train_reply(3, adapter(w=[4, 8]))]
    result, rows, inbox = run(tmp_path, "fedavg-lora", replies, initial=adapter(w=[0, 0]))
    # Weights 1/(1+3) and 3/(1+3): [0, 4] * 1/4 + [4, 8] * 3/4 = [0 + 3, 1 + 6] = [3, 7]
    averaged = result.arrays["w"]
    np.testing.assert_allclose(averaged.numpy(), [3.0, 7.0])
    assert averaged.dtype == "float32"
    # The train messages carry the global adapter and ask for the trained one back ...
    for _, content in sent(inbox, p.TRAIN):
        assert content[p.TRAIN_CONFIG][p.RETURN_ADAPTER] is True
        np.testing.assert_array_equal(content[p.ADAPTER]["w"].numpy(), [0, 0])
        assert p.TEMPLATE not in content[p.TRAIN_CONFIG]
    # ... and evaluation sends the average to every client.
    evaluated = sent(inbox, p.EVALUATE)
    assert len(evaluated) == 2
    for _, content in evaluated:
        np.testing.assert_allclose(content[p.ADAPTER]["w"].numpy(), [3.0, 7.0])
        assert len(content[p.TEST][p.IDS]) == 2
    assert rows[0]["train-replies"] == 2 and rows[0]["dropped-replies"] == 0
    assert rows[0]["bytes-down-train"] > 0 and rows[0]["bytes-up-train"] > 0


def test_fedavg_lora_drops_bad_adapters_and_averages_the_rest(tmp_path):
    replies = [
        train_reply(1, adapter(w=[0, 4])),
        train_reply(3, adapter(w=[4, 8])),
        train_reply(5, adapter(w=[1, 2, 3])),  # wrong shape
        train_reply(5, adapter(w=[math.nan, 1])),  # NaN
        train_reply(5, ArrayRecord({"w": Array(np.array([1.0, 1.0]))})),  # float64
        train_reply(5, adapter(w=[1, 1], extra=[1])),  # unexpected tensor
        train_reply(5),  # no adapter at all
    ]
    result, rows, _ = run(tmp_path, "fedavg-lora", replies, initial=adapter(w=[0, 0]))
    # Only the first two count: the same [3, 7] as above.
    np.testing.assert_allclose(result.arrays["w"].numpy(), [3.0, 7.0])
    assert rows[0]["train-replies"] == 2 and rows[0]["dropped-replies"] == 5


def test_adapter_problem_names_the_reason():
    layout = adapter_layout(adapter(a=[[0, 0]], b=[0]))
    assert adapter_problem(train_reply(1, adapter(a=[[1, 2]], b=[3])), layout) is None
    cases = {
        "no ArrayRecord": train_reply(1),
        "misses 1 tensor(s), first: 'b'": train_reply(1, adapter(a=[[1, 2]])),
        "unexpected tensor(s), first: 'c'": train_reply(1, adapter(a=[[1, 2]], b=[3], c=[1])),
        "'a' has shape (2,), expected (1, 2)": train_reply(1, adapter(a=[1, 2], b=[3])),
        "dtype float64": train_reply(
            1, ArrayRecord({"a": Array(np.zeros((1, 2))), "b": Array(np.zeros(1, np.float32))})
        ),
        "'b' holds non-finite": train_reply(1, adapter(a=[[1, 2]], b=[math.inf])),
    }
    for expected, content in cases.items():
        assert expected in adapter_problem(content, layout)
    two = train_reply(1, adapter(a=[[1, 2]], b=[3]))
    two["other"] = adapter(x=[1])
    assert "2 ArrayRecords" in adapter_problem(two, layout)


def test_fedavg_lora_initial_adapter_is_the_clients_fresh_one():
    from fedsem_app.clients import clear_client_cache, load_client

    cfg = load_app_config({"strategy": "fedavg-lora", "model.names": "tiny-llama"})
    strategy = get_strategy_class("fedavg-lora")(cfg, load_split(cfg.data, cfg.seed), None)
    arrays = strategy.initial_arrays()
    client = load_client(
        "tiny-llama", cfg.lora, cache_dir=cfg.model.cache_path, template="alpaca", seed=cfg.seed
    )
    expected = client.adapter_state()
    clear_client_cache()
    assert list(arrays) == list(expected) and len(expected) > 0
    for key, value in expected.items():
        np.testing.assert_array_equal(arrays[key].numpy(), value)


@pytest.mark.parametrize("strategy", ["fedavg-lora", "fedit", "fedprox-lora", "pooled"])
def test_shared_model_strategies_refuse_mixed_models(strategy):
    cfg = load_app_config({"strategy": strategy, "model.names": "tiny-llama,tiny-gpt2"})
    with pytest.raises(ConfigError) as err:
        check_setup(cfg)
    message = str(err.value)
    assert "model.names" in message and "tiny-gpt2" in message and "tiny-llama" in message
    assert "strategy='fedsem'" in message
    assert f"strategy='{strategy}' model.names='tiny-llama'" in message


@pytest.mark.parametrize("strategy", ["fedsem", "local"])
def test_mixed_models_are_fine_without_a_shared_model(strategy):
    cfg = load_app_config({"strategy": strategy, "model.names": "tiny-llama,tiny-gpt2"})
    strategy_cls, _ = check_setup(cfg)
    assert strategy_cls.name == strategy


# --- fedit ---------------------------------------------------------------------------------


def test_fedit_sends_alpaca_and_samples_the_configured_fraction(tmp_path):
    replies = [train_reply(2, adapter(w=[1, 1]))] * 10
    _, rows, inbox = run(
        tmp_path,
        "fedit",
        replies,
        initial=adapter(w=[0, 0]),
        **{"fedit.fraction-train": 0.3, "num-server-rounds": 2},
    )
    trained = sent(inbox, p.TRAIN)
    evaluated = sent(inbox, p.EVALUATE)
    # int(10 nodes * 0.3) = 3 per round, two rounds; evaluation covers all 10 every round.
    assert len(trained) == 2 * 3 and len(evaluated) == 2 * 10
    assert len({node for node, _ in trained[:3]}) == 3
    for _, content in trained + evaluated:
        assert content[p.TRAIN_CONFIG][p.TEMPLATE] == "alpaca"
    assert all(c[p.TRAIN_CONFIG][p.RETURN_ADAPTER] for _, c in trained)
    assert [r["train-replies"] for r in rows] == [3, 3]


def test_fedit_default_fraction_is_floored_by_min_clients(tmp_path):
    replies = [train_reply(2, adapter(w=[1, 1]))] * 3
    _, _, inbox = run(tmp_path, "fedit", replies, initial=adapter(w=[0, 0]))
    # Default fraction 0.1: int(3 * 0.1) = 0 nodes, raised to min-clients = 2.
    assert len(sent(inbox, p.TRAIN)) == 2


def test_client_app_uses_the_template_the_message_sends():
    from fedsem_app.client_app import _setup
    from fedsem_app.clients import clear_client_cache

    cfg = load_app_config({"model.names": "tiny-llama"})
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 1},
        state=RecordDict(),
        run_config=cfg.to_flat(),
    )
    *_, sent_template = _setup(context, ConfigRecord({p.TEMPLATE: "alpaca"}))
    *_, own_template = _setup(context, ConfigRecord())
    clear_client_cache()
    assert sent_template.template == "alpaca" and own_template.template == cfg.model.template


# --- local and pooled ----------------------------------------------------------------------


def test_local_exchanges_nothing_but_metrics(tmp_path):
    replies = [train_reply(n) for n in (4, 5, 6)]
    _, rows, inbox = run(
        tmp_path,
        "local",
        replies,
        **{"model.names": "tiny-llama,tiny-gpt2", "num-server-rounds": 2},
    )
    trained, evaluated = sent(inbox, p.TRAIN), sent(inbox, p.EVALUATE)
    assert len(trained) == 2 * 3 and len(evaluated) == 2 * 3
    for _, content in trained:
        assert set(content) == {p.TRAIN_CONFIG}
    for _, content in evaluated:
        assert set(content) == {p.TRAIN_CONFIG, p.TEST}
    assert not any(content.array_records for _, _, content in inbox)
    assert rows[0]["train-replies"] == 3 and rows[0]["eval-replies"] == 3
    # num-examples weighted train loss of identical losses, and the shared eval metrics
    assert rows[0]["train-loss"] == pytest.approx(1.0)
    assert rows[0]["rouge-l"] == pytest.approx(0.25)


def test_pooled_trains_and_evaluates_one_node_on_all_partitions(tmp_path):
    replies = [train_reply(100)] * 3
    _, rows, inbox = run(tmp_path, "pooled", replies, **{"num-server-rounds": 2})
    # FakeGrid's node ids are 1..3: the lowest, 1, every round, in both phases.
    assert [(node, mtype) for node, mtype, _ in inbox] == [
        (1, p.TRAIN),
        (1, p.EVALUATE),
        (1, p.TRAIN),
        (1, p.EVALUATE),
    ]
    for _, content in sent(inbox, p.TRAIN):
        assert content[p.TRAIN_CONFIG][p.TRAIN_DATA] == p.ALL_PARTITIONS
        # The federation's compute: 3 connected nodes x train.local-steps (4) = 12 steps.
        assert content[p.TRAIN_CONFIG][p.LOCAL_STEPS] == 12
        assert set(content) == {p.TRAIN_CONFIG}
    assert [r["train-replies"] for r in rows] == [1, 1]
    assert [r["eval-replies"] for r in rows] == [1, 1]


@pytest.mark.parametrize("strategy", ["fedavg-lora", "fedit", "fedprox-lora", "local", "pooled"])
def test_every_strategy_splits_round_time(tmp_path, strategy):
    replies = [train_reply(2, adapter(w=[1, 1]))] * 2
    if strategy in ("local", "pooled"):
        replies = [train_reply(2)] * 2
    _, rows, _ = run(tmp_path, strategy, replies, initial=adapter(w=[0, 0]))
    row = rows[0]
    assert row["max-train-seconds"] == 0.5 and row["max-generate-seconds"] == 0.0
    assert row["server-seconds"] >= 0 and row["round-seconds"] >= row["server-seconds"]


@pytest.mark.parametrize("strategy", ["fedavg-lora", "fedit", "fedprox-lora"])
def test_robust_rules_ignore_an_outlier_adapter(tmp_path, strategy):
    replies = [
        train_reply(1, adapter(w=[0, 4])),
        train_reply(1, adapter(w=[4, 8])),
        train_reply(50, adapter(w=[1000, -1000])),  # scaled attacker claiming many examples
    ]
    common = dict(initial=adapter(w=[0, 0]), **{"fedit.fraction-train": 1.0})
    # Weighted mean: (1 * [0, 4] + 1 * [4, 8] + 50 * [1000, -1000]) / 52
    mean, _, _ = run(tmp_path / "mean", strategy, replies, **common)
    np.testing.assert_allclose(mean.arrays["w"].numpy(), [50004 / 52, -49988 / 52], rtol=1e-6)
    # Median of [0, 4, 1000] and of [4, 8, -1000]: [4, 4]
    median, rows, _ = run(
        tmp_path / "median", strategy, replies, **{"aggregation.rule": "median"}, **common
    )
    np.testing.assert_array_equal(median.arrays["w"].numpy(), [4.0, 4.0])
    assert median.arrays["w"].dtype == "float32" and rows[0]["train-replies"] == 3


def test_fedprox_sends_mu_and_averages_as_fedavg(tmp_path):
    replies = [train_reply(1, adapter(w=[0, 4])), train_reply(3, adapter(w=[4, 8]))]
    result, _, inbox = run(
        tmp_path, "fedprox-lora", replies, initial=adapter(w=[0, 0]), **{"fedprox.proximal-mu": 0.5}
    )
    np.testing.assert_allclose(result.arrays["w"].numpy(), [3.0, 7.0])  # as fedavg-lora
    for _, content in sent(inbox, p.TRAIN):
        assert content[p.TRAIN_CONFIG][p.PROXIMAL_MU] == 0.5
        assert content[p.TRAIN_CONFIG][p.RETURN_ADAPTER] is True
