"""Fault injection, wire compression and robust adapter aggregation: the pure parts."""

import json
import math
import zlib

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedsem_app import protocol as p
from fedsem_app.clients.faults import corrupt_adapter, corrupt_answers, garbage_text
from fedsem_app.config.app import load_app_config
from fedsem_app.config.errors import ConfigError
from fedsem_app.config.sections import AggregationConfig, FaultConfig
from fedsem_app.strategies.aggregation import combine_adapters
from fedsem_app.strategies.validation import check_answers
from fedsem_app.wire import WireError, pack_texts, unpack_texts

# --- faults -------------------------------------------------------------------------


def test_fault_applies_only_to_listed_partitions():
    fault = load_app_config({"fault.mode": "garbage", "fault.clients": "0,2"}).fault
    assert [fault.applies_to(i) for i in range(4)] == [True, False, True, False]
    assert not FaultConfig(mode="none", clients=("0",)).applies_to(0)


@pytest.mark.parametrize(
    "key, value", [("fault.mode", "explode"), ("fault.clients", "a,1"), ("fault.scale", 0.0)]
)
def test_bad_fault_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        load_app_config({key: value})


def test_text_faults():
    rng = np.random.default_rng(0)
    texts, confs = ["a", "b", "c"], [-1.0, -2.0, -3.0]
    bad_texts, bad_confs = corrupt_answers(FaultConfig(mode="malformed"), texts, confs, rng)
    assert bad_texts == ["a", "b"] and all(math.isnan(c) for c in bad_confs)
    adv = FaultConfig(mode="adversarial", text="buy now")
    assert corrupt_answers(adv, texts, confs, rng) == (["buy now"] * 3, [0.0] * 3)
    garbage, same = corrupt_answers(FaultConfig(mode="garbage"), texts, confs, rng)
    assert same == confs and len(garbage) == 3 and len(set(garbage)) == 3
    assert all(set(g) <= set("abcdefghijklmnopqrstuvwxyz ") for g in garbage)
    # Seeded: the same generator state gives the same garbage.
    assert garbage_text(np.random.default_rng(5)) == garbage_text(np.random.default_rng(5))


def test_adapter_faults():
    state = {"a": np.array([1.0, -2.0], dtype=np.float32), "b": np.ones((2, 2), np.float32)}
    scaled = corrupt_adapter(FaultConfig(mode="scaled-adapter", scale=10.0), state, None)
    np.testing.assert_array_equal(scaled["a"], [10.0, -20.0])
    assert scaled["a"].dtype == np.float32
    noisy = corrupt_adapter(
        FaultConfig(mode="random-adapter", scale=3.0), state, np.random.default_rng(0)
    )
    assert {k: (v.shape, v.dtype) for k, v in noisy.items()} == {
        k: (v.shape, v.dtype) for k, v in state.items()
    }
    # std of [1, -2] is 1.5, so the noise has std 4.5; "b" has std 0, so std 3 x 1.
    big = corrupt_adapter(
        FaultConfig(mode="random-adapter", scale=3.0),
        {"a": np.array([1.0, -2.0] * 5000, np.float32)},
        np.random.default_rng(0),
    )
    assert abs(big["a"].std() - 4.5) < 0.1
    assert corrupt_adapter(FaultConfig(mode="garbage"), state, None) is state


# --- wire compression -----------------------------------------------------------------


TEXTS = ["Concrete cures in 28 days.", "Über 30 °C: add retarder.", ""]


def test_plain_and_zlib_round_trip():
    assert pack_texts(p.TEXTS, TEXTS, "none") == {p.TEXTS: TEXTS}
    packed = pack_texts(p.TEXTS, TEXTS, "zlib")
    assert list(packed) == [p.TEXTS + "-zlib"]
    assert json.loads(zlib.decompress(packed[p.TEXTS + "-zlib"])) == TEXTS
    assert unpack_texts(packed, p.TEXTS, 10_000) == TEXTS
    assert unpack_texts({p.TEXTS: TEXTS}, p.TEXTS, 10_000) == TEXTS
    assert unpack_texts({}, p.TEXTS, 10_000) is None


