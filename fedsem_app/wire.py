"""Text lists on the wire: plain ``list[str]`` or one zlib-compressed blob.

Shared: clients encode answers and the server pseudo-labels and prompts with it.

With ``fedsem.wire-compression = "zlib"`` the answers a client sends and the
pseudo-labels and prompts the server sends travel as one compressed UTF-8 JSON
array under ``<field>-zlib`` (bytes) instead of a ``list[str]`` under ``<field>``.
The codec is lossless, so the consensus is the same; compressing a whole
round's texts together is what pays off, because short answers to related
prompts share most of their words. zlib is in the standard library; zstd would
need one more dependency for a payload of a few kilobytes.

A record is self-describing: the reader takes whichever field is present, so a
client and a server with different settings still understand each other.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fedsem_app.registry import Registry

ZLIB_SUFFIX = "-zlib"
ZLIB_LEVEL = 9


class WireError(ValueError):
    """A compressed text field that cannot be read (corrupt, too large, wrong type)."""


# fedsem.wire-compression -> fn(field, texts) -> the record entries that carry them.
CODECS: Registry[Callable[[str, Sequence[str]], dict[str, Any]]] = Registry(
    "wire codec", key="fedsem.wire-compression"
)


@CODECS.register("none")
def _plain(field: str, texts: Sequence[str]) -> dict[str, Any]:
    return {field: list(texts)}


@CODECS.register("zlib")
def _zlib(field: str, texts: Sequence[str]) -> dict[str, Any]:
    blob = json.dumps(list(texts), ensure_ascii=False).encode()
    return {field + ZLIB_SUFFIX: zlib.compress(blob, ZLIB_LEVEL)}


def pack_texts(field: str, texts: Sequence[str], codec: str) -> dict[str, Any]:
    """Record entries that carry ``texts`` under ``field`` with ``codec`` (see :data:`CODECS`)."""
    return CODECS[codec](field, texts)


def unpack_texts(record: Mapping[str, Any], field: str, max_bytes: int) -> Any:
    """The texts of ``field`` in ``record``, decompressing if they came compressed.

    Parameters
    ----------
    record
        A ConfigRecord (or any mapping).
    field
        The plain field name, e.g. ``protocol.TEXTS``.
    max_bytes
        Most bytes the decompressed JSON may take; a blob that inflates beyond
        it is refused before it can exhaust memory.

    Returns
    -------
    Any
        What the record holds under ``field`` (``None`` if neither form is there);
        the caller checks that it is a list of strings.

    Raises
    ------
    WireError
        If the compressed blob is not bytes, not zlib, too large or not a JSON list.
    """
    packed = record.get(field + ZLIB_SUFFIX)
    if packed is None:
        return record.get(field)
    if not isinstance(packed, bytes):
        raise WireError(f"'{field}{ZLIB_SUFFIX}' must be bytes")
    inflater = zlib.decompressobj()
    try:
        blob = inflater.decompress(packed, max_bytes)
    except zlib.error as err:
        raise WireError(f"'{field}{ZLIB_SUFFIX}' is not valid zlib data: {err}") from err
    if inflater.unconsumed_tail or not inflater.eof:
        raise WireError(f"'{field}{ZLIB_SUFFIX}' inflates beyond {max_bytes} bytes or is truncated")
    try:
        return json.loads(blob.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WireError(f"'{field}{ZLIB_SUFFIX}' is not a JSON list of texts: {err}") from err
