"""Avro wire format: single-object encoding by default, Confluent framing accepted on read.

Single object (Avro spec): ``C3 01`` + 8-byte CRC-64-AVRO fingerprint (little-endian) + body;
the fingerprint selects the writer schema among the versions in ``schemas/history``, so no
registry is needed. Confluent: ``00`` + 4-byte big-endian schema id + body; ids map to our
versions through ``confluent_ids`` until a Schema Registry is wired in.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from streams.errors import DecodeError
from streams.serde.schemas import current, versions

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
_SO_HEADER = 10
_CF_HEADER = 5


class AvroCodec:
    """Encoder and decoder for one schema family; build once, reuse for every message."""

    def __init__(self, name: str, confluent_ids: Mapping[int, int] | None = None) -> None:
        self.name = name
        self.current = current(name)
        self._by_version = {v.version: v for v in versions(name)}
        self._readers: dict[bytes, tuple[Any, Any]] = {}
        for version in self._by_version.values():
            # same schema: no resolution step (fastest); older writer: resolve to current
            reader = None if version is self.current else self.current.plain
            self._readers[version.fingerprint] = (version.plain, reader)
        self._confluent: dict[int, tuple[Any, Any]] = {}
        for schema_id, number in (confluent_ids or {}).items():
            self.register_confluent_id(schema_id, number)
        self._header = SINGLE_OBJECT_MAGIC + self.current.fingerprint
        #: top-level fields of Avro type int (nullable or not): fastavro reads an int as a
        #: long without a range check, so a corrupt varint gives 2**63 - 1 in a 32-bit field
        self._ints = tuple(
            field["name"] for field in self.current.raw["fields"] if _is_int(field["type"])
        )

    def register_confluent_id(self, schema_id: int, version: int) -> None:
        """Map a Schema Registry id to one of our released versions."""
        found = self._by_version.get(version)
        if found is None:
            raise DecodeError(f"{self.name} has no version {version}")
        self._confluent[schema_id] = self._readers[found.fingerprint]

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Single-object encoding of ``record`` with the current schema (no logical types)."""
        out = io.BytesIO()
        out.write(self._header)
        try:
            schemaless_writer(out, self.current.plain, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise DecodeError(f"cannot encode {self.name}: {exc}") from exc
        return out.getvalue()

    def encode_confluent(self, record: Mapping[str, Any], schema_id: int) -> bytes:
        out = io.BytesIO()
        out.write(bytes([CONFLUENT_MAGIC]) + schema_id.to_bytes(4, "big"))
        schemaless_writer(out, self.current.plain, record)
        return out.getvalue()

    def decode(self, data: bytes | None) -> dict[str, Any]:
        """Decode either framing into a dict of the CURRENT schema's shape (raw long times)."""
        if not data:
            raise DecodeError("empty message")
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < _SO_HEADER:
                raise DecodeError("truncated single-object header")
            fp = bytes(data[2:_SO_HEADER])
            schemas = self._readers.get(fp)
            if schemas is None:
                raise DecodeError(f"unknown schema fingerprint {fp.hex()} for {self.name}")
            start = _SO_HEADER
        elif data[0] == CONFLUENT_MAGIC:
            if len(data) < _CF_HEADER:
                raise DecodeError("truncated Confluent header")
            schema_id = int.from_bytes(data[1:_CF_HEADER], "big")
            schemas = self._confluent.get(schema_id)
            if schemas is None:
                raise DecodeError(f"unknown Confluent schema id {schema_id} for {self.name}")
            start = _CF_HEADER
        else:
            raise DecodeError(f"not Avro: unknown framing byte 0x{data[0]:02x}")
        buffer = io.BytesIO(data)
        buffer.seek(start)
        try:
            record = schemaless_reader(buffer, schemas[0], schemas[1])
        except EOFError as exc:
            raise DecodeError(f"truncated {self.name} body") from exc
        except Exception as exc:  # fastavro raises many types on corrupt bytes
            raise DecodeError(f"corrupt {self.name} body: {type(exc).__name__}: {exc}") from exc
        if buffer.tell() != len(data):
            raise DecodeError(f"corrupt {self.name}: {len(data) - buffer.tell()} trailing bytes")
        if not isinstance(record, dict):
            raise DecodeError(f"corrupt {self.name}: not a record")
        for name in self._ints:
            value = record.get(name)
            if value is not None and not _INT_MIN <= value <= _INT_MAX:
                raise DecodeError(f"corrupt {self.name}: {name} {value} is not a 32-bit int")
        return record


_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1


def _is_int(kind: Any) -> bool:
    if isinstance(kind, list):
        return any(_is_int(k) for k in kind)
    if isinstance(kind, dict):
        return kind.get("type") == "int" and "logicalType" not in kind
    return kind == "int"