def test_zlib_survives_a_config_record_on_the_wire():
    from tests.fake_grid import wire_copy

    record = ConfigRecord({p.IDS: [1, 2, 3], **pack_texts(p.TEXTS, TEXTS, "zlib")})
    back = wire_copy(RecordDict({"r": record}))["r"]
    assert unpack_texts(back, p.TEXTS, 10_000) == TEXTS


def test_zlib_bomb_and_corrupt_blobs_are_refused():
    bomb = {p.TEXTS + "-zlib": zlib.compress(json.dumps(["x" * 1_000_000]).encode())}
    assert len(bomb[p.TEXTS + "-zlib"]) < 2_000  # tiny on the wire ...
    with pytest.raises(WireError, match="inflates beyond 5000 bytes"):
        unpack_texts(bomb, p.TEXTS, 5_000)  # ... but refused before it inflates
    with pytest.raises(WireError, match="not valid zlib"):
        unpack_texts({p.TEXTS + "-zlib": b"not zlib at all"}, p.TEXTS, 5_000)
    with pytest.raises(WireError, match="must be bytes"):
        unpack_texts({p.TEXTS + "-zlib": "text"}, p.TEXTS, 5_000)
    with pytest.raises(WireError, match="JSON"):
        unpack_texts({p.TEXTS + "-zlib": zlib.compress(b"[oops")}, p.TEXTS, 5_000)


def test_check_answers_reads_compressed_replies_and_rejects_bombs():
    def reply(texts_entry):
        return RecordDict(
            {p.ANSWERS: ConfigRecord({p.IDS: [7, 8], p.CONFIDENCES: [-1.0, -1.0], **texts_entry})}
        )

    answers, reason = check_answers(reply(pack_texts(p.TEXTS, ["a", "b"], "zlib")), [7, 8], 100)
    assert reason is None and answers.texts == ["a", "b"]
    # Two answers of at most 100 chars inflate to at most (6 * 100 + 8) * 2 = 1216 bytes.
    huge = pack_texts(p.TEXTS, ["y" * 1300, "z"], "zlib")
    answers, reason = check_answers(reply(huge), [7, 8], 100)
    assert answers is None and "inflates beyond 1216 bytes" in reason


# --- robust aggregation -----------------------------------------------------------------


def test_median_and_trimmed_mean_by_hand():
    # Five clients, per coordinate; sorted: 0, 1, 2, 6, 100 (and their negatives).
    adapters = [{"w": np.array([v, -v], np.float32)} for v in (6.0, 0.0, 100.0, 2.0, 1.0)]
    median = combine_adapters(adapters, AggregationConfig(rule="median"))
    np.testing.assert_array_equal(median["w"], [2.0, -2.0])
    assert median["w"].dtype == np.float32
    # trim 0.2: int(0.2 * 5) = 1 cut at each end -> mean(1, 2, 6) = 3. Not the median
    # (2, what two cuts per end leave) and not the plain mean (21.8, no cut).
    trimmed = combine_adapters(adapters, AggregationConfig(rule="trimmed-mean", trim_fraction=0.2))
    np.testing.assert_allclose(trimmed["w"], [3.0, -3.0], rtol=1e-6)
    # trim 0.39: int(1.95) = 1 cut (rounded down, not to 2) -> 3 again
    floor = combine_adapters(adapters, AggregationConfig(rule="trimmed-mean", trim_fraction=0.39))
    np.testing.assert_allclose(floor["w"], [3.0, -3.0], rtol=1e-6)
    # trim 0.1: int(0.5) = 0 cut -> the plain mean (0 + 1 + 2 + 6 + 100) / 5 = 21.8
    plain = combine_adapters(adapters, AggregationConfig(rule="trimmed-mean", trim_fraction=0.1))
    np.testing.assert_allclose(plain["w"], [21.8, -21.8], rtol=1e-6)


def test_bad_aggregation_settings_name_the_key():
    with pytest.raises(ConfigError, match="aggregation.rule"):
        load_app_config({"aggregation.rule": "krum"})
    with pytest.raises(ConfigError, match="aggregation.trim-fraction"):
        load_app_config({"aggregation.trim-fraction": 0.5})
