"""Adapters quantized on the wire: codes, scales, error bound, bytes, and the strategy path."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedsem_app import protocol as p
from fedsem_app.config.app import load_app_config
from fedsem_app.config.errors import ConfigError
from fedsem_app.data.split import load_split
from fedsem_app.quantize import (
    QuantizeError,
    decode_array,
    decode_record,
    encode_array,
    encode_record,
    payload_bytes,
    quantize,
)
from fedsem_app.run.meter import MeteredGrid, record_bytes
from fedsem_app.run.results import RunLog, make_run_folder
from fedsem_app.strategies import get_strategy_class
from tests.fake_grid import FakeGrid


def test_int8_row_codes_worked_out_by_hand():
    x = np.array([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0]], np.float32)
    codes, scale = quantize(x, 8, "row")
    # Row 0: scale 1/127; -0.5 * 127 = -63.5 rounds half to even: -64; 0.25 * 127 = 31.75: 32.
    # Row 1 is all zero: scale 0, codes 0 (LoRA's B starts like this).
    np.testing.assert_allclose(scale, [1 / 127, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(codes, [[127, -64, 32], [0, 0, 0]])
    decoded = decode_array(encode_array(x, "int8", "row"))
    np.testing.assert_allclose(decoded, [[1.0, -64 / 127, 32 / 127], [0, 0, 0]], rtol=1e-6)
    # The worst element, -0.5, is off by 0.5/127: exactly scale / 2.
    assert np.abs(decoded - x).max() == pytest.approx(0.5 / 127, rel=1e-5)


def test_int4_tensor_codes_and_packed_bytes_worked_out_by_hand():
    x = np.array([1.0, -0.6, 0.25, 0.7], np.float32)
    codes, scale = quantize(x, 4, "tensor")
    # qmax 7, scale 1/7: 7, rint(-4.2) = -4, rint(1.75) = 2, rint(4.9) = 5.
    np.testing.assert_array_equal(codes, [7, -4, 2, 5])
    array = encode_array(x, "int4", "tensor")
    # 4 bytes of scale, then codes + 8 = 15, 4, 10, 13 packed low nibble first:
    # 15 | 4 << 4 = 0x4F, 10 | 13 << 4 = 0xDA.
    assert array.data[4:] == bytes([0x4F, 0xDA])
    assert np.frombuffer(array.data[:4], "<f4")[0] == pytest.approx(1 / 7)
    np.testing.assert_allclose(decode_array(array), [1, -4 / 7, 2 / 7, 5 / 7], rtol=1e-6)
    assert array.stype == "fedsem.int4.tensor"
    assert tuple(array.shape) == (4,) and array.dtype == "float32"


@pytest.mark.parametrize("code", ["int8", "int4"])
@pytest.mark.parametrize("scales", ["tensor", "row"])
def test_round_trip_error_is_at_most_half_a_scale(code, scales):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((16, 33)) * rng.uniform(0.01, 3, (16, 1))).astype(np.float32)
    _, scale = quantize(x, {"int8": 8, "int4": 4}[code], scales)
    error = np.abs(decode_array(encode_array(x, code, scales)) - x)
    bound = np.broadcast_to(scale[:, None] if scales == "row" else scale, (16, 1))
    assert (error <= bound / 2 * (1 + 1e-6)).all()
    assert error.max() > 0  # not trivially exact


@pytest.mark.parametrize(
    ("shape", "code", "scales", "expected"),
    [
        # 16 x 64 = 1024 values. int8: one byte per code; int4: two codes per byte.
        ((16, 64), "int8", "row", 16 * 4 + 1024),
        ((16, 64), "int8", "tensor", 4 + 1024),
        ((16, 64), "int4", "row", 16 * 4 + 512),
        ((16, 64), "int4", "tensor", 4 + 512),
        ((3, 5), "int4", "row", 3 * 4 + 8),  # 15 codes -> 8 bytes (one pad nibble)
        ((7,), "int8", "row", 4 + 7),  # a 1-D tensor has one scale
    ],
)
def test_payload_bytes_are_exact(shape, code, scales, expected):
    array = encode_array(np.ones(shape, np.float32), code, scales)
    assert len(array.data) == expected == payload_bytes(shape, {"int8": 8, "int4": 4}[code], scales)


def test_the_byte_meter_counts_the_quantized_payload():
    x = {"lora_A": np.ones((8, 128), np.float32), "lora_B": np.zeros((128, 8), np.float32)}
    float_bytes = record_bytes(RecordDict({p.ADAPTER: encode_record(x, "none", "row")}))
    int8_bytes = record_bytes(RecordDict({p.ADAPTER: encode_record(x, "int8", "row")}))
    # 2048 float32 values are 8192 bytes of data; int8 row: 8 x 4 + 1024 + 128 x 4 + 1024.
    assert float_bytes > 8192
    payload = 8 * 4 + 1024 + 128 * 4 + 1024
    assert payload < int8_bytes < payload + 200  # names, shapes and framing only


def test_bad_quantized_arrays_are_refused():
    good = encode_array(np.ones((2, 3), np.float32), "int8", "row")
    short = Array(dtype=good.dtype, shape=tuple(good.shape), stype=good.stype, data=good.data[:-1])
    with pytest.raises(QuantizeError, match="expected 14"):
        decode_array(short)
    odd = Array(dtype="float32", shape=(1,), stype="fedsem.int3.row", data=b"\0" * 5)
    with pytest.raises(QuantizeError, match="unknown"):
        decode_array(odd)
    with pytest.raises(ConfigError, match="'aggregation.quantize'"):
        load_app_config({"aggregation.quantize": "int3"})
    with pytest.raises(ConfigError, match="'aggregation.quantize-scales'"):
        load_app_config({"aggregation.quantize-scales": "column"})


def quantizing_client(delta):
    """Load the global adapter as a client does, add delta[partition], reply as asked."""
    inbox = []

    def app(msg: Message, ctx: Context) -> Message:
        inbox.append((msg.metadata.message_type, msg.content))
        if msg.metadata.message_type == p.EVALUATE:
            metrics = {p.NUM_EXAMPLES: 2, p.ROUGE_L: 0.25, p.EMBED_SIM: 0.5, p.NLL: 2.0}
            return Message(content=RecordDict({p.METRICS: MetricRecord(metrics)}), reply_to=msg)
        config = msg.content[p.TRAIN_CONFIG]
        state = decode_record(msg.content[p.ADAPTER])
        trained = {k: v + delta[ctx.node_config["partition-id"]] for k, v in state.items()}
        reply = RecordDict(
            {
                p.ADAPTER: encode_record(trained, config[p.QUANTIZE], config[p.QUANTIZE_SCALES]),
                p.METRICS: MetricRecord({p.NUM_EXAMPLES: 1, p.TRAIN_LOSS: 1.0}),
                p.INFO: ConfigRecord({p.MODEL_NAME: "scripted"}),
            }
        )
        return Message(content=reply, reply_to=msg)

    return app, inbox


def run_fedavg(tmp_path, quantize):
    cfg = load_app_config(
        {
            "strategy": "fedavg-lora",
            "model.names": "tiny-llama",
            "num-server-rounds": 1,
            "eval.num-prompts": 2,
            "aggregation.quantize": quantize,
        }
    )
    app, inbox = quantizing_client({0: 1.0, 1: 3.0})
    grid = MeteredGrid(FakeGrid(app, 2, cfg.to_flat()))
    run_log = RunLog(make_run_folder(tmp_path, "t", quantize), {}, 1, grid.snapshot)
    strategy = get_strategy_class("fedavg-lora")(cfg, load_split(cfg.data, cfg.seed), run_log)
    initial = ArrayRecord({"w": Array(np.linspace(-1, 1, 64, dtype=np.float32).reshape(4, 16))})
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=1)
    return result, run_log.rows[1], inbox


def test_fedavg_lora_quantized_both_ways_then_decoded_before_averaging(tmp_path):
    result, row, inbox = run_fedavg(tmp_path, "int8")
    plain, plain_row, _ = run_fedavg(tmp_path, "none")
    # Every adapter the clients received was quantized, train and evaluate alike.
    assert all(c[p.ADAPTER]["w"].stype == "fedsem.int8.row" for _, c in inbox)
    # Mean of (w + 1) and (w + 3) is w + 2; w, then each reply, lost at most half a
    # scale per element (row scales: max|row| / 127 <= 4 / 127 after adding 3).
    w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(4, 16)
    np.testing.assert_allclose(plain.arrays["w"].numpy(), w + 2, atol=1e-6)
    averaged = result.arrays["w"].numpy()
    assert averaged.dtype == np.float32
    assert np.abs(averaged - (w + 2)).max() <= 1 / 127 / 2 + 4 / 127 / 2
    assert row["dropped-replies"] == 0
    # The meter saw int8 payloads: 4 x 4 + 64 bytes against 64 x 4 bytes of float32.
    assert row["bytes-up-train"] < plain_row["bytes-up-train"] - 2 * (256 - 80)
