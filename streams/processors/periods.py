"""Time windows: 1-minute tumbling windows, calendar periods in a time zone, rolling buckets.

All instants are UTC epoch milliseconds (ints). Calendar periods are computed in the budget's
IANA time zone with zoneinfo, so a day across a DST change lasts 23 or 25 hours and a month
ends at local midnight of the 1st. Every period boundary of a real zone falls on a whole
minute, which lets the hot path aggregate by minute first and map minutes to periods after.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Final, NamedTuple
from zoneinfo import ZoneInfo

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
CALENDAR_PERIODS: Final = ("day", "week", "month")
PERIODS: Final = (*CALENDAR_PERIODS, "rolling")
#: Rolling windows are summed from buckets of this many buckets per window (at least 1 minute).
ROLLING_BUCKETS_PER_WINDOW: Final = 60


class Period(NamedTuple):
    """A half-open interval [start, end) in UTC epoch ms."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def __contains__(self, instant: object) -> bool:
        return isinstance(instant, int) and self.start <= instant < self.end


def minute_start(ms: int) -> int:
    return ms - ms % MINUTE_MS


def tumbling(ms: int, size_ms: int) -> Period:
    start = ms - ms % size_ms
    return Period(start, start + size_ms)


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _to_ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def _local_midnight(day: dt.date, zone: ZoneInfo) -> int:
    """UTC ms of local midnight starting ``day`` (fold=0: the first midnight if repeated)."""
    return _to_ms(dt.datetime(day.year, day.month, day.day, tzinfo=zone))


def calendar_period(ms: int, period: str, timezone: str) -> Period:
    """The calendar day, week (Monday start) or month in ``timezone`` containing ``ms``."""
    zone = _zone(timezone)
    local = dt.datetime.fromtimestamp(ms / 1000, tz=zone).date()
    if period == "day":
        first, after = local, local + dt.timedelta(days=1)
    elif period == "week":
        first = local - dt.timedelta(days=local.weekday())
        after = first + dt.timedelta(days=7)
    elif period == "month":
        first = local.replace(day=1)
        after = (first + dt.timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"not a calendar period: {period!r}")
    start, end = _local_midnight(first, zone), _local_midnight(after, zone)
    # zones whose midnight is skipped by DST (rare) may round; keep ms inside [start, end)
    if not start <= ms < end:  # pragma: no cover - defensive, no such zone in tzdata today
        raise ValueError(f"{ms} outside computed {period} [{start}, {end}) in {timezone}")
    return Period(start, end)


def rolling_bucket_ms(window_ms: int) -> int:
    """Bucket size for a rolling window: 1/60 of it, rounded down to whole minutes, >= 1 min."""
    size = (window_ms // ROLLING_BUCKETS_PER_WINDOW) // MINUTE_MS * MINUTE_MS
    return max(MINUTE_MS, size)


class PeriodCache:
    """Maps instants to the period of one (kind, zone), recomputing only on boundary crossing.

    Events come mostly in time order, so the last period answers nearly every call with two
    integer comparisons instead of a time-zone conversion.
    """

    __slots__ = ("_last", "period", "timezone", "window_ms")

    def __init__(self, period: str, timezone: str = "UTC", window_ms: int = 0) -> None:
        if period not in PERIODS:
            raise ValueError(f"unknown period {period!r} (one of {', '.join(PERIODS)})")
        if period == "rolling" and window_ms <= 0:
            raise ValueError("a rolling period needs a window length > 0")
        self.period = period
        self.timezone = timezone
        self.window_ms = window_ms
        self._last = Period(0, 0)

    def of(self, ms: int) -> Period:
        last = self._last
        if last.start <= ms < last.end:
            return last
        if self.period == "rolling":
            found = tumbling(ms, rolling_bucket_ms(self.window_ms))
        else:
            found = calendar_period(ms, self.period, self.timezone)
        self._last = found
        return found
