"""Many deadlines on one event loop timer: per-request timeouts without a timer each.

A uvloop ``call_later`` makes and frees a libuv timer handle, and a request that sets a
route timeout and then finishes in a millisecond paid for both -- about a tenth of the
proxy's CPU per request. :class:`Deadlines` keeps the pending deadlines in a dict and one
loop timer armed at the earliest of them: arming is a dict insert, cancelling a dict
delete. When the timer fires, the due callbacks run and the timer is re-armed at the
next deadline (a scan of the pending ones: rare, since deadlines are seconds away and
most are cancelled long before).

The interface is the slice of ``loop.call_later`` the exchanges use: a handle with
``cancel()``; callbacks run from the loop, never from ``call_later`` itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

__all__ = ["Deadline", "Deadlines"]

log = logging.getLogger("plait.proxy.deadlines")

_SLACK = 0.001  # a timer that fires this early still counts (libuv rounds to the ms)


class Deadline:
    """One pending callback; :meth:`cancel` is idempotent."""

    __slots__ = ("args", "at", "callback", "owner")

    def __init__(
        self, owner: Deadlines, at: float, callback: Callable[..., object], args: tuple[Any, ...]
    ) -> None:
        self.owner = owner
        self.at = at
        self.callback = callback
        self.args = args

    def cancel(self) -> None:
        self.owner.pending.pop(self, None)


class Deadlines:
    """Deadlines on ``loop``'s clock, sharing one loop timer."""

    __slots__ = ("_armed_at", "_handle", "loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: dict[Deadline, None] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Deadline:
        """Run ``callback(*args)`` from the loop in ``delay`` seconds unless cancelled."""
        at = self.loop.time() + delay
        deadline = Deadline(self, at, callback, args)
        self.pending[deadline] = None
        if at < self._armed_at:
            self._arm(at)
        return deadline

    def _arm(self, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = at
        self._handle = self.loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = math.inf
        now = self.loop.time() + _SLACK
        pending = self.pending
        for d in [d for d in pending if d.at <= now]:
            if pending.pop(d, False) is None:  # not cancelled by a callback before it
                try:
                    d.callback(*d.args)
                except Exception:
                    log.exception("error in a deadline callback")
        if pending:
            at = min(d.at for d in pending)
            if at < self._armed_at:
                self._arm(at)

    def close(self) -> None:
        """Drop every pending deadline (shutdown)."""
        self.pending.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_at = math.inf
