"""The live display of a run (``spendstream loadtest run``, ``spendstream demo``).

The caller measures; this only shows. Build a ``DisplaySnapshot`` as often as you like and
pass it to ``LiveDisplay.update``: on a terminal a rich ``Live`` panel redraws (at most
``refresh_per_second``), elsewhere (CI, a pipe, a log file) one plain line is printed every
``plain_every_s`` seconds and each new alert once, so the output stays readable as a log. The
alert pane is ``streams.alerts.pretty``, the line ``spendstream alerts tail`` prints.

    with LiveDisplay("steady") as display:
        while running:
            display.update(DisplaySnapshot(elapsed_s=..., produced_per_s=..., ...))
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from streams.alerts import pretty


@dataclasses.dataclass
class DisplaySnapshot:
    """What a run looks like now. ``None`` for a figure not known (yet)."""

    elapsed_s: float = 0.0
    produced_per_s: float = 0.0
    produced_total: int = 0
    worker_lag: int | None = None  # records the workers have not processed yet
    sink_lag: int | None = None  # records the sinks have not committed yet
    clickhouse_rows: int | None = None
    alerts_total: int = 0
    recent_alerts: list[Mapping[str, Any]] = dataclasses.field(default_factory=list)
    extra: list[str] = dataclasses.field(default_factory=list)  # free lines under the figures


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def plain_line(snapshot: DisplaySnapshot) -> str:
    """The figures of ``snapshot`` as one log line."""
    return (
        f"[{_elapsed(snapshot.elapsed_s)}] produced {snapshot.produced_total:,} "
        f"({snapshot.produced_per_s:,.0f}/s), worker lag {_count(snapshot.worker_lag)}, "
        f"sink lag {_count(snapshot.sink_lag)}, ClickHouse rows "
        f"{_count(snapshot.clickhouse_rows)}, alerts {snapshot.alerts_total:,}"
    )


def _one_line(text: Text) -> Text:
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


class LiveDisplay:
    """A context manager showing the latest snapshot: rich Live on a TTY, plain lines elsewhere."""

    def __init__(
        self,
        title: str = "spendstream",
        console: Console | None = None,
        *,
        refresh_per_second: float = 4.0,
        plain_every_s: float = 5.0,
        max_alerts: int = 8,
        live: bool | None = None,
    ) -> None:
        """``live``: force (True) or refuse (False) the redrawing panel; default: on a TTY."""
        self.title = title
        self.console = console or Console()
        self.refresh_per_second = refresh_per_second
        self.plain_every_s = plain_every_s
        self.max_alerts = max_alerts
        self.is_live = self.console.is_terminal if live is None else live
        self.snapshot = DisplaySnapshot()
        self._live: Live | None = None
        self._last_plain = float("-inf")
        self._printed_alerts: set[str] = set()

    def __enter__(self) -> LiveDisplay:
        if self.is_live:
            self._live = Live(
                self.render(self.snapshot),
                console=self.console,
                refresh_per_second=self.refresh_per_second,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop redrawing (the last panel stays on screen); plain: print the last figures."""
        if self._live is not None:
            self._live.update(self.render(self.snapshot), refresh=True)
            self._live.stop()
            self._live = None
        elif not self.is_live and self.snapshot.elapsed_s > 0:
            self._print_plain(self.snapshot, force=True)

    def update(self, snapshot: DisplaySnapshot) -> None:
        self.snapshot = snapshot
        if self._live is not None:
            self._live.update(self.render(snapshot))
        elif not self.is_live:
            self._print_plain(snapshot)

    def print(self, *objects: Any) -> None:
        """A line above the panel (or in the log): a step of the run, a result."""
        self.console.print(*objects)

    def _print_plain(self, snapshot: DisplaySnapshot, force: bool = False) -> None:
        for alert in snapshot.recent_alerts:
            alert_id = str(alert.get("alert_id"))
            if alert_id not in self._printed_alerts:
                self._printed_alerts.add(alert_id)
                self.console.print(pretty(alert), soft_wrap=True)
        now = time.monotonic()
        if force or now - self._last_plain >= self.plain_every_s:
            self._last_plain = now
            self.console.print(plain_line(snapshot), soft_wrap=True, highlight=False)
            for line in snapshot.extra:
                self.console.print(f"  {line}", soft_wrap=True, highlight=False)

    def render(self, snapshot: DisplaySnapshot) -> RenderableType:
        """The panel: the figures, the extra lines, then the newest alerts (newest last)."""
        figures = Table.grid(padding=(0, 3))
        for _ in range(4):
            figures.add_column()
        figures.add_row(
            Text.assemble(("elapsed ", "dim"), _elapsed(snapshot.elapsed_s)),
            Text.assemble(("produced/s ", "dim"), f"{snapshot.produced_per_s:,.0f}"),
            Text.assemble(("produced ", "dim"), f"{snapshot.produced_total:,}"),
            Text.assemble(("alerts ", "dim"), f"{snapshot.alerts_total:,}"),
        )
        figures.add_row(
            Text.assemble(("worker lag ", "dim"), _count(snapshot.worker_lag)),
            Text.assemble(("sink lag ", "dim"), _count(snapshot.sink_lag)),
            Text.assemble(("ClickHouse rows ", "dim"), _count(snapshot.clickhouse_rows)),
            Text(""),
        )
        parts: list[RenderableType] = [figures]
        parts.extend(Text(line) for line in snapshot.extra)
        shown = snapshot.recent_alerts[-self.max_alerts :] if self.max_alerts else []
        if shown:
            alerts: RenderableType = Group(*(_one_line(pretty(a)) for a in shown))
        else:
            alerts = Text("no alerts yet", style="dim")
        parts.append(Panel(alerts, title="alerts", title_align="left", border_style="dim"))
        return Panel(Group(*parts), title=self.title, title_align="left")
