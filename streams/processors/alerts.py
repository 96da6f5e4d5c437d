"""Alert records (schemas/budget_alert.avsc) and their deterministic ids.

An alert id is a hash of what the alert is ABOUT (kind + budget + period + threshold, or
session + reason, or org + spike minute, or provider + model + UTC day), never of when it was
raised, so a restarted or replaying worker computes the same id and the alert is raised once
per subject.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

ALERT_KINDS: Final = (
    "threshold_crossed",
    "forecast_breach",
    "runaway_session",
    "spend_spike",
    "unpriced_model",  # schemas/budget_alert.avsc v2
)
DAY_MS: Final = 86_400_000


def alert_id(kind: str, *parts: object) -> str:
    """32 hex chars of SHA-256 over the kind and the subject parts."""
    if kind not in ALERT_KINDS:
        raise ValueError(f"unknown alert kind {kind!r}")
    text = "\x1f".join([kind, *(str(p) for p in parts)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def threshold_alert_id(
    budget_id: str, definition_version: str, period_start: int, threshold_pct: int
) -> str:
    """Once per threshold and period of one budget DEFINITION: a changed limit or threshold
    list is a new definition, evaluated afresh."""
    return alert_id("threshold_crossed", budget_id, definition_version, period_start, threshold_pct)


def forecast_alert_id(budget_id: str, definition_version: str, period_start: int) -> str:
    return alert_id("forecast_breach", budget_id, definition_version, period_start)


def runaway_alert_id(org_id: str, session_id: str, reason: str) -> str:
    """Sessions are the org's: two orgs that reuse a session id are two sessions."""
    return alert_id("runaway_session", org_id, session_id, reason)


def spike_alert_id(scope_key: str, window_start: int) -> str:
    return alert_id("spend_spike", scope_key, window_start)


def unpriced_alert_id(provider: str, model: str, day_start: int) -> str:
    return alert_id("unpriced_model", provider, model, day_start)


def unpriced_alert(
    provider: str,
    model: str,
    event: Mapping[str, Any],
    tokens: int,
    detected_at: int,
    details: Mapping[str, str],
) -> dict[str, Any]:
    """The first event of the UTC day of a (provider, model) the catalog cannot price: its
    spend counts as 0 (token limits still count its tokens) until a price arrives and
    ``spendstream backfill --reprice`` re-prices it."""
    day = event["event_time"] - event["event_time"] % DAY_MS
    return make_alert(
        "unpriced_model",
        unpriced_alert_id(provider, model, day),
        detected_at,
        f"no price for {provider} model {model}: its spend counts as $0 (tokens still count "
        "toward token limits); add a price (overlay) or sync the catalog, then "
        "`spendstream backfill --reprice`",
        tokens,
        unit="tokens",
        org_id=event.get("org_id"),
        team_id=event.get("team_id"),
        user_id=event.get("user_id"),
        scope={"provider": provider, "model": model},
        period="day",
        period_start=day,
        period_end=day + DAY_MS,
        event_id=event.get("event_id"),
        event_time=event["event_time"],
        session_id=event.get("session_id"),
        details=dict(details),
    )


def make_alert(
    kind: str,
    alert_id_: str,
    detected_at: int,
    message: str,
    spent: int,
    **fields: Any,
) -> dict[str, Any]:
    """A complete BudgetAlert record with every optional field defaulted."""
    record: dict[str, Any] = {
        "alert_id": alert_id_,
        "kind": kind,
        "detected_at": detected_at,
        "severity": "warning",
        "message": message,
        "budget_id": None,
        "org_id": None,
        "team_id": None,
        "user_id": None,
        "scope": {},
        "period": None,
        "period_start": None,
        "period_end": None,
        "timezone": None,
        "unit": "usd_nanos",
        "spent": spent,
        "limit": None,
        "threshold_pct": None,
        "percent": None,
        "projected": None,
        "projected_breach_at": None,
        "mode": None,
        "event_id": None,
        "event_time": None,
        "session_id": None,
        "details": {},
    }
    unknown = set(fields) - set(record)
    if unknown:
        raise ValueError(f"unknown alert fields: {sorted(unknown)}")
    record.update(fields)
    return record


def format_amount(amount: int, unit: str) -> str:
    """Human text for alert messages: $12.34 for nano-USD, 1,234 tokens otherwise."""
    if unit == "usd_nanos":
        return f"${amount / 1e9:,.2f}"
    return f"{amount:,} {unit}"


def scope_text(scope: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in scope.items()) or "everything"
