"""Many deadlines on one event loop timer: per-request timeouts without a timer each.

A uvloop ``call_later`` makes and frees a libuv timer handle, and a request that sets a
route timeout and then finishes in a millisecond paid for both -- about a tenth of the
proxy's CPU per request. :class:`Deadlines` keeps the pending deadlines in a dict keyed by
their owner (an exchange, an attempt: each has at most one pending deadline) and one loop
timer armed at the earliest of them: arming is a dict insert, disarming a dict delete, and
no object is made per deadline. When the timer fires, the owners whose deadline passed are
told (:meth:`Expiring.expired`) and the timer is re-armed at the next deadline (a scan of
the pending ones: rare, since deadlines are seconds away and most are disarmed long
before). Owners are told from the loop, never from :meth:`Deadlines.arm` itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Protocol

__all__ = ["Deadlines", "Expiring"]

log = logging.getLogger("plait.proxy.deadlines")

_SLACK = 0.001  # a timer that fires this early still counts (libuv rounds to the ms)


class Expiring(Protocol):
    """What owns a deadline: hashable by identity, told once when it passes."""

    def expired(self) -> None: ...


class Deadlines:
    """Deadlines on ``loop``'s clock, one per owner, sharing one loop timer."""

    __slots__ = ("_armed_at", "_handle", "_time", "loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._time = loop.time  # bound once: arm() calls it per request
        self.pending: dict[Expiring, float] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def arm(self, owner: Expiring, delay: float) -> None:
        """Call ``owner.expired()`` from the loop in ``delay`` seconds unless disarmed
        first; arming an owner again replaces its deadline."""
        at = self._time() + delay
        self.pending[owner] = at
        if at < self._armed_at:
            self._arm(at)

    def disarm(self, owner: Expiring) -> None:
        """Drop ``owner``'s deadline, if it has one (idempotent)."""
        pending = self.pending
        if owner in pending:  # (not pop(owner, None): a method looked up per call)
            del pending[owner]

    def _arm(self, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = at
        self._handle = self.loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = math.inf
        now = self._time() + _SLACK
        pending = self.pending
        for owner in [o for o, at in pending.items() if at <= now]:
            at = pending.get(owner)
            if at is not None and at <= now:  # not disarmed or re-armed by an owner before
                del pending[owner]
                try:
                    owner.expired()
                except Exception:
                    log.exception("error in a deadline callback")
        if pending:
            at = min(pending.values())
            if at < self._armed_at:
                self._arm(at)

    def close(self) -> None:
        """Drop every pending deadline (shutdown)."""
        self.pending.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_at = math.inf
