"""Adapters quantized on the wire: symmetric int8 / int4 codes with float32 scales.

Shared: both sides encode and decode adapters with it.

The compressed-adapter baseline (``aggregation.quantize``) sends every LoRA
tensor of ``fedavg-lora`` / ``fedit`` / ``fedprox-lora`` as integer codes plus
scales, in both directions, as NVFlare's quantization filters do; the server
decodes the replies before it checks and averages them, and keeps its global
adapter in float32.

Codes are symmetric absmax: with ``qmax = 2**(bits-1) - 1`` (127 for int8, 7 for
int4), a group of values ``x`` (a whole tensor, or one row of it) gets the scale
``s = max|x| / qmax`` and the codes ``q = round(x / s)`` in ``[-qmax, qmax]``, so
decoding ``q * s`` is off by at most ``s / 2`` per element. A group of zeros
(LoRA's B starts at zero) gets ``s = 0`` and decodes to zeros exactly.

One quantized tensor travels as one Flower :class:`~flwr.app.Array` whose
``shape`` and ``dtype`` are those of the decoded tensor, whose ``stype`` names
the code (e.g. ``fedsem.int4.row``) and whose ``data`` holds the float32 scales
(little-endian) followed by the codes: one byte per int8 code, two int4 codes
per byte (low nibble first, offset by 8). The record is self-describing, so the
reader needs no layout, and a plain (numpy) Array passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

STYPE_PREFIX = "fedsem."
BITS = {"int8": 8, "int4": 4}  # aggregation.quantize -> bits per code ("none": float32)
SCALE_MODES = ("tensor", "row")  # aggregation.quantize-scales


class QuantizeError(ValueError):
    """A quantized Array that cannot be decoded (unknown code, wrong length)."""


def qmax(bits: int) -> int:
    """Largest code magnitude of a symmetric ``bits``-bit code (127 for 8, 7 for 4)."""
    return 2 ** (bits - 1) - 1


def _groups(x: np.ndarray, scales: str) -> np.ndarray:
    # (groups, values per group): one row per leading index, or the whole tensor.
    if scales == "row" and x.ndim >= 2:
        return x.reshape(x.shape[0], -1)
    return x.reshape(1, -1)


def quantize(x: np.ndarray, bits: int, scales: str) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric absmax codes of ``x`` and their float32 scales.

    Parameters
    ----------
    x
        A float tensor.
    bits
        8 or 4.
    scales
        ``"tensor"``: one scale for all of ``x``; ``"row"``: one per row (first
        axis) of a tensor with two or more axes (1-D tensors get one scale).

    Returns
    -------
    tuple
        ``codes``: int8 array of ``x``'s shape with values in ``[-qmax, qmax]``;
        ``scale``: float32 array, one per group.
    """
    groups = _groups(np.asarray(x, dtype=np.float32), scales)
    scale = (np.abs(groups).max(axis=1) / qmax(bits)).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)[:, None]  # all-zero groups: codes 0, scale 0
    codes = np.clip(np.rint(groups / safe), -qmax(bits), qmax(bits)).astype(np.int8)
    return codes.reshape(np.shape(x)), scale


def dequantize(codes: np.ndarray, scale: np.ndarray, scales: str) -> np.ndarray:
    """Float32 values ``codes * scale`` (the inverse of :func:`quantize` up to rounding)."""
    groups = _groups(codes.astype(np.float32), scales)
    return (groups * scale[:, None]).reshape(codes.shape)


def pack_int4(codes: np.ndarray) -> bytes:
    """Two int4 codes per byte, low nibble first, each offset by 8 into 1..15."""
    flat = (codes.reshape(-1).astype(np.int16) + 8).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(8))  # pad with a zero code
    return (flat[0::2] | (flat[1::2] << 4)).tobytes()


def unpack_int4(data: bytes, count: int) -> np.ndarray:
    """The first ``count`` int8 codes of :func:`pack_int4`'s bytes."""
    packed = np.frombuffer(data, dtype=np.uint8)
    pairs = np.stack([packed & 0x0F, packed >> 4], axis=1).reshape(-1)
    return (pairs[:count].astype(np.int16) - 8).astype(np.int8)


def payload_bytes(shape: tuple[int, ...], bits: int, scales: str) -> int:
    """Bytes of one quantized tensor's data: 4 per scale plus the packed codes."""
    count = int(np.prod(shape))
    groups = shape[0] if scales == "row" and len(shape) >= 2 else 1
    codes = count if bits == 8 else (count + 1) // 2
    return 4 * groups + codes


def encode_array(x: np.ndarray, code: str, scales: str) -> Array:
    """One tensor as a self-describing quantized Array (see the module docstring)."""
    if code not in BITS or scales not in SCALE_MODES:
        raise QuantizeError(
            f"cannot quantize with {code!r} / {scales!r}; allowed: {', '.join(BITS)} "
            f"with scales {', '.join(SCALE_MODES)}"
        )
    bits = BITS[code]
    codes, scale = quantize(x, bits, scales)
    packed = codes.tobytes() if bits == 8 else pack_int4(codes)
    return Array(
        dtype=str(np.dtype(np.float32)),
        shape=tuple(int(n) for n in np.shape(x)),
        stype=f"{STYPE_PREFIX}{code}.{scales}",
        data=scale.astype("<f4").tobytes() + packed,
    )


def decode_array(array: Array) -> np.ndarray:
    """The float32 tensor of a quantized Array, or the Array's own numpy value if plain.

    Raises
    ------
    QuantizeError
        For an unknown ``fedsem.*`` code or data of the wrong length.
    """
    if not array.stype.startswith(STYPE_PREFIX):
        return array.numpy()
    code, _, scales = array.stype[len(STYPE_PREFIX) :].partition(".")
    if code not in BITS or scales not in SCALE_MODES:
        raise QuantizeError(f"unknown quantized array type {array.stype!r}")
    shape = tuple(int(n) for n in array.shape)
    bits = BITS[code]
    expected = payload_bytes(shape, bits, scales)
    if len(array.data) != expected:
        raise QuantizeError(
            f"{array.stype} array of shape {shape} holds {len(array.data)} bytes, "
            f"expected {expected}"
        )
    groups = shape[0] if scales == "row" and len(shape) >= 2 else 1
    scale = np.frombuffer(array.data[: 4 * groups], dtype="<f4").astype(np.float32)
    body = array.data[4 * groups :]
    count = int(np.prod(shape))
    codes = np.frombuffer(body, dtype=np.int8) if bits == 8 else unpack_int4(body, count)
    return dequantize(codes.reshape(shape), scale, scales)


def adapter_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An adapter (tensor name -> numpy array) as a plain ArrayRecord, dtypes kept.

    The one conversion every side uses (replies, the global adapter, checkpoints);
    :func:`decode_record` is its inverse.
    """
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def encode_record(arrays: Mapping[str, np.ndarray], code: str, scales: str) -> ArrayRecord:
    """An adapter as an ArrayRecord: quantized with ``code``, or float32 for ``"none"``."""
    if code == "none":
        return adapter_record(arrays)
    return ArrayRecord({k: encode_array(v, code, scales) for k, v in arrays.items()})


def decode_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Every tensor of a record as float numpy arrays, decoding quantized ones."""
    return {k: decode_array(v) for k, v in record.items()}


def is_quantized(record: ArrayRecord) -> bool:
    """Whether any Array of the record is quantized."""
    return any(v.stype.startswith(STYPE_PREFIX) for v in record.values())
