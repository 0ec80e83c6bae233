"""The DP option of the parameter strategies: Flower's wrappers, equal weights, the accountant."""

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedsem_app import protocol as p
from fedsem_app.clients.mods import dp_clipping_mod
from fedsem_app.config.app import load_app_config
from fedsem_app.config.errors import ConfigError
from fedsem_app.config.sections import DPConfig
from fedsem_app.server_app import check_setup
from fedsem_app.strategies import dp
from tests.test_baselines import adapter, run, train_reply

TINY_NOISE = {"dp.noise-multiplier": 1e-6, "dp.clipping-norm": 1.0}


def test_epsilon_of_one_gaussian_release_by_hand():
    # RDP of the Gaussian mechanism at order a: a / (2 z^2). dp-accounting converts
    # with eps = rdp + ln(1 - 1/a) - (ln delta + ln a) / (a - 1), at its best order.
    # z = 2, delta = 1e-5: best order 9.6, rdp 9.6 / 8 = 1.2, so
    # eps = 1.2 + ln(8.6 / 9.6) + (ln 1e5 - ln 9.6) / 8.6 = 1.2 - 0.1100 + 1.0757 = 2.1657.
    a = 9.6
    by_hand = a / 8 + math.log(1 - 1 / a) + (math.log(1e5) - math.log(a)) / (a - 1)
    assert math.isclose(by_hand, 2.16572, abs_tol=1e-5)
    assert math.isclose(dp.epsilon(2.0, 1, 1e-5), by_hand, rel_tol=1e-9)
    # Composition only adds privacy loss; no rounds spend none.
    assert dp.epsilon(2.0, 3, 1e-5) > dp.epsilon(2.0, 1, 1e-5)
    assert dp.epsilon(2.0, 0, 1e-5) == 0.0


def test_dp_clips_each_update_and_averages_with_equal_weights(tmp_path):
    # Updates from the global [0, 0]: [0, 4] (norm 4) and [4, 8] (norm sqrt(80)); with
    # clipping norm 1 they become [0, 1] and [4, 8] / sqrt(80) = [0.4472, 0.8944]. Equal
    # weights (not 1:3 by examples): mean [0.2236, 0.9472]; noise sd 1e-6 * 1 / 2.
    replies = [train_reply(1, adapter(w=[0, 4])), train_reply(3, adapter(w=[4, 8]))]
    result, rows, _ = run(tmp_path, "fedavg-lora", replies, initial=adapter(w=[0, 0]), **TINY_NOISE)
    s = math.sqrt(80)
    np.testing.assert_allclose(result.arrays["w"].numpy(), [2 / s, (1 + 8 / s) / 2], atol=1e-4)


@pytest.mark.parametrize("side", ["server", "client"])
def test_each_round_reports_the_accountants_epsilon_for_the_run_settings(tmp_path, side):
    replies = [train_reply(2, adapter(w=[0, 4])), train_reply(2, adapter(w=[4, 8]))]
    settings = {"dp.noise-multiplier": 1.5, "dp.clip-side": side, "dp.delta": 1e-4}
    result, rows, inbox = run(
        tmp_path,
        "fedavg-lora",
        replies,
        initial=adapter(w=[0, 0]),
        **{**settings, "num-server-rounds": 2},
    )
    assert [r["dp-epsilon"] for r in rows] == [dp.epsilon(1.5, 1, 1e-4), dp.epsilon(1.5, 2, 1e-4)]
    assert all(r["dp-epsilon-round"] == dp.epsilon(1.5, 1, 1e-4) for r in rows)
    # Client-side clipping: the server asks for it in the train config.
    train = [c for _, kind, c in inbox if kind == p.TRAIN]
    assert all((KEY_CLIPPING_NORM in c[p.TRAIN_CONFIG]) == (side == "client") for c in train)


def test_dp_is_refused_where_it_is_not_covered():
    with pytest.raises(ConfigError, match="aggregation.rule 'median' is not covered") as info:
        load_app_config({"dp.noise-multiplier": 1.0, "aggregation.rule": "median"})
    assert info.value.key == "dp.noise-multiplier"
    for strategy in ("fedsem", "fedit", "local"):
        cfg = load_app_config(
            {"strategy": strategy, "model.names": "smollm2-135m", "dp.noise-multiplier": 1.0}
        )
        with pytest.raises(ConfigError, match="applies to fedavg-lora, fedprox-lora"):
            check_setup(cfg)
    with pytest.raises(ConfigError, match="allowed values: client, server"):
        DPConfig(clip_side="both")


def test_clipping_mod_passes_other_messages_through():
    calls = []

    def inner(msg, ctx):
        calls.append(msg)
        return "reply"

    class Meta:
        message_type = p.TRAIN

    class Msg:  # a fedsem train message: no clipping norm, no ArrayRecord
        metadata = Meta()
        content = RecordDict({p.TRAIN_CONFIG: ConfigRecord({p.ROUND: 1})})

    assert dp_clipping_mod(Msg(), None, inner) == "reply" and len(calls) == 1


