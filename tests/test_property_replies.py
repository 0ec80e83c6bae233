"""Property: no malformed reply crashes a strategy's aggregation or leaks into its result.

Hypothesis mixes good replies with malformed ones (wrong types, counts, ids, shapes,
dtypes, non-finite numbers, corrupt compressed blobs, error replies) in any order,
for every registered strategy. Malformed content always carries a poison marker
(the text ``POISON`` or the value 1e6) so the test can show it was never used.
"""

import functools
import math
import zlib

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsem_app import protocol as p
from fedsem_app.config.app import load_app_config
from fedsem_app.data.split import load_split
from fedsem_app.run.results import RunLog, make_run_folder
from fedsem_app.strategies import get_strategy_class, strategy_names
from tests.fake_grid import FakeGrid

POISON = "POISON"
GOOD_TEXT = "Concrete reaches its design strength after about 28 days of curing."
PROMPTS = 3
GLOBAL = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float32)}


def metrics(num_examples=4, loss=1.0):
    return MetricRecord(
        {
            p.NUM_EXAMPLES: num_examples,
            p.TRAIN_LOSS: loss,
            p.TRAIN_SECONDS: 0.1,
            p.GENERATE_SECONDS: 0.1,
        }
    )


def adapter_record(tensors):
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in tensors.items()})


def good_adapter(value):
    return {k: np.full(v.shape, value, np.float32) for k, v in GLOBAL.items()}


def answers(ids, texts=None, confs=None, **extra):
    texts = [GOOD_TEXT] * len(ids) if texts is None else texts
    confs = [-0.5] * len(texts) if confs is None else confs
    return ConfigRecord({p.IDS: list(ids), p.TEXTS: texts, p.CONFIDENCES: confs, **extra})


# Each defect: (ids of the round, poison float) -> reply content; every one is unusable
# as a whole, or (the masked_* ones) unusable for the prompts it poisons.
DEFECTS = {
    "no-metrics": lambda ids, x: RecordDict({p.ANSWERS: answers(ids)}),
    "nan-loss": lambda ids, x: RecordDict({p.ANSWERS: answers(ids), p.METRICS: metrics(loss=x)}),
    "zero-examples": lambda ids, x: RecordDict(
        {p.ANSWERS: answers(ids, [POISON] * len(ids)), p.METRICS: metrics(num_examples=0)}
    ),
    "no-answers": lambda ids, x: RecordDict({p.METRICS: metrics()}),
    "int-texts": lambda ids, x: RecordDict(
        {p.ANSWERS: answers(ids, texts=[1] * len(ids)), p.METRICS: metrics()}
    ),
    "one-text-short": lambda ids, x: RecordDict(
        {p.ANSWERS: answers(ids[:-1], [POISON] * (len(ids) - 1)), p.METRICS: metrics()}
    ),
    "wrong-ids": lambda ids, x: RecordDict(
        {p.ANSWERS: answers([i + 1000 for i in ids], [POISON] * len(ids)), p.METRICS: metrics()}
    ),
    "bool-confidences": lambda ids, x: RecordDict(
        {
            p.ANSWERS: answers(ids, [POISON] * len(ids), [True] * len(ids)),
            p.METRICS: metrics(),
        }
    ),
    "corrupt-zlib": lambda ids, x: RecordDict(
        {
            p.ANSWERS: ConfigRecord(
                {
                    p.IDS: list(ids),
                    "texts-zlib": b"\x78\x9c" + POISON.encode(),
                    p.CONFIDENCES: [0.0],
                }
            ),
            p.METRICS: metrics(),
        }
    ),
    "zlib-bomb": lambda ids, x: RecordDict(
        {
            p.ANSWERS: ConfigRecord(
                {
                    p.IDS: list(ids),
                    "texts-zlib": zlib.compress(("[" + '"' + POISON * 200_000 + '"]').encode()),
                    p.CONFIDENCES: [0.0] * len(ids),
                }
            ),
            p.METRICS: metrics(),
        }
    ),
    "masked-too-long": lambda ids, x: RecordDict(
        {p.ANSWERS: answers(ids, [POISON * 1000] * len(ids)), p.METRICS: metrics()}
    ),
    "masked-nan-confidence": lambda ids, x: RecordDict(
        {p.ANSWERS: answers(ids, [POISON] * len(ids), [x] * len(ids)), p.METRICS: metrics()}
    ),
    "adapter-missing": lambda ids, x: RecordDict({p.METRICS: metrics()}),
    "adapter-wrong-shape": lambda ids, x: RecordDict(
        {
            p.ADAPTER: adapter_record({"a": np.full((3, 2), 1e6, np.float32), "b": GLOBAL["b"]}),
            p.METRICS: metrics(),
        }
    ),
    "adapter-float64": lambda ids, x: RecordDict(
        {
            p.ADAPTER: adapter_record({k: np.full(v.shape, 1e6) for k, v in GLOBAL.items()}),
            p.METRICS: metrics(),
        }
    ),
    "adapter-non-finite": lambda ids, x: RecordDict(
        {
            p.ADAPTER: adapter_record(
                {
                    k: np.full(v.shape, x if not math.isfinite(x) else math.nan, np.float32)
                    for k, v in GLOBAL.items()
                }
            ),
            p.METRICS: metrics(),
        }
    ),
    "adapter-extra-tensor": lambda ids, x: RecordDict(
        {
            p.ADAPTER: adapter_record({**good_adapter(1e6), "c": np.ones(1, np.float32)}),
            p.METRICS: metrics(),
        }
    ),
    "adapter-second-record": lambda ids, x: RecordDict(
        {
            p.ADAPTER: adapter_record(good_adapter(1e6)),
            "other": adapter_record({"z": np.ones(1, np.float32)}),
            p.METRICS: metrics(),
        }
    ),
}
MASKED = {"masked-too-long", "masked-nan-confidence"}
BAD_METRICS = {"no-metrics", "nan-loss", "zero-examples"}  # all a metrics-only strategy checks
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


