"""The budget, alert and rollup schemas load, round-trip and keep their released copies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.serde import AvroCodec

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.mark.parametrize("name", ["budget", "budget_alert", "rollup_1m"])
def test_current_equals_released_v1(name: str) -> None:
    current = json.loads((SCHEMAS / f"{name}.avsc").read_text())
    released = sorted((SCHEMAS / "history").glob(f"{name}.v*.avsc"))
    assert released, f"schemas/history/{name}.v1.avsc is missing"
    assert json.loads(released[-1].read_text()) == current


def test_budget_round_trip() -> None:
    codec = AvroCodec("budget")
    budget = {
        "budget_id": "platform-opus",
        "description": None,
        "org_id": "acme",
        "team_id": "platform",
        "user_id": None,
        "project_id": None,
        "model": "claude-opus-4",
        "client": None,
        "task_type": None,
        "labels": {"cost_centre": "r&d"},
        "period": "month",
        "timezone": "Europe/Paris",
        "rolling_window_s": None,
        "limit": 5_000_000_000_000,
        "unit": "usd_nanos",
        "thresholds_pct": [50, 80, 100],
        "mode": "block",
        "forecast": True,
        "created_at": 1_767_225_600_000,
        "updated_at": 1_767_225_600_000,
    }
    assert codec.decode(codec.encode(budget)) == budget


def test_alert_round_trip_with_defaults() -> None:
    codec = AvroCodec("budget_alert")
    alert = {
        "alert_id": "a" * 32,
        "kind": "threshold_crossed",
        "detected_at": 1_767_225_600_000,
        "message": "platform-opus reached 80%",
        "spent": 4_000_000_000_000,
    }
    decoded = codec.decode(codec.encode(alert))
    assert decoded["kind"] == "threshold_crossed"
    assert decoded["severity"] == "warning"
    assert decoded["scope"] == {}
    assert decoded["limit"] is None
