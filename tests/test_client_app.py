"""The real ClientApp with tiny models, driven by FedSem on a Ray-free fake Grid."""

import json

import numpy as np
import pytest

from fedsem_app import protocol as p
from fedsem_app.client_app import STATE_ADAPTER, app
from fedsem_app.config.app import load_app_config
from fedsem_app.data.split import load_split
from fedsem_app.embedding import embed
from fedsem_app.run.meter import MeteredGrid
from fedsem_app.run.results import RunLog, make_run_folder
from fedsem_app.strategies import get_strategy_class
from fedsem_app.wire import ZLIB_SUFFIX, unpack_texts
from tests.fake_grid import FakeGrid


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def run_fedsem(tmp_path, cache_dir, models, rounds=2, node_configs=None, **overrides):
    run_config = load_app_config(
        {
            "model.names": ",".join(models),
            "model.cache-dir": str(cache_dir),
            "model.device": "cpu",
            "num-server-rounds": rounds,
            "min-clients": 2,
            "train.local-steps": 2,
            "train.max-seq-len": 64,
            "gen.max-new-tokens": 8,
            "fedsem.prompts-per-round": 3,
            "eval.num-prompts": 2,
            **overrides,
        }
    ).to_flat()
    cfg = load_app_config(run_config)
    grid = MeteredGrid(FakeGrid(app, len(models), run_config, node_configs))
    run_log = RunLog(make_run_folder(tmp_path, "r", "fedsem"), run_config, rounds, grid.snapshot)
    strategy = get_strategy_class("fedsem")(cfg, load_split(cfg.data, cfg.seed), run_log)
    strategy.start(grid=grid, initial_arrays=strategy.initial_arrays(), num_rounds=rounds)
    return strategy, run_log, grid


def test_heterogeneous_tiny_clients_reach_consensus(tmp_path, cache_dir):
    strategy, run_log, grid = run_fedsem(
        tmp_path, cache_dir, ["tiny-llama", "tiny-gpt2", "tiny-qwen2"]
    )
    rows = run_log.rows
    assert [r["round"] for r in rows] == [0, 1, 2]  # round 0: the untrained models
    assert rows[0]["eval-replies"] == 3 and "train-replies" not in rows[0]
    assert all(r["train-replies"] == 3 and r["eval-replies"] == 3 for r in rows[1:])
    assert all(np.isfinite(r["nll"]) and r["nll"] > 0 for r in rows)
    clients = [json.loads(line) for line in (run_log.folder / "clients.jsonl").open()]
    assert {c["model"] for c in clients} == {"tiny-llama", "tiny-gpt2", "tiny-qwen2"}
    # Every node keeps its own trained adapter between rounds, in its context state.
    ctx = grid._grid.contexts
    states = [ctx[n].state[STATE_ADAPTER] for n in sorted(ctx)]
    assert all(len(s) > 0 for s in states)
    # llama and qwen2 share module names; gpt2's fused c_attn differs
    assert len({tuple(s.keys()) for s in states}) == 2
    # A real vote: every prompt of a round is labelled with the answer of one of the
    # clients, the valid answer closest on average to the other valid ones (the medoid
    # rule; ties to the higher confidence), recomputed here from the embedder's vectors.
    # An empty answer is not valid; at least two valid answers make it a vote.
    samples = [json.loads(line) for line in (run_log.folder / "consensus_samples.jsonl").open()]
    assert [s["round"] for s in samples] == [1, 1, 1, 2, 2, 2]
    for sample in samples:
        answers = [a for a in sample["answers"] if a["valid"]]
        assert len(sample["answers"]) == 3 and len(answers) >= 2 and not sample["abstained"]
        vectors = embed([a["text"] for a in answers], "all-MiniLM-L6-v2")
        cosine = vectors @ vectors.T
        to_others = (cosine.sum(axis=1) - np.diag(cosine)) / (len(answers) - 1)
        best = [a for a, v in zip(answers, to_others, strict=True) if v >= to_others.max() - 1e-5]
        winner = max(best, key=lambda a: a["confidence"])
        assert sample["answers"][sample["chosen"]] is winner
        assert sample["agreement"] == pytest.approx(to_others.max(), abs=1e-5)
    labels = {q.id: q.answer for q in strategy.pseudo_labels}
    last = samples[3:]
    assert labels == {s["prompt-id"]: s["answers"][s["chosen"]]["text"] for s in last}
    # Round 1's labels went to every node in round 2.
    train = [m.content for m in grid._grid.sent if m.metadata.message_type == p.TRAIN]
    round2 = [c[p.PSEUDO] for c in train[3:]]
    first = {s["prompt-id"]: s["answers"][s["chosen"]]["text"] for s in samples[:3]}
    assert len(round2) == 3
    assert all(dict(zip(r[p.IDS], r[p.TEXTS], strict=True)) == first for r in round2)


