"""Decode a whole fetched batch of token events into columns, natively, in one call.

fastavro builds a dict per message (~8 us for the 22-field event on one core here); the hot
paths want columns. The message bodies (single-object framing removed) are concatenated into
one in-memory Avro object-container block and read by polars' native Avro reader, ~1.4 us per
event. Two facts make that exact:

- polars' reader does not read Avro maps, but a ``map<string>`` is encoded exactly like an
  ``array<record{key: string, value: string}>`` (Avro spec, binary encoding), so the block's
  header declares ``labels`` that way and gets a list of key/value structs back.
- Concatenated bodies carry no boundaries, so a body that is too long or too short shifts its
  neighbours. ``decode`` therefore recomputes every row's encoded size from the decoded values
  (canonical encoding, as fastavro and the Java client write it) and accepts the batch only when
  each one equals its message's body length. Anything else (corrupt bytes, trailing bytes, an
  unusual but valid encoding such as a map in several blocks) returns None and the caller
  decodes that batch message by message with fastavro, which dead-letters the bad ones.

polars' ``read_avro`` is marked unstable: polars is pinned exactly and
tests/unit/test_serde_columnar.py fails loudly if an upgrade changes what this relies on.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from typing import Any, Final

import fastavro
import numpy as np
import polars as pl
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from streams.serde.codec import SINGLE_OBJECT_MAGIC
from streams.serde.schemas import SchemaVersion, strip_logical_types

_SYNC: Final = b"spendstream-sync"  # any 16 bytes; one block, so it is never searched for
_LABEL_ENTRY: Final = {
    "type": "array",
    "items": {
        "type": "record",
        "name": "LabelEntry",
        "fields": [{"name": "key", "type": "string"}, {"name": "value", "type": "string"}],
    },
}


def _zigzag_varint(value: int) -> bytes:
    """Avro's long encoding (for the block header's count and size)."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _block_schema(version: SchemaVersion) -> dict[str, Any]:
    """The writer schema as polars can read it: no logical types, defaults or docs; maps of
    strings declared as their binary twin, an array of key/value records."""
    schema = strip_logical_types(copy.deepcopy(version.raw))

    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("type") == "map":
                if node.get("values") != "string":
                    raise ValueError("only maps of strings have a columnar twin")
                return copy.deepcopy(_LABEL_ENTRY)
            return {k: clean(v) for k, v in node.items() if k not in ("default", "doc")}
        if isinstance(node, list):
            return [clean(item) for item in node]
        return node

    cleaned: dict[str, Any] = clean(schema)
    return cleaned


#: a zig-zag varint takes one more byte at each of these magnitudes (|v|, or ~v if negative)
_VARINT_STEPS: Final = np.array([1 << (7 * k - 1) for k in range(1, 10)], dtype=np.int64)


def _varint_size(values: np.ndarray) -> np.ndarray:
    """Bytes of the zig-zag varint of each int64 value."""
    magnitude = values ^ (values >> 63)
    return 1 + np.searchsorted(_VARINT_STEPS, magnitude, side="right")


def _string_size(lengths: np.ndarray) -> np.ndarray:
    return lengths + _varint_size(lengths)


