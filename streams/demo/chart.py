"""The demo's picture: cumulative spend over time per team and per org (from ClickHouse), each
budget's limit as a line, each alert as a marker where it was raised.

Money is summed in integer nano-USD; only the plotted points become floats (dollars).
Drawn with matplotlib's object API on the Agg canvas: no display, no pyplot state.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from streams.budgets import Budget

NANOS = 1_000_000_000
#: marker of each alert kind
MARKERS = {"threshold_crossed": "o", "runaway_session": "X", "forecast_breach": "^"}


def cumulative(rows: Iterable[Sequence[Any]]) -> dict[str, tuple[list[int], list[int]]]:
    """``(series, second, nanos)`` rows -> per series, the seconds and the running total."""
    per: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for name, second, nanos in rows:
        per[str(name)][int(second)] += int(nanos)
    out: dict[str, tuple[list[int], list[int]]] = {}
    for name, seconds in per.items():
        xs, ys, total = [], [], 0
        for second in sorted(seconds):
            total += seconds[second]
            xs.append(second)
            ys.append(total)
        out[name] = (xs, ys)
    return out


def spend_rows(client: Any, column: str) -> list[Sequence[Any]]:
    """Spend per ``column`` (team_id or org_id) and second, from token_events."""
    if column not in ("team_id", "org_id"):
        raise ValueError(column)
    return list(
        client.query(
            f"SELECT {column}, intDiv(toUnixTimestamp64Milli(event_time), 1000) AS s, "
            f"sum(cost_nanos) FROM token_events GROUP BY {column}, s ORDER BY s"
        ).result_rows
    )


def draw(
    path: Path,
    teams: Mapping[str, tuple[list[int], list[int]]],
    orgs: Mapping[str, tuple[list[int], list[int]]],
    budgets: Sequence[Budget],
    alerts: Sequence[Mapping[str, Any]],
    started_ms: int,
    marks: Sequence[tuple[str, str, int]] = (),
    title: str = "spendstream demo",
) -> Path:
    """Write the PNG to ``path``: teams above, orgs below; seconds since ``started_ms``.
    ``marks``: more (team, label, UTC ms) points on the team panel, e.g. check()'s refusal."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    t0 = started_ms / 1000
    for ax, series, field in ((top, teams, "team_id"), (bottom, orgs, "org_id")):
        colours: dict[str, Any] = {}
        end = max((xs[-1] for xs, _ in series.values() if xs), default=0)
        for name in sorted(series):
            xs, ys = series[name]
            if xs and xs[-1] < end:  # a team that stopped spending stays flat to the end
                xs, ys = [*xs, end], [*ys, ys[-1]]
            (line,) = ax.step(
                [x - t0 for x in xs], [y / NANOS for y in ys], where="post", label=name
            )
            colours[name] = line.get_color()
        panel = [b for b in budgets if _panel(b) == field and b.unit == "usd_nanos"]
        for budget in panel:
            owner = getattr(budget, field)
            ax.axhline(
                budget.limit / NANOS,
                linestyle="--",
                color=colours.get(owner, "grey"),
                label=f"{budget.budget_id} ({budget.mode}) ${budget.limit / NANOS:,.2f}",
            )
        ids = {b.budget_id for b in panel}
        for alert in alerts:
            owner = str(alert.get(field))
            shown = alert.get("budget_id") in ids or (
                field == "team_id" and alert["kind"] == "runaway_session"
            )
            if not shown or owner not in series:
                continue
            x = int(alert["detected_at"]) / 1000 - t0
            xs, ys = series[owner]
            y = _at(xs, ys, x + t0) / NANOS
            ax.plot(
                [x],
                [y],
                marker=MARKERS.get(str(alert["kind"]), "s"),
                markersize=10,
                color=colours.get(owner, "black"),
                markeredgecolor="black",
                linestyle="none",
            )
            label = alert["kind"].replace("_", " ")
            if alert.get("threshold_pct"):
                label = f"{alert['threshold_pct']}%"
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, -12), fontsize=8)
        for owner, label, at_ms in marks if field == "team_id" else ():
            if owner not in series:
                continue
            xs, ys = series[owner]
            x, y = at_ms / 1000 - t0, _at(xs, ys, at_ms / 1000) / NANOS
            ax.plot([x], [y], marker="v", markersize=11, color="red", linestyle="none")
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
        ax.set_ylabel(f"spend so far per {field.removesuffix('_id')} (USD)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    bottom.set_xlabel("seconds since the traffic started")
    top.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _panel(budget: Budget) -> str | None:
    """Which panel a budget's line belongs to: a team's, an org's, or none (user, model...)."""
    if budget.team_id is not None:
        return "team_id"
    if budget.org_id is not None and budget.user_id is None:
        return "org_id"
    return None


def _at(xs: Sequence[int], ys: Sequence[int], second: float) -> int:
    """The running total at ``second`` (the last point at or before it)."""
    value = 0
    for x, y in zip(xs, ys, strict=True):
        if x > second:
            break
        value = y
    return value
