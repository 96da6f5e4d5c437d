"""Report time ranges in a time zone, resolved to exact UTC instants ``[start, end)``.

"today", "this week" and "month to date" begin at local midnight (weeks on Monday), so the same
words give different UTC instants in Paris and in Tokyo; DST days are 23 or 25 hours long.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streams.errors import SpendstreamError

UTC = dt.UTC
_LAST = re.compile(r"^(?:last[:_-]?)?(\d{1,12})([dh])$", re.ASCII)
NAMED = ("today", "week", "month")


class RangeError(SpendstreamError):
    """A report range that cannot be understood."""


@dataclasses.dataclass(frozen=True)
class TimeRange:
    start: dt.datetime  # UTC, inclusive
    end: dt.datetime  # UTC, exclusive
    label: str
    timezone: str

    def __post_init__(self) -> None:
        for value in (self.start, self.end):
            if value.tzinfo is None or value.utcoffset() != dt.timedelta(0):
                raise RangeError("range bounds must be UTC-aware datetimes")
        if self.end <= self.start:
            raise RangeError(f"empty range: {self.start} .. {self.end}")


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def floor_utc(value: dt.datetime, step: dt.timedelta) -> dt.datetime:
    """``value`` rounded down to a whole ``step`` (hour, day) since the UTC epoch."""
    return _EPOCH + ((value - _EPOCH) // step) * step


def ceil_utc(value: dt.datetime, step: dt.timedelta) -> dt.datetime:
    floor = floor_utc(value, step)
    return floor if floor == value else floor + step


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # "America" is a directory
        raise RangeError(f"unknown time zone {name!r}") from exc


def _local_midnight(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def _parse_bound(text: str, tz: ZoneInfo) -> dt.datetime:
    """ISO date or datetime; naive values are in the report's zone."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise RangeError(f"{text!r} is not an ISO date or datetime") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


def resolve(
    spec: str | None,
    timezone: str = "UTC",
    *,
    start: str | None = None,
    end: str | None = None,
    now: dt.datetime | None = None,
) -> TimeRange:
    """``today`` | ``week`` | ``month`` | ``7d`` / ``last:7d`` / ``24h``, or ``start``/``end``.

    Every range that cannot be understood or that falls outside the calendar (``99999999d``,
    a bound in year 1 east of UTC) raises RangeError, never a bare OverflowError.
    """
    try:
        return _resolve(spec, timezone, start, end, now)
    except OverflowError as exc:
        raise RangeError(f"range outside the calendar (years 1-9999): {exc}") from exc


def _resolve(
    spec: str | None,
    timezone: str,
    start: str | None,
    end: str | None,
    now: dt.datetime | None,
) -> TimeRange:
    if not isinstance(timezone, str):
        raise RangeError(f"unknown time zone {timezone!r}")
    tz = zone(timezone)
    now = (now or dt.datetime.now(UTC)).astimezone(UTC)
    if start is not None or end is not None:
        if spec not in (None, "custom"):
            raise RangeError("give either a named range or --from/--to, not both")
        if start is None:
            raise RangeError("--to needs --from")
        lo = _parse_bound(start, tz)
        hi = _parse_bound(end, tz) if end is not None else now
        return TimeRange(lo, hi, f"{start} .. {end or 'now'}", timezone)
    spec = (spec or "month").strip().lower()
    local_today = now.astimezone(tz).date()
    if spec == "today":
        return TimeRange(_local_midnight(local_today, tz), now, "today", timezone)
    if spec in ("week", "this-week"):
        monday = local_today - dt.timedelta(days=local_today.weekday())
        return TimeRange(_local_midnight(monday, tz), now, "this week", timezone)
    if spec in ("month", "mtd", "month-to-date"):
        first = local_today.replace(day=1)
        return TimeRange(_local_midnight(first, tz), now, "month to date", timezone)
    match = _LAST.match(spec)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        if amount <= 0:
            raise RangeError("the last N days/hours needs N > 0")
        delta = dt.timedelta(days=amount) if unit == "d" else dt.timedelta(hours=amount)
        word = "days" if unit == "d" else "hours"
        return TimeRange(now - delta, now, f"last {amount} {word}", timezone)
    raise RangeError(f"unknown range {spec!r}: use today, week, month, 7d, 24h or --from/--to")
