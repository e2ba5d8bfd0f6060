"""The renewal schedule, the expiry alarm and the backoff (plait.identity.renewal)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from plait.identity import renewal

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@given(st.integers(min_value=1, max_value=10**7), st.integers(min_value=0, max_value=2**32))
def test_renewal_is_at_half_life_within_ten_percent(seconds: int, seed: int) -> None:
    end = T0 + timedelta(seconds=seconds)
    at = renewal.next_renewal(T0, end, random.Random(seed))
    half = seconds / 2
    assert half * 0.9 - 1e-6 <= (at - T0).total_seconds() <= half * 1.1 + 1e-6


def test_renewals_are_spread_by_the_jitter() -> None:
    rng = random.Random(7)
    end = T0 + timedelta(hours=24)
    times = {renewal.next_renewal(T0, end, rng) for _ in range(50)}
    assert len(times) > 40


def test_alarm_below_a_quarter_of_the_lifetime() -> None:
    end = T0 + timedelta(hours=24)
    assert not renewal.alarm(T0 + timedelta(hours=12), T0, end)
    assert not renewal.alarm(T0 + timedelta(hours=18), T0, end)  # exactly 25% left
    assert renewal.alarm(T0 + timedelta(hours=18, seconds=1), T0, end)
    assert renewal.alarm(end + timedelta(seconds=1), T0, end)
    assert renewal.alarm(T0, T0, T0)  # no lifetime at all


def test_backoff_doubles_up_to_a_minute_with_jitter_down() -> None:
    rng = random.Random(1)
    assert renewal.backoff(0, rng) == 0.0
    for failures, step in ((1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (30, 60)):
        delay = renewal.backoff(failures, rng)
        assert step / 2 <= delay <= step


def test_retry_delay_never_sleeps_through_the_last_stretch() -> None:
    rng = random.Random(3)
    end = T0 + timedelta(seconds=100)
    # 80 s into a 100 s certificate: the last stretch (10%) starts at 90 s
    assert renewal.retry_delay(30, T0 + timedelta(seconds=80), T0, end, rng) <= 10
    # inside the last stretch: retry at the initial delay
    assert renewal.retry_delay(30, T0 + timedelta(seconds=95), T0, end, rng) <= 1
    # no certificate: plain backoff
    assert 30 <= renewal.retry_delay(7, T0, None, None, rng) <= 60
