"""When to renew a certificate, when to raise the alarm, how long to wait after a failure.

Pure: times and randomness are passed in. Rules (DESIGN.md, Conventions; the CA's own
profile in :mod:`plait.ca.profile` uses the same fractions):

- renew at half-life, jittered by +-10% of the half-life (so at 45%-55% of the lifetime),
  so that many proxies started together do not all renew in the same second;
- the *alarm* is up when less than a quarter of the lifetime is left (a renewal has been
  failing for a while: the operator must look before the certificate expires);
- while the CA cannot be reached, retry with exponential backoff (1 s, 2 s, 4 s, ...,
  at most 60 s), each delay jittered down by up to half, and never waiting past the
  point where only 10% of the lifetime is left by more than one short delay (the last
  stretch retries at the minimum delay).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

RENEW_FRACTION = 0.5
JITTER = 0.1  # of the half-life, either way
ALARM_FRACTION = 0.25
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0
BACKOFF_FACTOR = 2.0
LAST_STRETCH = 0.1  # fraction of the lifetime left where retries use the initial delay


def lifetime(not_before: datetime, not_after: datetime) -> timedelta:
    """The certificate's validity period (never negative)."""
    return max(not_after - not_before, timedelta(0))


def next_renewal(not_before: datetime, not_after: datetime, rng: random.Random) -> datetime:
    """When to renew: at half-life, +-10% of the half-life, chosen by ``rng``."""
    half = lifetime(not_before, not_after) * RENEW_FRACTION
    return not_before + half * (1.0 + rng.uniform(-JITTER, JITTER))


def remaining_fraction(now: datetime, not_before: datetime, not_after: datetime) -> float:
    """How much of the lifetime is left at ``now``: 1.0 at notBefore, 0.0 at expiry."""
    total = lifetime(not_before, not_after).total_seconds()
    if total <= 0:
        return 0.0
    left = (not_after - now).total_seconds()
    return min(1.0, max(0.0, left / total))


def alarm(now: datetime, not_before: datetime, not_after: datetime) -> bool:
    """True when less than 25% of the certificate's lifetime is left (or it expired)."""
    return remaining_fraction(now, not_before, not_after) < ALARM_FRACTION


def backoff(failures: int, rng: random.Random) -> float:
    """Seconds to wait after ``failures`` consecutive failures (1, 2, 4, ... 60, jittered).

    The delay is drawn from ``[d/2, d]`` where ``d`` is the exponential step, so retries
    from many hosts spread out while the first one stays prompt.
    """
    if failures <= 0:
        return 0.0
    step = min(BACKOFF_MAX, BACKOFF_INITIAL * BACKOFF_FACTOR ** (failures - 1))
    return rng.uniform(step / 2, step)


def retry_delay(
    failures: int,
    now: datetime,
    not_before: datetime | None,
    not_after: datetime | None,
    rng: random.Random,
) -> float:
    """Seconds until the next try after ``failures`` failed ones.

    With no certificate yet (``not_after`` None) this is plain :func:`backoff`. With one,
    the delay is also capped so the retry happens before only 10% of the lifetime is
    left, and in that last stretch retries run at the initial delay.
    """
    delay = backoff(failures, rng)
    if not_before is None or not_after is None:
        return delay
    total = lifetime(not_before, not_after).total_seconds()
    last_stretch_at = not_after - timedelta(seconds=total * LAST_STRETCH)
    until = (last_stretch_at - now).total_seconds()
    if until <= 0:
        return min(delay, BACKOFF_INITIAL)
    return min(delay, max(until, BACKOFF_INITIAL))