class _Layout:
    """How each field of the (flat) record schema is encoded, for ``_sizes``."""

    def __init__(self, fields: Sequence[dict[str, Any]]) -> None:
        self.strings: list[int] = []  # field positions whose value is a string
        self.longs: list[int] = []  # ... a long or int
        self.fixed: list[int] = []  # ... an enum (one byte while it has <= 64 symbols)
        self.unions: list[int] = []  # ... a [null, X] union (X one of the above)
        self.labels: int | None = None  # the map of strings (read as key/value entries)
        self.names = [f["name"] for f in fields]
        for index, field in enumerate(fields):
            kind = field["type"]
            if isinstance(kind, list):
                inner = [k for k in kind if k != "null"]
                if len(kind) != 2 or kind[0] != "null" or len(inner) != 1:
                    raise ValueError(f"{field['name']}: only [null, X] unions are supported")
                self.unions.append(index)
                kind = inner[0]
            if isinstance(kind, dict) and kind.get("type") == "enum":
                if len(kind["symbols"]) > 64:
                    raise ValueError(f"{field['name']}: enums over 64 symbols are not supported")
                self.fixed.append(index)
            elif isinstance(kind, dict) and kind.get("type") == "array":
                if index in self.unions:
                    raise ValueError(f"{field['name']}: a nullable map is not supported")
                self.labels = index
            elif kind == "string" or (isinstance(kind, dict) and kind.get("type") == "string"):
                self.strings.append(index)
            elif kind in ("long", "int") or (
                isinstance(kind, dict) and kind.get("type") in ("long", "int")
            ):
                self.longs.append(index)
            else:
                raise ValueError(f"{field['name']}: type {kind!r} is not supported")
        # one select gives everything but the map: string lengths, long values, union presence
        exprs: list[pl.Expr] = []
        self._column_of: dict[int, int] = {}  # field -> its column in that select
        self._present_of: dict[int, int] = {}  # union field -> its presence column
        for index in (*self.strings, *self.longs):
            name = self.names[index]
            value = pl.col(name)
            value = value.str.len_bytes() if index in self.strings else value
            self._column_of[index] = len(exprs)
            exprs.append(value.cast(pl.Int64).fill_null(0).alias(f"__v{index}"))
        for index in self.unions:
            self._present_of[index] = len(exprs)
            exprs.append(
                pl.col(self.names[index]).is_not_null().cast(pl.Int64).alias(f"__p{index}")
            )
        self._exprs = exprs

    def end_positions(
        self, frame: pl.DataFrame, starts: np.ndarray, data: bytes
    ) -> np.ndarray | None:
        """Walk the fields in order from each row's start, as a canonical encoder would write
        them: where each row ends, or None if a union's branch byte differs from its value's
        (polars reads any non-zero branch index as the second)."""
        raw = np.frombuffer(data, dtype=np.uint8)
        values = frame.select(self._exprs).to_numpy(order="fortran")
        position = starts.copy()
        for index in range(len(self.names)):
            present: np.ndarray | None = None
            if index in self._present_of:
                present = values[:, self._present_of[index]]
                if int(position.max()) >= len(raw):  # an earlier row read past its body
                    return None
                if not np.array_equal(raw[position], present * 2):
                    return None
                position += 1
            size: np.ndarray | int
            if index in self.strings:
                size = _string_size(values[:, self._column_of[index]])
            elif index in self.longs:
                size = _varint_size(values[:, self._column_of[index]])
            elif index in self.fixed:
                size = 1
            else:
                size = self._map_sizes(frame.get_column(self.names[index]))
            position += size if present is None else present * size
        return position

    @staticmethod
    def _map_sizes(column: pl.Series) -> np.ndarray:
        """One block (count, then key and value strings), then the 0 that ends the map."""
        lists = column.to_arrow()
        if isinstance(lists, pa.ChunkedArray):
            lists = lists.combine_chunks()
        offsets = lists.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        entries = lists.values.flatten()  # the struct's key and value arrays, whole
        entry_bytes = np.zeros(len(lists.values) + 1, dtype=np.int64)
        for strings in entries:
            lengths = pc.binary_length(strings).to_numpy(zero_copy_only=False).astype(np.int64)
            entry_bytes[1:] += _string_size(lengths)
        cumulative = np.cumsum(entry_bytes)
        counts = np.diff(offsets)
        per_row = cumulative[offsets[1:]] - cumulative[offsets[:-1]]
        return np.where(counts == 0, 1, _varint_size(counts) + per_row + 1)


class ColumnarDecoder:
    """Batch decoder for one writer schema version; build once, reuse for every batch."""

    def __init__(self, version: SchemaVersion) -> None:
        schema = _block_schema(version)
        out = io.BytesIO()
        fastavro.writer(out, fastavro.parse_schema(schema), [], sync_marker=_SYNC)
        self._header = out.getvalue()
        self._layout = _Layout(schema["fields"])
        self.columns = tuple(self._layout.names)
        #: what every message of this version starts with (single-object encoding): the part
        #: the caller strips before handing the bodies to ``decode``
        self.message_header = SINGLE_OBJECT_MAGIC + version.fingerprint

    def decode(self, bodies: Sequence[bytes]) -> pl.DataFrame | None:
        """One row per body, in order; None unless every body decodes to exactly one record."""
        if not bodies:
            return None
        data = b"".join(bodies)
        block = b"".join(
            (self._header, _zigzag_varint(len(bodies)), _zigzag_varint(len(data)), data, _SYNC)
        )
        try:
            frame = pl.read_avro(io.BytesIO(block))
        except Exception:
            return None
        except BaseException as exc:
            # a Rust panic on some corrupt bytes (pyo3's PanicException is a BaseException);
            # Rust's hook has printed "thread ... panicked" to stderr already
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            return None
        if frame.height != len(bodies) or not self._exact(frame, bodies, data):
            return None
        return frame

    def _exact(self, frame: pl.DataFrame, bodies: Sequence[bytes], data: bytes) -> bool:
        """Each row re-encodes (canonically) to exactly its body: the same length, and the
        same branch byte in every union."""
        lengths = np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies))
        ends = np.cumsum(lengths)
        found = self._layout.end_positions(frame, ends - lengths, data)
        return found is not None and bool(np.array_equal(found, ends))
