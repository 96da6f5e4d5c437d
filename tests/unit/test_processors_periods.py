"""Calendar periods across month ends, DST changes and time zones; rolling buckets."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from streams.processors.periods import (
    HOUR_MS,
    MINUTE_MS,
    PeriodCache,
    calendar_period,
    rolling_bucket_ms,
    tumbling,
)


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, tz: str = "UTC") -> int:
    return int(dt.datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz)).timestamp() * 1000)


def test_tumbling_minute() -> None:
    t = ms(2026, 3, 1, 12, 34) + 5_432
    assert tumbling(t, MINUTE_MS) == (ms(2026, 3, 1, 12, 34), ms(2026, 3, 1, 12, 35))


def test_month_end_utc() -> None:
    last = ms(2026, 1, 31, 23, 59)
    assert calendar_period(last, "month", "UTC") == (ms(2026, 1, 1), ms(2026, 2, 1))
    assert calendar_period(last + MINUTE_MS, "month", "UTC") == (ms(2026, 2, 1), ms(2026, 3, 1))


def test_month_in_a_zone_differs_from_utc() -> None:
    # 2026-01-31 23:30 UTC is already February in Paris
    instant = ms(2026, 1, 31, 23, 30)
    period = calendar_period(instant, "month", "Europe/Paris")
    assert period.start == ms(2026, 2, 1, tz="Europe/Paris")
    assert period.end == ms(2026, 3, 1, tz="Europe/Paris")


def test_leap_february() -> None:
    period = calendar_period(ms(2028, 2, 29, 12), "month", "UTC")
    assert period.length == 29 * 24 * HOUR_MS


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        ("Europe/Paris", (2026, 3, 29), 23),  # spring forward
        ("Europe/Paris", (2026, 10, 25), 25),  # fall back
        ("America/New_York", (2026, 3, 8), 23),
        ("America/New_York", (2026, 11, 1), 25),
        ("Asia/Kolkata", (2026, 3, 29), 24),  # no DST, +05:30
    ],
)
def test_day_length_across_dst(tz: str, day: tuple[int, int, int], hours: int) -> None:
    noon = ms(*day, 12, tz=tz)
    period = calendar_period(noon, "day", tz)
    assert period.start == ms(*day, tz=tz)
    assert period.length == hours * HOUR_MS


def test_week_starts_monday_local() -> None:
    # Sunday 2026-03-29 23:30 in New York is Monday 03:30 UTC: still the previous week locally
    instant = ms(2026, 3, 29, 23, 30, tz="America/New_York")
    period = calendar_period(instant, "week", "America/New_York")
    assert period.start == ms(2026, 3, 23, tz="America/New_York")
    assert period.length == 7 * 24 * HOUR_MS
    utc_period = calendar_period(instant, "week", "UTC")
    assert utc_period.start == ms(2026, 3, 30)


def test_week_with_dst_change_is_one_hour_short() -> None:
    period = calendar_period(ms(2026, 3, 26, 12, tz="Europe/Paris"), "week", "Europe/Paris")
    assert period.length == 7 * 24 * HOUR_MS - HOUR_MS


def test_period_boundaries_are_whole_minutes() -> None:
    for tz in ("Asia/Kathmandu", "Australia/Lord_Howe", "America/St_Johns"):
        for kind in ("day", "week", "month"):
            period = calendar_period(ms(2026, 4, 5, 12), kind, tz)
            assert period.start % MINUTE_MS == 0
            assert period.end % MINUTE_MS == 0


def test_rolling_buckets() -> None:
    assert rolling_bucket_ms(6 * HOUR_MS) == 6 * MINUTE_MS
    assert rolling_bucket_ms(10 * MINUTE_MS) == MINUTE_MS
    cache = PeriodCache("rolling", window_ms=6 * HOUR_MS)
    t = ms(2026, 5, 1, 10, 7)
    assert cache.of(t) == (ms(2026, 5, 1, 10, 6), ms(2026, 5, 1, 10, 12))


def test_period_cache_matches_direct_computation_over_a_dst_month() -> None:
    cache = PeriodCache("day", "Europe/Paris")
    t = ms(2026, 3, 25)
    while t < ms(2026, 4, 2):
        assert cache.of(t) == calendar_period(t, "day", "Europe/Paris")
        t += 17 * MINUTE_MS


def test_unknown_period_rejected() -> None:
    with pytest.raises(ValueError, match="unknown period"):
        PeriodCache("fortnight")
