"""Atomic checkpoints of a partition's state over a key-value changelog (a faust Table).

The whole state of one partition is one msgpack blob, split into pages of at most PAGE_BYTES
and written under one of two slots (double buffering) with an epoch number. A crash while a
checkpoint is half written leaves the other slot complete, so a restore always yields the
state after exactly the events up to that checkpoint's offset, never a mix: replaying from
there counts every event once. Pure: the caller moves the (key, value) pairs to the Table.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgspec

PAGE_BYTES: Final = 256 * 1024
_HEADER = struct.Struct(">QII")  # epoch, page index, page count
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def page_key(prefix: str, slot: int, index: int) -> str:
    return f"{prefix}|ck|{slot}|{index}"


def encode_pages(prefix: str, epoch: int, state: Any) -> list[tuple[str, bytes]]:
    """(key, value) pairs writing ``state`` as checkpoint ``epoch`` (slot = epoch % 2)."""
    blob = _encoder.encode(state)
    chunks = [blob[i : i + PAGE_BYTES] for i in range(0, len(blob), PAGE_BYTES)] or [b""]
    slot = epoch % 2
    return [
        (page_key(prefix, slot, i), _HEADER.pack(epoch, i, len(chunks)) + chunk)
        for i, chunk in enumerate(chunks)
    ]


def decode_latest(prefix: str, items: Mapping[str, bytes]) -> tuple[int, Any] | None:
    """(epoch, state) of the newest complete checkpoint among ``items`` (key -> value), or None."""
    best: tuple[int, Any] | None = None
    for slot in (0, 1):
        first = items.get(page_key(prefix, slot, 0))
        if not first or len(first) < _HEADER.size:
            continue
        epoch, _, count = _HEADER.unpack_from(first)
        parts: list[bytes] = []
        for index in range(count):
            value = items.get(page_key(prefix, slot, index))
            if not value or len(value) < _HEADER.size:
                break
            page_epoch, page_index, page_count = _HEADER.unpack_from(value)
            if (page_epoch, page_index, page_count) != (epoch, index, count):
                break
            parts.append(value[_HEADER.size :])
        else:
            if best is None or epoch > best[0]:
                best = (epoch, _decoder.decode(b"".join(parts)))
    return best


def keys_with_prefix(items: Iterable[str], prefix: str) -> list[str]:
    start = prefix + "|"
    return [k for k in items if k.startswith(start)]
