"""Deadlines: many per-request timeouts on one loop timer."""

from __future__ import annotations

import asyncio

from plait.proxy.deadlines import Deadlines


def test_callbacks_run_in_deadline_order_and_cancelled_ones_never() -> None:
    async def main() -> list[str]:
        timers = Deadlines(asyncio.get_running_loop())
        fired: list[str] = []
        timers.call_later(0.05, fired.append, "late")
        timers.call_later(0.01, fired.append, "early")
        cancelled = timers.call_later(0.02, fired.append, "cancelled")
        cancelled.cancel()
        cancelled.cancel()  # idempotent
        await asyncio.sleep(0.1)
        assert not timers.pending
        return fired

    assert asyncio.run(main()) == ["early", "late"]


def test_a_callback_may_cancel_another_due_at_the_same_time() -> None:
    async def main() -> list[str]:
        timers = Deadlines(asyncio.get_running_loop())
        fired: list[str] = []
        second = None

        def first() -> None:
            fired.append("first")
            assert second is not None
            second.cancel()

        timers.call_later(0.01, first)
        second = timers.call_later(0.01, fired.append, "second")
        await asyncio.sleep(0.05)
        return fired

    assert asyncio.run(main()) == ["first"]


def test_a_later_earlier_deadline_rearms_the_timer_and_a_raising_callback_is_contained() -> None:
    async def main() -> list[str]:
        timers = Deadlines(asyncio.get_running_loop())
        fired: list[str] = []
        timers.call_later(10.0, fired.append, "never")

        def boom() -> None:
            raise RuntimeError("bug")

        timers.call_later(0.01, boom)
        timers.call_later(0.02, fired.append, "soon")
        await asyncio.sleep(0.06)
        timers.close()
        return fired

    assert asyncio.run(main()) == ["soon"]
