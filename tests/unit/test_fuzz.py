"""Fuzzing of every parser of outside input: no crash, no hang, every reject ONE typed error.

Targets (each a hypothesis test; ``python -m tests.fuzz`` / ``make fuzz`` drives the same
functions through ``fuzz_one_input`` for a million inputs each, see tests/faults/README.md):

- the Avro decoder, single-object framing and Confluent framing (``AvroCodec.decode``):
  garbage, valid events, mutated valid events (flips, cuts, inserts, duplicated ranges), a
  valid body behind another fingerprint or schema id; accepted bytes decode to a record of the
  current schema that re-encodes to the same record, an untouched encoding to its event;
- the columnar batch decoder against the record decoder: a batch it accepts is accepted by
  the record path message by message with the very same values; canonical encodings (what
  every client writes) are always accepted; it never raises;
- the event validator (``problems``/``validate``/``surely_valid``) on anything a caller may
  pass: a list of strings or one InvalidEventError, and ``surely_valid`` never vouches for an
  event ``problems`` rejects;
- the budget YAML loader: a list of budgets or one BudgetError, whatever the text;
- the report range parser: a UTC range or one RangeError, whatever the words, zone and bounds.

The suite runs a few hundred inputs per target (``FUZZ_EXAMPLES``); the deadline catches a
hang of one input, pytest-timeout a hang of the whole test.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import events
from streams.budgets.model import Budget, BudgetError, parse_budgets_yaml
from streams.errors import DecodeError, InvalidEventError, SettingsError, SpendstreamError
from streams.query.ranges import RangeError, TimeRange, resolve
from streams.serde import AvroCodec
from streams.serde.codec import SINGLE_OBJECT_MAGIC
from streams.serde.columnar import ColumnarDecoder
from streams.settings import Settings

#: inputs per target in the default suite (the long run drives the same tests much longer)
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "250"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=dt.timedelta(seconds=5),  # one input: generous on a loaded 2-core machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,  # the long run prints the failing input; nothing is written in the repo
)

CONFLUENT_ID = 7
CODEC = AvroCodec("token_event", {CONFLUENT_ID: 1})
HEADER = SINGLE_OBJECT_MAGIC + CODEC.current.fingerprint
COLUMNAR = ColumnarDecoder(CODEC.current)
FIELDS = [f["name"] for f in CODEC.current.raw["fields"]]
NOW = 1_790_000_000_000  # a fixed clock (2026-09-21): verdicts do not depend on the day
INT64 = (1 << 63) - 1
INT32 = (1 << 31) - 1

# ------------------------------------------------------------------------------ strategies

names = st.one_of(
    st.sampled_from(["acme", "platform", "u1", "claude-opus-4", "openai", "", " ", "\t\n"]),
    st.text(max_size=12),
)
optional_names = st.none() | names
uuid_spellings = st.uuids().flatmap(
    lambda u: st.sampled_from(
        [
            str(u),
            str(u).upper(),
            u.hex,
            "{" + str(u) + "}",
            "urn:uuid:" + str(u),
            str(u).replace("-", "")[:8] + "-" + str(u).replace("-", "")[8:],  # misplaced dash
            str(u)[:-1],
            " " + str(u),
        ]
    )
)
event_ids = st.one_of(uuid_spellings, st.text(max_size=40))
longs = st.one_of(
    st.integers(-(1 << 63), INT64),
    st.integers(-3, 3),
    st.sampled_from([events.MAX_TOKENS, events.MAX_TOKENS + 1, INT64, -(1 << 63)]),
)
token_counts = st.one_of(st.integers(0, 10_000), longs)
times = st.one_of(
    st.integers(events.MIN_EVENT_TIME_MS - 2, NOW + events.MAX_FUTURE_MS + 2),
    st.sampled_from([events.MIN_EVENT_TIME_MS, NOW + events.MAX_FUTURE_MS]),
    longs,
)
costs = st.one_of(
    st.none(),
    st.integers(0, 10**12),
    st.sampled_from([events.MAX_COST_NANOS, events.MAX_COST_NANOS + 1, -1]),
    longs,
)

#: events as the Avro schema types them (encodable), values anywhere in each type's range
avro_events = st.fixed_dictionaries(
    {
        "event_id": event_ids,
        "event_time": times,
        "org_id": names,
        "team_id": names,
        "user_id": names,
        "project_id": optional_names,
        "api_key_id": optional_names,
        "session_id": optional_names,
        "turn": st.none() | st.integers(-(1 << 31), INT32) | st.integers(-1, 3),
        "client": names,
        "task_type": st.sampled_from(events.TASK_TYPES),
        "provider": names,
        "model": names,
        "input_tokens": token_counts,
        "cache_read_tokens": token_counts,
        "cache_write_5m_tokens": token_counts,
        "cache_write_1h_tokens": token_counts,
        "output_tokens": token_counts,
        "reasoning_tokens": token_counts,
        "cost_nanos": costs,
        "status": st.sampled_from(events.STATUSES),
        "labels": st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=4),
    }
)

#: anything at all where an event's value goes (what a Python caller of the SDK may pass)
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers() | st.text(max_size=3), max_size=2),
)


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few byte-level mutations, as a corrupting link or a buggy client does."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "dup"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF]))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        elif op == "dup":
            data[at:at] = data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


def _body(event: dict[str, Any]) -> bytes:
    return CODEC.encode(event)[len(HEADER) :]


other_fingerprints = st.one_of(
    st.binary(min_size=8, max_size=8),
    st.just(b"\x00" * 8),
    st.just(CODEC.current.fingerprint[:7] + bytes([CODEC.current.fingerprint[7] ^ 1])),
)


@st.composite
def single_object_messages(draw: st.DrawFn) -> tuple[bytes, dict[str, Any] | None]:
    """(message, the event it encodes untouched or None)."""
    event = draw(avro_events)
    valid = CODEC.encode(event)
    kind = draw(st.sampled_from(["garbage", "valid", "mutated", "header+garbage", "fingerprint"]))
    if kind == "garbage":
        return draw(st.binary(max_size=300)), None
    if kind == "valid":
        return valid, event
    if kind == "mutated":
        return draw(mutated(valid)), None
    if kind == "header+garbage":
        return HEADER + draw(st.binary(max_size=200)), None
    return SINGLE_OBJECT_MAGIC + draw(other_fingerprints) + valid[len(HEADER) :], None


@st.composite
def confluent_messages(draw: st.DrawFn) -> tuple[bytes, dict[str, Any] | None]:
    event = draw(avro_events)
    schema_id = draw(st.one_of(st.just(CONFLUENT_ID), st.integers(0, (1 << 32) - 1)))
    valid = CODEC.encode_confluent(event, CONFLUENT_ID)
    framed = b"\x00" + schema_id.to_bytes(4, "big") + valid[5:]
    kind = draw(st.sampled_from(["valid", "mutated", "id", "header+garbage"]))
    if kind == "valid":
        return valid, event
    if kind == "mutated":
        return draw(mutated(valid)), None
    if kind == "id":
        return framed, event if schema_id == CONFLUENT_ID else None
    return b"\x00" + draw(st.binary(max_size=200)), None


def _expected(event: dict[str, Any]) -> dict[str, Any]:
    return {name: event[name] for name in FIELDS}


def check_decoded(data: bytes, untouched: dict[str, Any] | None = None) -> None:
    """Accepted bytes are a record of the current schema that re-encodes to itself (and to
    ``untouched``, the event they encode, when known); a reject is one DecodeError."""
    try:
        record = CODEC.decode(data)
    except DecodeError as exc:
        reason = exc.reason
    else:
        reason = ""
    if reason:
        assert untouched is None, f"a valid encoding was refused: {reason}"
        return
    assert list(record) == FIELDS
    if untouched is not None:
        assert record == _expected(untouched)
    # what was accepted is a real event of the current schema: it re-encodes to itself
    assert CODEC.decode(CODEC.encode(record)) == record
    # and the validator judges it without failing, surely_valid never vouching for a reject
    found = events.problems(record, NOW)
    if events.surely_valid(record, NOW + events.MAX_FUTURE_MS):
        assert found == []


# ------------------------------------------------------------------------------ targets


@FUZZ
@given(single_object_messages())
def test_fuzz_single_object_decode(message: tuple[bytes, dict[str, Any] | None]) -> None:
    check_decoded(*message)


@FUZZ
@given(confluent_messages())
def test_fuzz_confluent_decode(message: tuple[bytes, dict[str, Any] | None]) -> None:
    check_decoded(*message)


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[bytes], bool]:
    """(bodies, whether every one is an untouched canonical encoding)."""
    bodies: list[bytes] = []
    canonical = True
    for event in draw(st.lists(avro_events, min_size=1, max_size=6)):
        body = _body(event)
        kind = draw(st.sampled_from(["valid", "valid", "valid", "mutated", "garbage"]))
        if kind == "mutated":
            body = draw(mutated(body))
        elif kind == "garbage":
            body = draw(st.binary(max_size=120))
        canonical = canonical and kind == "valid"
        bodies.append(body)
    return bodies, canonical


def _rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    rows = frame.with_columns(pl.col("task_type", "status").cast(pl.String)).to_dicts()
    for row in rows:
        row["labels"] = {entry["key"]: entry["value"] for entry in row["labels"]}
    return rows


def check_columnar(bodies: list[bytes]) -> None:
    """The column path accepts a batch only if the record path accepts each body, with the same
    values; and it accepts every batch of canonical encodings (each body re-encodes to itself,
    as every client's encoder writes them), so they never take the slow path."""
    frame = COLUMNAR.decode(bodies)  # never raises: None means "decode one by one"
    records: list[dict[str, Any]] = []
    canonical = True
    for body in bodies:
        try:
            record = CODEC.decode(HEADER + body)
        except DecodeError:
            canonical = False
            assert frame is None, "the batch decoder accepted a body the record path refuses"
            continue
        records.append(record)
        canonical = canonical and _body(record) == body
    if frame is None:
        assert not canonical, "the batch decoder refused canonical encodings"
        return
    assert _rows(frame) == records


@FUZZ
@given(batches())
def test_fuzz_columnar_agrees_with_record_path(batch: tuple[list[bytes], bool]) -> None:
    bodies, canonical = batch
    check_columnar(bodies)
    if canonical:
        assert COLUMNAR.decode(bodies) is not None


@FUZZ
@given(
    st.one_of(
        avro_events,
        # a near-valid event with one value replaced by anything
        st.tuples(avro_events, st.sampled_from(FIELDS), junk).map(lambda t: {**t[0], t[1]: t[2]}),
        # a field missing
        st.tuples(avro_events, st.sampled_from(FIELDS)).map(
            lambda t: {k: v for k, v in t[0].items() if k != t[1]}
        ),
        st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), junk, max_size=8),
    )
)
def test_fuzz_event_validator(event: dict[str, Any]) -> None:
    check_validator(event)


