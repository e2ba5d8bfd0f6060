"""Deadlines: many per-request timeouts on one loop timer, one per owner."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from plait.proxy.deadlines import Deadlines


class Owner:
    """An Expiring that records (or does) something when its deadline passes."""

    def __init__(self, name: str, fired: list[str], then: Callable[[], None] | None = None):
        self.name = name
        self.fired = fired
        self.then = then

    def expired(self) -> None:
        self.fired.append(self.name)
        if self.then is not None:
            self.then()


def test_owners_are_told_in_deadline_order_and_disarmed_ones_never() -> None:
    async def main() -> list[str]:
        timers = Deadlines(asyncio.get_running_loop())
        fired: list[str] = []
        timers.arm(Owner("late", fired), 0.05)
        timers.arm(Owner("early", fired), 0.01)
        disarmed = Owner("disarmed", fired)
        timers.arm(disarmed, 0.02)
        timers.disarm(disarmed)
        timers.disarm(disarmed)  # idempotent
        await asyncio.sleep(0.1)
        assert not timers.pending
        return fired

    assert asyncio.run(main()) == ["early", "late"]


def test_arming_again_replaces_the_owners_deadline() -> None:
    async def main() -> list[str]:
        timers = Deadlines(asyncio.get_running_loop())
        fired: list[str] = []
        owner = Owner("moved", fired)
        timers.arm(owner, 0.01)
        timers.arm(owner, 0.06)  # later: the first deadline no longer counts
        await asyncio.sleep(0.03)
        early = list(fired)
        await asyncio.sleep(0.06)
        return [*early, "|", *fired]

    assert asyncio.run(main()) == ["|", "moved"]


def test_an_owner_may_disarm_another_due_at_the_same_time() -> None:
    async def main() -> list[str]:
        timers = Deadlines(asyncio.get_running_loop())
        fired: list[str] = []
        second = Owner("second", fired)
        timers.arm(Owner("first", fired, lambda: timers.disarm(second)), 0.01)
        timers.arm(second, 0.01)
        await asyncio.sleep(0.05)
        return fired

    assert asyncio.run(main()) == ["first"]


def test_a_later_earlier_deadline_rearms_the_timer_and_a_raising_owner_is_contained() -> None:
    async def main() -> list[str]:
        timers = Deadlines(asyncio.get_running_loop())
        fired: list[str] = []
        timers.arm(Owner("never", fired), 10.0)

        def boom() -> None:
            raise RuntimeError("bug")

        timers.arm(Owner("boom", fired, boom), 0.01)
        timers.arm(Owner("soon", fired), 0.02)
        await asyncio.sleep(0.06)
        timers.close()
        return fired

    assert asyncio.run(main()) == ["boom", "soon"]
