"""The xDS client's reconnect backoff: exponential, capped, jittered into the upper half."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from plait.proxy.xds_client import backoff_delay


@given(attempt=st.integers(0, 10_000), seed=st.integers(0, 2**32))
def test_delay_stays_within_the_upper_half_of_the_capped_step(attempt: int, seed: int) -> None:
    step = min(5.0, 0.25 * 2.0 ** min(attempt, 32))
    delay = backoff_delay(attempt, 0.25, 5.0, random.Random(seed))
    assert step / 2 <= delay <= step


def test_delays_grow_then_cap_and_are_reproducible() -> None:
    def delays(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [round(backoff_delay(a, 0.25, 5.0, rng), 6) for a in range(8)]

    first = delays(1)
    assert first == delays(1)  # injected randomness: same seed, same schedule
    assert first != delays(2)
    assert all(0.125 <= d <= 0.25 for d in first[:1])
    assert all(2.5 <= d <= 5.0 for d in first[5:])
