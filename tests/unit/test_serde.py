import contextlib
import copy
import itertools
import json
import random

import fastavro
import pytest

from streams.errors import DecodeError
from streams.generate import generate_events
from streams.serde import AvroCodec, current, versions
from streams.serde.schemas import schema_dir, strip_logical_types

# Pinned: a fingerprint change means the canonical form changed, i.e. a new schema version.
TOKEN_EVENT_V1_FINGERPRINT = "b1f368a21c54e222"


@pytest.fixture(scope="module")
def codec():
    return AvroCodec("token_event", confluent_ids={42: 1})


@pytest.fixture(scope="module")
def sample():
    return list(generate_events(200, seed=7))


def test_fingerprint_is_stable():
    assert versions("token_event")[0].fingerprint.hex() == TOKEN_EVENT_V1_FINGERPRINT
    assert current("token_event").version == max(v.version for v in versions("token_event"))


def test_fingerprint_matches_the_avro_spec_crc64():
    # The Avro spec's CRC-64-AVRO, written out independently of fastavro
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    canonical = fastavro.schema.to_parsing_canonical_form(current("token_event").parsed)
    fp = empty
    for byte in canonical.encode():
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    assert fp.to_bytes(8, "little") == current("token_event").fingerprint


def test_round_trip_single_object(codec, sample):
    for event in sample:
        data = codec.encode(event)
        assert data[:2] == b"\xc3\x01"
        assert data[2:10] == current("token_event").fingerprint
        assert codec.decode(data) == event


def test_confluent_framing_decodes(codec, sample):
    for event in sample[:20]:
        data = codec.encode_confluent(event, 42)
        assert data[0] == 0 and int.from_bytes(data[1:5], "big") == 42
        assert codec.decode(data) == event


def test_every_released_version_round_trips_into_current(codec, sample):
    for version in versions("token_event"):
        from io import BytesIO

        for event in sample[:20]:
            writer_fields = {f["name"] for f in version.raw["fields"]}
            old = {k: v for k, v in event.items() if k in writer_fields}
            out = BytesIO()
            fastavro.schemaless_writer(out, version.plain, old)
            data = b"\xc3\x01" + version.fingerprint + out.getvalue()
            decoded = codec.decode(data)
            assert {k: decoded[k] for k in old} == old


def test_hot_path_yields_raw_longs_and_strings(codec, sample):
    decoded = codec.decode(codec.encode(sample[0]))
    assert isinstance(decoded["event_time"], int)
    assert isinstance(decoded["event_id"], str)


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda b: b"", "empty message"),
        (lambda b: b[:5], "truncated single-object header"),
        (lambda b: b[:2] + b"\x00" * 8 + b[10:], "unknown schema fingerprint"),
        (lambda b: b[:-4], "truncated"),
        (lambda b: b + b"\x00\x01", "trailing bytes"),
        (lambda b: b"\x00\x00\x00\x00\x07" + b[10:], "unknown Confluent schema id 7"),
        (lambda b: b"\x00\x00", "truncated Confluent header"),
        (lambda b: b'{"json": true}', "not Avro"),
        (lambda b: b[:10] + b"\xff" * 30, "corrupt"),
    ],
)
def test_malformed_input_gives_the_typed_error(codec, sample, mangle, reason):
    with pytest.raises(DecodeError) as info:
        codec.decode(mangle(codec.encode(sample[0])))
    assert reason in info.value.reason


def test_random_bytes_never_escape_as_other_errors(codec, sample):
    rng = random.Random(3)
    good = codec.encode(sample[0])
    for _ in range(2000):
        data = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(DecodeError):
            codec.decode(bytes(data))


def _fields(schema):
    return {f["name"]: f for f in schema["fields"]}


def test_evolution_rules_hold_for_every_schema_family():
    """schemas/README.md: only add fields with defaults; never rename, remove or retype."""
    families = {p.name.split(".v")[0] for p in (schema_dir() / "history").glob("*.v*.avsc")}
    assert "token_event" in families
    for family in families:
        chain = versions(family)
        assert [v.version for v in chain] == list(range(1, len(chain) + 1)), family
        assert json.loads((schema_dir() / f"{family}.avsc").read_text()) == chain[-1].raw
        for old, new in itertools.pairwise(chain):
            old_fields, new_fields = _fields(old.raw), _fields(new.raw)
            for name, field in old_fields.items():
                assert name in new_fields, f"{family} v{new.version} removed {name}"
                assert strip_logical_types(new_fields[name]["type"]) == strip_logical_types(
                    field["type"]
                ) or _only_enum_growth(field["type"], new_fields[name]["type"]), (
                    f"{family} v{new.version} retyped {name}"
                )
            for name in new_fields.keys() - old_fields.keys():
                assert "default" in new_fields[name], f"{family}.{name} added without default"
            # and the reader really resolves every old writer
            fastavro.parse_schema(copy.deepcopy(new.raw))


def _only_enum_growth(old, new):
    if isinstance(old, dict) and isinstance(new, dict) and old.get("type") == "enum":
        return new.get("type") == "enum" and old["symbols"] == new["symbols"][: len(old["symbols"])]
    return False