def check_validator(event: dict[str, Any]) -> None:
    """A list of reasons (empty when valid) for anything; validate raises exactly those as one
    InvalidEventError; surely_valid never vouches for an event problems() refuses."""
    found = events.problems(event, NOW)
    assert isinstance(found, list)
    assert all(isinstance(p, str) and p for p in found)
    try:
        events.validate(event, NOW)
    except InvalidEventError as exc:
        message = str(exc)
    else:
        message = ""
    assert message == ("invalid token event: " + "; ".join(found) if found else "")
    # surely_valid's input is an Avro-decoded event (types, enums and labels fixed by the
    # schema): judged only on events the schema can carry
    try:
        decoded = CODEC.decode(CODEC.encode(event))
    except DecodeError:
        return
    if events.surely_valid(decoded, NOW + events.MAX_FUTURE_MS):
        assert events.problems(decoded, NOW) == [], "surely_valid vouched for an invalid event"


# budget files: mappings built from the loader's vocabulary with odd values, dumped as YAML,
# plus raw text (anchors, tags, unbalanced brackets)
budget_keys = st.sampled_from(
    [
        "id",
        "budget_id",
        "description",
        "scope",
        "period",
        "timezone",
        "window",
        "limit_usd",
        "limit_tokens",
        "thresholds",
        "mode",
        "forecast",
        "labels",
    ]
)
budget_values = st.one_of(
    st.sampled_from(
        [
            "day",
            "week",
            "month",
            "rolling",
            "alert",
            "block",
            "UTC",
            "Europe/Paris",
            "America",
            "../etc",
            "6h",
            "90m",
            "1d",
            "0m",
            "99999999999999999999d",
            "$1,250.50",
            "1e999999",
            "-1e-999999",
            "NaN",
            "inf",
            "2M",
            "500k",
            "1.5b",
            "0.0000000001",
            str(INT64),
            str(INT64 + 1),
        ]
    ),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.text(max_size=10),
    st.lists(st.integers(-5, 2000), max_size=4),
    st.dictionaries(
        st.sampled_from(["org", "team", "user", "model", "labels", "label.env", "bogus", "task"])
        | st.integers(),
        st.text(max_size=5)
        | st.integers()
        | st.lists(st.integers(), max_size=2)
        | st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
        max_size=3,
    ),
)
budget_docs = st.one_of(
    st.lists(st.dictionaries(budget_keys, budget_values, max_size=8), max_size=3).map(
        lambda entries: yaml.safe_dump({"budgets": entries})
    ),
    st.lists(st.dictionaries(budget_keys, budget_values, max_size=8), max_size=2).map(
        yaml.safe_dump
    ),
    st.text(max_size=200),
    st.text(alphabet="[]{}:,-&*!|>'\"#%@ \n\tab01", max_size=80),
)


