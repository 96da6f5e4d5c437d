"""events.make_event, the one builder of complete event dicts, against the Avro contract."""

from __future__ import annotations

import pytest

from streams import events
from streams.errors import InvalidEventError
from streams.serde.schemas import current

REQUIRED = {
    "event_id": "0190c2a4-7e5b-7c3d-8f00-000000000001",
    "event_time": 1_780_000_000_000,
    "org_id": "acme",
    "team_id": "platform",
    "user_id": "ana",
    "client": "claude-code",
    "provider": "anthropic",
    "model": "claude-sonnet-4-5",
}


def test_fields_and_defaults_are_the_schemas() -> None:
    fields = current("token_event").raw["fields"]
    assert tuple(f["name"] for f in fields) == events.FIELDS
    with_default = {f["name"]: f["default"] for f in fields if "default" in f}
    assert with_default == {**events.DEFAULTS, "labels": {}}


def test_a_complete_valid_event_in_schema_order() -> None:
    event = events.make_event(**REQUIRED)
    assert tuple(event) == events.FIELDS
    assert events.problems(event, now=REQUIRED["event_time"]) == []
    assert event["task_type"] == "other"
    assert event["labels"] == {}


def test_given_fields_win_and_labels_are_never_shared() -> None:
    labels = {"env": "prod"}
    a = events.make_event(**REQUIRED, turn=3, labels=labels)
    b = events.make_event(**REQUIRED)
    c = events.make_event(**REQUIRED)
    assert a["turn"] == 3 and a["labels"] == labels and a["labels"] is not labels
    b["labels"]["x"] = "y"
    assert c["labels"] == {}


def test_unknown_and_missing_fields_are_refused() -> None:
    with pytest.raises(InvalidEventError, match="unknown event fields: input_token"):
        events.make_event(**REQUIRED, input_token=5)
    partial = {k: v for k, v in REQUIRED.items() if k != "team_id"}
    with pytest.raises(InvalidEventError, match="missing event fields: team_id"):
        events.make_event(**partial)
