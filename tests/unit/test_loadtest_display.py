"""The live display and the alert line it shares with ``spendstream alerts tail``."""

from __future__ import annotations

import io
import json

from rich.console import Console

from streams.alerts import as_json, pretty
from streams.loadtest.display import DisplaySnapshot, LiveDisplay, plain_line
from streams.processors.alerts import make_alert

DETECTED = 1_796_030_100_000  # 2026-11-30 09:15:00Z


def _alert(alert_id: str = "a1", **fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "severity": "critical",
        "budget_id": "team-cap",
        "org_id": "acme",
        "team_id": "platform",
    }
    return make_alert(
        "threshold_crossed",
        alert_id,
        DETECTED,
        "budget team-cap (team_id=platform) reached 100% of $40.00 for the day: $41.20 spent",
        41_200_000_000,
        **{**base, **fields},
    )


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=160, color_system=None), out


def test_the_pretty_line_says_when_how_bad_what_who_and_the_message():
    line = pretty(_alert()).plain
    assert line.startswith("2026-11-30 09:15:00Z  critical  threshold_crossed  acme/platform  ")
    assert line.endswith("reached 100% of $40.00 for the day: $41.20 spent")
    assert pretty(make_alert("spend_spike", "s", DETECTED, "m", 1)).plain.split()[4] == "-"


def test_the_json_line_keeps_every_field_exact_and_adds_utc_times():
    alert = _alert(period_start=1_795_996_800_000)
    shown = json.loads(as_json(alert))
    assert {k: shown[k] for k in alert} == alert  # integers stay integers: no rounding
    assert shown["detected_at_utc"] == "2026-11-30T09:15:00.000Z"
    assert shown["period_start_utc"] == "2026-11-30T00:00:00.000Z"
    assert "event_time_utc" not in shown  # null times stay null, no invented text


def test_plain_mode_prints_periodic_lines_and_each_alert_once():
    console, out = _console(terminal=False)
    snapshot = DisplaySnapshot(
        elapsed_s=65,
        produced_per_s=1234.4,
        produced_total=80_000,
        worker_lag=12,
        sink_lag=None,
        clickhouse_rows=79_000,
        alerts_total=1,
        recent_alerts=[_alert()],
        extra=["check(team=platform): blocked by team-cap"],
    )
    with LiveDisplay("demo", console, plain_every_s=3600) as display:
        assert not display.is_live
        display.update(snapshot)
        display.update(snapshot)  # within plain_every_s: no second line, no repeated alert
    lines = out.getvalue().splitlines()
    assert lines.count(pretty(_alert()).plain) == 1
    figures = plain_line(snapshot)
    assert figures == (
        "[1:05] produced 80,000 (1,234/s), worker lag 12, sink lag -, "
        "ClickHouse rows 79,000, alerts 1"
    )
    assert lines.count(figures) == 2  # the periodic one and the final one on close
    assert "  check(team=platform): blocked by team-cap" in lines
    assert "\x1b[" not in out.getvalue()  # no cursor movement in a log


def test_the_live_panel_shows_the_figures_and_the_newest_alerts_only():
    console, out = _console(terminal=True)
    alerts = [_alert(f"a{i}", budget_id=f"b{i}", user_id=f"u{i}") for i in range(12)]
    with LiveDisplay("demo", console, max_alerts=3) as display:
        assert display.is_live
        display.update(
            DisplaySnapshot(
                elapsed_s=3, produced_total=5_000, alerts_total=12, recent_alerts=alerts
            )
        )
    text = out.getvalue()
    for shown in ("produced 5,000", "alerts 12", "worker lag -", "acme/platform/u11"):
        assert shown in text
    assert "acme/platform/u8 " not in text and "acme/platform/u9 " in text
