"""Avro schemas of the project, parsed once, with their single-object fingerprints.

``schemas/<name>.avsc`` is the current version; ``schemas/history/<name>.vN.avsc`` keeps every
released version (the current one included) so that readers can decode any of them.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from streams.errors import SpendstreamError


def schema_dir() -> Path:
    """``schemas/`` in a source checkout, else the copy packaged inside ``streams``."""
    packaged = Path(__file__).resolve().parent.parent / "_schemas"
    if packaged.is_dir():
        return packaged
    repo = Path(__file__).resolve().parents[2] / "schemas"
    if repo.is_dir():
        return repo
    raise SpendstreamError(f"Avro schemas not found in {packaged} or {repo}")


def strip_logical_types(schema: Any) -> Any:
    """A copy of ``schema`` without logicalType annotations: the fast decode path.

    fastavro converts timestamp-millis to datetime and uuid to UUID objects; that costs about
    as much as the decode itself, and every later stage wants the raw long and string anyway.
    """
    if isinstance(schema, dict):
        plain = {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
        return plain
    if isinstance(schema, list):
        return [strip_logical_types(s) for s in schema]
    return schema


@dataclasses.dataclass(frozen=True)
class SchemaVersion:
    name: str
    version: int
    raw: dict[str, Any]
    parsed: Any  # fastavro parsed schema, logical types kept (the contract)
    plain: Any  # parsed without logical types (hot path)
    fingerprint: bytes  # 8 bytes, CRC-64-AVRO of the parsing canonical form, little-endian


def _parse(name: str, version: int, raw: dict[str, Any]) -> SchemaVersion:
    parsed = fastavro.parse_schema(copy.deepcopy(raw))
    plain = fastavro.parse_schema(strip_logical_types(copy.deepcopy(raw)))
    canonical = to_parsing_canonical_form(parsed)
    # fastavro prints the fingerprint's bytes in little-endian order, as the Avro spec wants
    return SchemaVersion(
        name=name,
        version=version,
        raw=raw,
        parsed=parsed,
        plain=plain,
        fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
    )


@functools.cache
def versions(name: str) -> tuple[SchemaVersion, ...]:
    """Every released version of schema ``name``, oldest first."""
    history = schema_dir() / "history"
    found: list[SchemaVersion] = []
    for path in history.glob(f"{name}.v*.avsc"):
        number = path.name[len(name) + 2 : -len(".avsc")]
        if number.isdigit():
            found.append(_parse(name, int(number), json.loads(path.read_text())))
    if not found:
        raise SpendstreamError(f"no released versions of schema {name!r} in {history}")
    return tuple(sorted(found, key=lambda v: v.version))


@functools.cache
def current(name: str) -> SchemaVersion:
    """The version in ``schemas/<name>.avsc``; it must equal the newest released version."""
    raw = json.loads((schema_dir() / f"{name}.avsc").read_text())
    newest = versions(name)[-1]
    if raw != newest.raw:
        raise SpendstreamError(
            f"schemas/{name}.avsc differs from history/{name}.v{newest.version}.avsc: "
            "release a new version file for every change"
        )
    return newest