@FUZZ
@given(budget_docs)
def test_fuzz_budget_yaml_loader(text: str) -> None:
    check_budget_yaml(text)


BUDGET_CODEC = AvroCodec("budget")


def check_budget_yaml(text: str) -> None:
    """A list of budgets that can be published, or one BudgetError."""
    try:
        budgets = parse_budgets_yaml(text, now_ms=NOW)
    except BudgetError:
        return  # the one typed error; anything else fails the test
    assert isinstance(budgets, list)
    for budget in budgets:
        assert isinstance(budget, Budget)
        assert 0 < budget.limit <= INT64
        # what the loader accepts can be published: it encodes as the Avro Budget record
        record = BUDGET_CODEC.decode(BUDGET_CODEC.encode(budget.to_record()))
        assert Budget.from_record(record) == budget


range_words = st.one_of(
    st.sampled_from(
        [
            "today",
            "week",
            "this-week",
            "month",
            "mtd",
            "month-to-date",
            "7d",
            "24h",
            "last:7d",
            "last_1h",
            "0d",
            "99999999999d",
            "9" * 30 + "h",
            "custom",
            " TODAY ",
            "\u0663d",  # an Arabic-Indic digit three
            "",
        ]
    ),
    st.text(max_size=12),
    st.none(),
)
zones = st.one_of(
    st.sampled_from(
        [
            *("UTC", "Europe/Paris", "Asia/Tokyo", "Pacific/Kiritimati", "America/St_Johns"),
            *("America", "", "/etc/passwd", "../zoneinfo", "Etc/GMT+12", "\x00", "utc"),
        ]
    ),
    st.text(max_size=10),
)
bounds = st.one_of(
    st.none(),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59)).map(
        lambda d: d.isoformat()
    ),
    st.dates().map(lambda d: d.isoformat()),
    st.sampled_from(
        ["0001-01-01", "9999-12-31T23:59:59", "0001-01-01T00:00+05:00", "2026-13-01", "+1d"]
    ),
    st.text(max_size=25),
)
clocks = st.datetimes(
    min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.just(dt.UTC)
)


