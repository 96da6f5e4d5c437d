"""How an alert looks in a terminal: one pretty line (``alerts tail``, the live display's alert
pane) or one JSON object per line (``alerts tail --json``).

Both take a decoded ``BudgetAlert`` (``AvroCodec("budget_alert").decode``: times as UTC epoch
milliseconds, money as integer nano-USD) and never round what they show in JSON.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from rich.text import Text

#: the style of each severity in the pretty line
SEVERITY_STYLES = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
#: the fields of an alert whose value is a UTC epoch-millisecond time
TIME_FIELDS = ("detected_at", "period_start", "period_end", "projected_breach_at", "event_time")


def utc_text(ms: int) -> str:
    """``2026-12-02 07:01:02Z`` for a UTC epoch-millisecond time."""
    when = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%SZ")


def who(alert: Mapping[str, Any]) -> str:
    """``org/team/user`` as far as the alert names them (``-`` when it names none)."""
    parts = [alert.get(f) for f in ("org_id", "team_id", "user_id")]
    shown = "/".join(str(p) for p in parts if p)
    return shown or "-"


def pretty(alert: Mapping[str, Any]) -> Text:
    """One line: when (UTC), severity, kind, who, then the alert's own message."""
    severity = str(alert.get("severity") or "warning")
    line = Text()
    line.append(utc_text(int(alert["detected_at"])), style="dim")
    line.append("  ")
    line.append(f"{severity:<8}", style=SEVERITY_STYLES.get(severity, ""))
    line.append("  ")
    line.append(f"{alert['kind']:<17}", style="bold")
    line.append("  ")
    line.append(who(alert), style="blue")
    line.append("  ")
    line.append(str(alert.get("message") or ""))
    return line


def as_json(alert: Mapping[str, Any]) -> str:
    """The alert as one JSON line: every field as decoded, plus ``*_utc`` ISO times."""
    shown: dict[str, Any] = dict(alert)
    for field in TIME_FIELDS:
        value = alert.get(field)
        if value is not None:
            shown[f"{field}_utc"] = (
                dt.datetime.fromtimestamp(int(value) / 1000, tz=dt.UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z")
            )
    return json.dumps(shown, sort_keys=True, separators=(",", ":"))