def test_node_with_unknown_model_is_reported_and_the_round_goes_on(tmp_path, cache_dir, caplog):
    node_configs = [{}, {}, {"model-name": "no-such-model"}]
    strategy, run_log, _ = run_fedsem(
        tmp_path,
        cache_dir,
        ["tiny-llama", "tiny-gpt2", "tiny-llama"],
        rounds=1,
        node_configs=node_configs,
    )
    row = run_log.rows[1]
    assert row["train-replies"] == 2 and row["dropped-replies"] == 1
    assert row["eval-replies"] == 2
    assert len(strategy.pseudo_labels) == 3
    assert "cannot load model-name 'no-such-model'" in caplog.text
    assert "partition-id 2" in caplog.text


def test_adapter_changes_with_training_and_is_restored(tmp_path, cache_dir):
    _, _, grid = run_fedsem(tmp_path, cache_dir, ["tiny-llama", "tiny-llama"], rounds=1)
    from fedsem_app.clients import load_client
    from fedsem_app.config.sections import LoraConfig

    client = load_client(
        "tiny-llama", LoraConfig(), device="cpu", cache_dir=cache_dir, template="chat", seed=42
    )
    client.set_adapter(None)
    fresh = client.adapter_state()
    trained = {k: v.numpy() for k, v in grid._grid.contexts[1].state[STATE_ADAPTER].items()}
    assert fresh.keys() == trained.keys()
    assert any(not np.allclose(fresh[k], trained[k]) for k in fresh)
    assert p.ADAPTER not in grid._grid.sent[0].content  # fedsem never ships parameters


def test_node_with_missing_data_file_is_named_and_the_round_goes_on(tmp_path, cache_dir, caplog):
    node_configs = [{}, {"data-path": str(tmp_path / "gone.jsonl")}, {}]
    _, run_log, _ = run_fedsem(
        tmp_path,
        cache_dir,
        ["tiny-llama", "tiny-gpt2", "tiny-llama"],
        rounds=1,
        node_configs=node_configs,
    )
    row = run_log.rows[1]
    assert row["train-replies"] == 2 and row["dropped-replies"] == 1
    assert "node with partition-id 1: config key 'data-path'" in caplog.text
    assert "gone.jsonl" in caplog.text


def test_injected_raise_is_dropped_and_the_round_goes_on(tmp_path, cache_dir, caplog):
    models = ["tiny-llama", "tiny-gpt2", "tiny-llama"]
    overrides = {"fault.mode": "raise", "fault.clients": "1"}
    _, run_log, _ = run_fedsem(tmp_path, cache_dir, models, rounds=1, **overrides)
    row = run_log.rows[1]
    assert row["train-replies"] == 2 and row["dropped-replies"] == 1
    assert row["eval-replies"] == 3  # the faulty node still evaluates
    assert "partition-id 1: injected fault (fault.mode='raise')" in caplog.text


def text_fields(grid) -> list[tuple[str, set[str]]]:
    """(record, its text-list keys) of every train message the grid carried, both ways."""
    down = [m.content for m in grid._grid.sent if m.metadata.message_type == p.TRAIN]
    up = [r.content for r in grid._grid.replies if r.has_content() and p.ANSWERS in r.content]
    records = [(name, c[name]) for c in down for name in (p.PUBLIC, p.PSEUDO)]
    records += [(p.ANSWERS, c[p.ANSWERS]) for c in up]
    # Round 1 has no pseudo-labels yet; an empty list says nothing about the codec.
    return [
        (name, {k for k in rec if k.startswith((p.PROMPTS, p.TEXTS))})
        for name, rec in records
        if len(rec[p.IDS]) > 0
    ]


def test_adversarial_client_sends_its_text_and_zlib_changes_no_consensus(tmp_path, cache_dir):
    models = ["tiny-llama", "tiny-gpt2", "tiny-llama"]
    fault = {"fault.mode": "adversarial", "fault.clients": "2", "fault.text": "BUY NOW"}
    plain, plain_log, plain_grid = run_fedsem(tmp_path / "a", cache_dir, models, **fault)
    packed, packed_log, packed_grid = run_fedsem(
        tmp_path / "b", cache_dir, models, **fault, **{"fedsem.wire-compression": "zlib"}
    )
    # The adversarial node's text reaches the vote as it sent it, compressed or not.
    for run_log in (plain_log, packed_log):
        samples = [json.loads(line) for line in (run_log.folder / "consensus_samples.jsonl").open()]
        node3 = [a["text"] for s in samples for a in s["answers"] if a["node"] == 3]
        assert node3 and set(node3) == {"BUY NOW"}
    # On the wire: lists of texts in the plain run; one zlib blob per list in the packed
    # run, from the server (prompts, pseudo-labels) and from every node (answers).
    z = ZLIB_SUFFIX
    expected = {p.PUBLIC: {p.PROMPTS}, p.PSEUDO: {p.PROMPTS, p.TEXTS}, p.ANSWERS: {p.TEXTS}}
    plain_fields, packed_fields = text_fields(plain_grid), text_fields(packed_grid)
    assert {name for name, _ in packed_fields} == set(expected)  # round 2 sent labels
    assert all(keys == expected[name] for name, keys in plain_fields)
    assert all(keys == {k + z for k in expected[name]} for name, keys in packed_fields)
    assert len(packed_fields) == len(plain_fields)
    # Lossless: the same labels reach the clients, the same consensus, round after round.
    labels = [
        m.content[p.PSEUDO] for m in plain_grid._grid.sent if m.metadata.message_type == p.TRAIN
    ]
    packed_labels = [
        m.content[p.PSEUDO] for m in packed_grid._grid.sent if m.metadata.message_type == p.TRAIN
    ]
    assert [unpack_texts(r, p.TEXTS, 10**6) for r in packed_labels] == [
        list(r[p.TEXTS]) if p.TEXTS in r else [] for r in labels
    ]
    assert packed.pseudo_labels == plain.pseudo_labels
    assert [r["agreement-mean"] for r in packed_log.rows[1:]] == [
        r["agreement-mean"] for r in plain_log.rows[1:]
    ]


