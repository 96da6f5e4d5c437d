"""The enforcement cache: scope matching, expiry and lifting, without Kafka."""

from __future__ import annotations

import json
import time

from streams.sdk import EnforcementCache


def _block(budget_id: str, scope: dict[str, str], until: int) -> bytes:
    return json.dumps(
        {
            "budget_id": budget_id,
            "scope": scope,
            "blocked": True,
            "until": until,
            "spent": 2,
            "limit": 1,
            "unit": "usd_nanos",
        }
    ).encode()


def test_check_matches_whole_scope_and_expires() -> None:
    cache = EnforcementCache()
    future = int(time.time() * 1000) + 60_000
    cache.apply("team-opus", _block("team-opus", {"team_id": "p", "model": "opus"}, future))
    cache.apply("org", _block("org", {"org_id": "gone"}, int(time.time() * 1000) - 1))
    assert cache.check(org_id="a", team_id="p", user_id="u", model="opus") is not None
    assert cache.check(org_id="a", team_id="p", user_id="u", model="haiku") is None
    assert cache.check(org_id="gone", team_id="x", user_id="u") is None  # period over
    cache.apply("team-opus", None)  # tombstone lifts it
    assert cache.check(org_id="a", team_id="p", user_id="u", model="opus") is None


def test_check_is_cheap() -> None:
    cache = EnforcementCache()
    future = int(time.time() * 1000) + 60_000
    for i in range(1000):
        cache.apply(f"u{i}", _block(f"u{i}", {"user_id": f"user-{i}"}, future))
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        cache.check(org_id="o", team_id="t", user_id="nobody")
    per_call = (time.perf_counter() - start) / n
    print(f"check(): {per_call * 1e6:.2f} us per call with 1000 blocks")