def real_client_updates(tmp_path, cache_dir, **overrides) -> list[np.ndarray]:
    """Each node's update (reply adapter minus the global one) in one fedavg-lora round, by node."""
    from fedsem_app.client_app import app
    from fedsem_app.data.split import load_split
    from fedsem_app.run.meter import MeteredGrid
    from fedsem_app.run.results import RunLog, make_run_folder
    from fedsem_app.strategies import get_strategy_class
    from tests.fake_grid import FakeGrid

    run_config = load_app_config(
        {
            "strategy": "fedavg-lora",
            "model.names": "tiny-llama",
            "model.cache-dir": str(cache_dir),
            "model.device": "cpu",
            "num-server-rounds": 1,
            "train.local-steps": 1,
            "train.max-seq-len": 64,
            "eval.num-prompts": 1,
            "eval.generate": False,
            **overrides,
        }
    ).to_flat()
    cfg = load_app_config(run_config)
    fake = FakeGrid(app, 2, run_config)
    grid = MeteredGrid(fake)
    run_log = RunLog(make_run_folder(tmp_path, "dp", "fedavg-lora"), run_config, 1, grid.snapshot)
    strategy = get_strategy_class("fedavg-lora")(cfg, load_split(cfg.data, cfg.seed), run_log)
    strategy.start(grid=grid, initial_arrays=strategy.initial_arrays(), num_rounds=1)
    sent = {m.metadata.message_id: m for m in fake.sent if m.metadata.message_type == p.TRAIN}
    # By node: Flower samples the nodes of a round in random order, so replies come back
    # in a different order from run to run.
    updates = {}
    for reply in fake.replies:
        if reply.metadata.message_type != p.TRAIN:
            continue
        assert not reply.has_error(), reply.error
        before = sent[reply.metadata.reply_to_message_id].content[p.ADAPTER]
        after = reply.content[p.ADAPTER]
        assert before.keys() == after.keys()
        updates[reply.metadata.src_node_id] = np.concatenate(
            [(after[k].numpy() - before[k].numpy()).ravel() for k in sorted(after)]
        )
    return [updates[node] for node in sorted(updates)]


def test_client_side_clipping_scales_each_real_update_to_the_norm(tmp_path):
    # Prepare: the same round without DP gives each node's unclipped update u (training
    # is deterministic: same seed, same data).
    cache_dir = tmp_path / "models"
    free = real_client_updates(tmp_path / "free", cache_dir)
    norms = [float(np.linalg.norm(u)) for u in free]
    assert len(free) == 2 and min(norms) > 0
    # Execute: client-side clipping at half the smaller norm.
    c = min(norms) / 2
    clipped = real_client_updates(
        tmp_path / "dp",
        cache_dir,
        **{"dp.noise-multiplier": 1e-6, "dp.clipping-norm": c, "dp.clip-side": "client"},
    )
    # Assert: each update left the node as u * c / |u|: norm c (it was above c before),
    # direction unchanged.
    for u, v, n in zip(free, clipped, norms, strict=True):
        assert n > c
        assert np.linalg.norm(v) == pytest.approx(c, rel=1e-4)
        np.testing.assert_allclose(v, u * (c / n), rtol=1e-3, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("side", ["client", "server"])
def test_a_dp_run_of_real_clients_writes_epsilon_to_metrics_and_summary(tmp_path, side):
    import csv
    import json

    from fedsem_app.client_app import app
    from tests.test_checkpoint import run_main

    config = {
        "strategy": "fedavg-lora",
        "model.names": "tiny-llama",
        "model.cache-dir": str(tmp_path / "models"),
        "model.device": "cpu",
        "num-server-rounds": 2,
        "train.local-steps": 1,
        "train.max-seq-len": 64,
        "eval.num-prompts": 2,
        "eval.generate": False,
        "results-dir": str(tmp_path),
        "run-name": "job",
        "dp.noise-multiplier": 0.8,
        "dp.clipping-norm": 0.5,
        "dp.clip-side": side,
    }
    run_main(app, 2, config)
    rows = list(csv.DictReader((tmp_path / "job" / "metrics.csv").open()))
    trained = [r for r in rows if r["round"] != "0"]
    assert [float(r["dp-epsilon"]) for r in trained] == pytest.approx(
        [dp.epsilon(0.8, 1, 1e-5), dp.epsilon(0.8, 2, 1e-5)]
    )
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["dp"]["epsilon"] == pytest.approx(dp.epsilon(0.8, 2, 1e-5))
    assert summary["dp"]["clip-side"] == side and summary["dp"]["rounds"] == 2