def test_a_restarted_node_finds_its_adapter_on_disk(tmp_path, cache_dir):
    from flwr.app import Context, Message, RecordDict

    from fedsem_app.client_app import _restore_adapter, adapter_file
    from fedsem_app.clients import load_client
    from fedsem_app.config.sections import LoraConfig

    _, _, grid = run_fedsem(tmp_path, cache_dir, ["tiny-llama", "tiny-gpt2"], rounds=1)
    ctx = grid._grid.contexts[1]
    trained = {k: v.numpy() for k, v in ctx.state[STATE_ADAPTER].items()}
    path = adapter_file(cache_dir, ctx, "tiny-llama")
    # No run folder named (the strategy ran without the server): keyed by the run id.
    assert path == cache_dir / "_adapters" / f"run-{ctx.run_id}" / "partition-0-tiny-llama.npz"
    assert path.is_file()
    # A restarted SuperNode: same run and node, empty in-memory state.
    restarted = Context(
        run_id=ctx.run_id, node_id=1, node_config=ctx.node_config, state=RecordDict(), run_config={}
    )
    client = load_client(
        "tiny-llama", LoraConfig(), device="cpu", cache_dir=cache_dir, template="chat", seed=42
    )
    client.set_adapter(None)
    _restore_adapter(
        client, Message(RecordDict(), dst_node_id=1, message_type="train"), restarted, cache_dir
    )
    restored = client.adapter_state()
    assert restored.keys() == trained.keys()
    for key in trained:
        np.testing.assert_array_equal(restored[key], trained[key])


def test_real_clients_send_quantized_adapters_and_the_server_averages_them(tmp_path, cache_dir):
    run_config = load_app_config(
        {
            "strategy": "fedavg-lora",
            "model.names": "tiny-llama",
            "model.cache-dir": str(cache_dir),
            "model.device": "cpu",
            "num-server-rounds": 1,
            "train.local-steps": 1,
            "train.max-seq-len": 64,
            "eval.num-prompts": 2,
            "eval.generate": False,
            "aggregation.quantize": "int4",
        }
    ).to_flat()
    cfg = load_app_config(run_config)
    fake = FakeGrid(app, 2, run_config)
    grid = MeteredGrid(fake)
    run_log = RunLog(make_run_folder(tmp_path, "q", "fedavg-lora"), run_config, 1, grid.snapshot)
    strategy = get_strategy_class("fedavg-lora")(cfg, load_split(cfg.data, cfg.seed), run_log)
    initial = strategy.initial_arrays()
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=1)
    row = run_log.rows[1]
    assert row["train-replies"] == 2 and row["dropped-replies"] == 0
    assert all(a.dtype == "float32" for a in result.arrays.values())
    assert all(np.isfinite(a.numpy()).all() for a in result.arrays.values())
    # Each int4 reply carries at most half a byte per weight plus 4 bytes per row and
    # framing: well under a quarter of the float32 adapter's 4 bytes per weight.
    weights = sum(a.numpy().size for a in initial.values())
    assert row["bytes-up-train"] < 2 * weights


@pytest.mark.parametrize("estimator", ["similarity", "lift"])
def test_real_clients_send_relevance_and_categories(tmp_path, cache_dir, estimator):
    _, run_log, _ = run_fedsem(
        tmp_path,
        cache_dir,
        ["tiny-llama", "tiny-gpt2"],
        rounds=1,
        **{
            "fedsem.relevance": estimator,
            "fedsem.consensus": "relevance",
            "fedsem.diagnostics": True,
            "fedsem.samples-per-round": 0,
        },
    )
    samples = [json.loads(line) for line in (run_log.folder / "consensus_samples.jsonl").open()]
    scores = [a["relevance"] for s in samples for a in s["answers"] if a["valid"]]
    assert len(samples) == 3 and scores and all(np.isfinite(scores))
    if estimator == "similarity":
        assert all(-1 <= r <= 1 for r in scores)
    row = run_log.rows[1]
    # The nodes reported their categories, so the expert metrics are there.
    assert "expert-prompts" in row
    assert 0.0 <= row["label-rouge-random"] <= row["label-rouge-best"] <= 1.0