@FUZZ
@given(range_words, zones, bounds, bounds, clocks)
def test_fuzz_report_range_parser(
    spec: str | None, zone: str, start: str | None, end: str | None, now: dt.datetime
) -> None:
    check_range(spec, zone, start, end, now)


def check_range(
    spec: str | None, zone: str, start: str | None, end: str | None, now: dt.datetime
) -> None:
    """A non-empty UTC range, or one RangeError."""
    try:
        found = resolve(spec, zone, start=start, end=end, now=now)
    except RangeError:
        return  # the one typed error; anything else fails the test
    assert isinstance(found, TimeRange)
    assert found.start.utcoffset() == found.end.utcoffset() == dt.timedelta(0)
    assert found.start < found.end


# ------------------------------------------------------------------------------ regressions
# what the fuzzers found, each pinned by the input that broke it


def test_every_fuzzed_error_is_a_spendstream_error() -> None:
    """The typed errors the targets allow all come from the one exception root."""
    for error in (DecodeError, InvalidEventError, BudgetError, RangeError):
        assert issubclass(error, SpendstreamError)


def test_huge_last_n_days_is_a_range_error() -> None:
    """was: OverflowError from timedelta(days=99999999999)."""
    for spec in ("99999999999d", "last:" + "9" * 5000 + "h"):
        with pytest.raises(RangeError):
            resolve(spec, "UTC", now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def test_a_bound_outside_the_calendar_is_a_range_error() -> None:
    """was: OverflowError from astimezone() of year-1 and year-9999 bounds, and of a local
    midnight before year 1."""
    cases: list[dict[str, Any]] = [
        {"spec": None, "timezone": "Asia/Tokyo", "start": "0001-01-01"},
        {"spec": None, "timezone": "UTC", "start": "0001-01-01T00:00+05:00"},
        {"spec": None, "timezone": "America/New_York", "start": "9999-12-31T23:59"},
        {
            "spec": "today",
            "timezone": "America/New_York",
            "now": dt.datetime(1, 1, 1, 1, tzinfo=dt.UTC),
        },
    ]
    for case in cases:
        spec = case.pop("spec")
        with pytest.raises(RangeError, match="calendar"):
            resolve(spec, **case)


def test_a_zone_that_is_a_folder_is_a_range_error() -> None:
    """was: IsADirectoryError from ZoneInfo("America") (tzdata has a folder of that name)."""
    with pytest.raises(RangeError, match="unknown time zone"):
        resolve("today", "America")
    assert "unknown time zone" in _refused("budgets: [{id: x, limit_usd: 1, timezone: America}]")
    with pytest.raises(SettingsError, match="unknown time zone"):
        Settings.from_env({"SPENDSTREAM_TIMEZONE": "America"})


def test_a_batch_whose_rows_run_past_the_bodies_is_refused_not_raised() -> None:
    """was: IndexError out of ColumnarDecoder.decode (the union walk read past the joined
    bodies), which the sink and the worker do not catch: four messages stopped either one.
    Found by the long run (columnar target)."""
    bodies = [
        bytes.fromhex(
            "4831323161653365362d303361362d343936362d613133622d636137666436343464652d66c690"
            "c3d8c6680a000000000000000000000000000000000000000000000000000000000000000000000000"
            "0000000000090000000000000000000000000000000000000000000000000000000000000000bf0000"
            "00000000000000000000000000000000000000000000000000000000004831323161653365362d2d"
            "343936"
        ),
        bytes.fromhex(
            "2d0100613167676767676767676767676767676767c84834346365346162332d376335642d34326463"
            "2d386638372d37616533376237"
        ),
        bytes.fromhex(
            "65633462bafbdad8c6680a6f72672d31186f72672d312d7465616d2d00000000000000000000000000"
            "0000000072672d32186f72672d322d7465616d2d311c6f72672d322d757365722d312d3302147072"
            "6f6a2d322d312d31020e6b65792d32d3ceffffe79c"
        ),
        bytes.fromhex("8d7400"),
    ]
    assert COLUMNAR.decode(bodies) is None
    check_columnar(bodies)


def test_an_int_field_beyond_32_bits_is_a_decode_error() -> None:
    """was: fastavro reads the Avro int ``turn`` as a long with no range check, so a corrupt
    10-byte varint decoded to turn = 2**63 - 1; the sink then failed casting it to the UInt32
    column. Found by the long run (single_object and confluent targets)."""
    event = dict(CODEC.decode(CODEC.encode(_valid_event())), turn=7)
    encoded = CODEC.encode(event)
    without = CODEC.encode({**event, "turn": None})
    # where turn's union branch is: the first byte where turn=None and turn=7 differ
    at = next(i for i, (a, b) in enumerate(zip(encoded, without, strict=False)) if a != b)
    assert encoded[at : at + 2] == b"\x02\x0e"  # branch 1 (int), then zig-zag 7
    for varint in (b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x80\x80\x80\x80\x10"):
        corrupt = encoded[: at + 1] + varint + encoded[at + 2 :]
        with pytest.raises(DecodeError, match=r"turn \d+ is not a 32-bit int"):
            CODEC.decode(corrupt)
        with pytest.raises(DecodeError, match="turn"):
            CODEC.decode(b"\x00" + CONFLUENT_ID.to_bytes(4, "big") + corrupt[len(HEADER) :])
    assert CODEC.decode(encoded)["turn"] == 7
    top = encoded[: at + 1] + b"\xfe\xff\xff\xff\x0f" + encoded[at + 2 :]  # 2**31 - 1
    assert CODEC.decode(top)["turn"] == INT32


def _valid_event() -> dict[str, Any]:
    from streams.generate import generate_events

    return dict(next(iter(generate_events(1, seed=5))), turn=7, session_id="s-1")


def _refused(text: str) -> str:
    try:
        parse_budgets_yaml(text)
    except BudgetError as exc:
        return str(exc)
    raise AssertionError(f"accepted: {text}")


def test_budget_amounts_beyond_int64_or_infinite_are_budget_errors() -> None:
    """was: OverflowError (.inf), decimal.Overflow (1e999999), ValueError (int of a huge
    Decimal), and limits above the Avro long accepted (publishing them then failed)."""
    for value in (".inf", "1e999999", "-.inf", ".nan"):
        assert "USD" in _refused(f"budgets: [{{id: x, period: day, limit_usd: {value}}}]")
    for value in ("1e999999", "99999999999999999999999"):
        assert "token" in _refused(f"budgets: [{{id: x, period: day, limit_tokens: {value}}}]")
    assert "at most" in _refused("budgets: [{id: x, period: day, limit_usd: 99999999999999}]")
    assert parse_budgets_yaml("budgets: [{id: x, period: day, limit_usd: 9223372036}]")


def test_a_rolling_window_beyond_a_year_is_refused() -> None:
    """was: accepted, and 99999999999999999999d overflowed the Avro long on publish."""
    for window in ("367d", "99999999999999999999d"):
        text = f"budgets: [{{id: x, period: rolling, window: {window}, limit_usd: 1}}]"
        assert "rolling" in _refused(text) or "duration" in _refused(text)
    assert parse_budgets_yaml("budgets: [{id: x, period: rolling, window: 366d, limit_usd: 1}]")


def test_a_non_string_scope_key_is_a_budget_error() -> None:
    """was: AttributeError ('int' object has no attribute 'startswith')."""
    assert "unknown scope field" in _refused("budgets: [{id: x, limit_usd: 1, scope: {1: 2}}]")


def test_lists_where_a_value_goes_are_refused() -> None:
    """was: str() of the list kept as the value (org_id '[1, 2]', a list as description)."""
    assert "single value" in _refused("budgets: [{id: x, limit_usd: 1, scope: {org: [1, 2]}}]")
    assert "description" in _refused("budgets: [{id: x, limit_usd: 1, description: [1]}]")
    assert "label" in _refused("budgets: [{id: x, limit_usd: 1, scope: {label.: x}}]")


def test_a_yaml_alias_bomb_is_refused_at_once() -> None:
    """was: str()/repr() of nine levels of nine aliases (387 million items) in a scope value,
    an amount or an error message: a hang and gigabytes of memory."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = "\n".join(levels) + "\n"
    for entry in (
        "{id: x, limit_usd: 1, scope: {org: *a8}}",
        "{id: x, limit_usd: *a8}",
        "{id: *a8, limit_usd: 1}",
        "{id: x, limit_usd: 1, timezone: *a8}",
        "{id: x, limit_usd: 1, scope: {labels: {env: *a8}}}",
        "{id: x, limit_usd: 1, thresholds: *a8}",
    ):
        text = bomb + f"budgets: [{entry}]\n"
        message = _refused(text)
        assert len(message) < 2000


def test_yaml_nested_too_deeply_is_a_budget_error() -> None:
    """was: RecursionError from PyYAML's composer."""
    assert "nested too deeply" in _refused("[" * 5000 + "]" * 5000)


def test_a_bool_threshold_is_refused() -> None:
    """was: ``thresholds: [true]`` accepted as 1 percent."""
    assert "thresholds" in _refused("budgets: [{id: x, limit_usd: 1, thresholds: [true]}]")