@functools.cache
def split(cfg):
    return load_split(cfg.data, cfg.seed)


def make(strategy, tmp_path):
    cfg = load_app_config(
        {
            "strategy": strategy,
            "model.names": "tiny-llama",
            "min-clients": 1,
            "fedsem.prompts-per-round": PROMPTS,
            "fedsem.max-answer-chars": 500,
            "fedit.fraction-train": 1.0,
            "eval.num-prompts": 2,
        }
    )
    grid = FakeGrid(lambda msg, ctx: None, 12, cfg.to_flat())
    run_log = RunLog(make_run_folder(tmp_path, "p", strategy), {}, 1, lambda: {})
    instance = get_strategy_class(strategy)(cfg, split(cfg), run_log)
    return instance, grid, run_log


@pytest.mark.parametrize("strategy", strategy_names())
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plan=st.lists(
        st.one_of(st.sampled_from(sorted(DEFECTS)), st.integers(1, 5), st.just("error")),
        min_size=1,
        max_size=8,
    ),
    poison=NON_FINITE,
)
def test_malformed_replies_never_crash_or_leak(strategy, plan, poison, tmp_path):
    instance, grid, run_log = make(strategy, tmp_path)
    sent = list(instance.configure_train(1, adapter_record(GLOBAL), ConfigRecord(), grid))
    ids = list(sent[0].content[p.PUBLIC][p.IDS]) if p.PUBLIC in sent[0].content else []
    replies, good_weights, good_values = [], [], []
    for i, step in enumerate(plan):
        to = sent[i % len(sent)]
        if step == "error":
            replies.append(Message(error=Error(code=1, reason=POISON), reply_to=to))
            continue
        if isinstance(step, int):  # a good reply; its adapter's value is its number
            content = RecordDict(
                {p.METRICS: metrics(num_examples=step), p.INFO: ConfigRecord({p.MODEL_NAME: "m"})}
            )
            if ids:
                content[p.ANSWERS] = answers(ids)
            if p.ADAPTER in sent[0].content:
                content[p.ADAPTER] = adapter_record(good_adapter(float(step)))
            good_weights.append(step)
            good_values.append(float(step))
        else:
            content = DEFECTS[step](ids, poison)
            if step in MASKED and ids:
                good_weights.append(4)  # usable reply; only its poisoned answers are masked
        replies.append(Message(content=content, reply_to=to))

    arrays, row = instance.aggregate_train(1, replies)

    assert row["train-replies"] + row["dropped-replies"] == len(replies)
    if strategy == "fedsem":
        assert row["train-replies"] == len(good_weights)
        assert all(POISON not in q.answer for q in instance.pseudo_labels)
        assert len(instance.pseudo_labels) == (PROMPTS if good_values else 0)
    elif p.ADAPTER in sent[0].content:  # the parameter strategies
        assert row["train-replies"] == len(good_values)
        if good_values:
            expected = np.average(good_values, weights=good_weights)
            if instance.app.aggregation.rule == "mean":
                for key, value in arrays.items():
                    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5)
                    assert value.numpy().shape == GLOBAL[key].shape
        else:
            assert arrays is None
    else:  # local, pooled: they use metrics only, and aggregate nothing
        assert arrays is None
        usable = [s for s in plan if isinstance(s, int) or s not in BAD_METRICS | {"error"}]
        assert row["train-replies"] == len(usable)
    assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))


@pytest.mark.parametrize("strategy", strategy_names())
@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plan=st.lists(
        st.one_of(
            st.just("good"),
            st.just("error"),
            st.just("no-metrics"),
            st.just("missing-key"),
            NON_FINITE,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_malformed_evaluate_replies_never_crash_or_count(strategy, plan, tmp_path):
    instance, grid, run_log = make(strategy, tmp_path)
    run_log.start_round(1)
    sent = list(instance.configure_evaluate(1, adapter_record(GLOBAL), ConfigRecord(), grid))
    good = {p.NUM_EXAMPLES: 2, p.ROUGE_L: 0.5, p.EMBED_SIM: 0.25, p.NLL: 2.0}
    replies = []
    for i, step in enumerate(plan):
        to = sent[i % len(sent)]
        if step == "error":
            replies.append(Message(error=Error(code=1, reason=POISON), reply_to=to))
        elif step == "no-metrics":
            replies.append(Message(content=RecordDict(), reply_to=to))
        else:
            values = dict(good)
            if step == "missing-key":
                del values[p.NLL]
            elif step != "good":
                values[p.ROUGE_L] = step
            replies.append(
                Message(content=RecordDict({p.METRICS: MetricRecord(values)}), reply_to=to)
            )
    metrics_out = instance.aggregate_evaluate(1, replies)
    n_good = plan.count("good")
    row = run_log.rows[-1]
    assert row["eval-replies"] == n_good and row["eval-dropped"] == len(plan) - n_good
    if n_good:
        assert metrics_out[p.ROUGE_L] == pytest.approx(0.5)
        assert metrics_out[p.NLL] == pytest.approx(2.0)
