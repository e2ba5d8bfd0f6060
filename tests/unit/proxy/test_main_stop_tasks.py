"""plait.proxy.main.stop_tasks: shutdown waits for cancelled tasks, but not forever."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from plait.proxy.main import stop_tasks


async def _stubborn() -> None:
    """Swallows cancellation, as a task can when 3.11's wait_for loses a cancel."""
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            continue


async def _failing() -> None:
    raise RuntimeError("boom")


def test_tasks_that_stop_are_awaited_and_a_stubborn_one_is_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> tuple[float, list[str]]:
        tasks = [
            asyncio.create_task(asyncio.sleep(60), name="polite"),
            asyncio.create_task(_failing(), name="failing"),
            asyncio.create_task(_stubborn(), name="stubborn"),
        ]
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await stop_tasks(tasks, timeout=0.3)
        return time.monotonic() - t0, [t.get_name() for t in tasks if t.done()]

    loop = asyncio.new_event_loop()
    with caplog.at_level(logging.WARNING, logger="plait.proxy"):
        try:
            took, done = loop.run_until_complete(main())
        finally:
            for task in asyncio.all_tasks(loop):  # the stubborn one: close its coroutine
                task.get_coro().close()  # type: ignore[union-attr]
            loop.close()
    assert 0.25 <= took < 2.0  # waited for the timeout, not forever
    assert done == ["polite", "failing"]
    assert "task stubborn did not stop within 0.3s" in caplog.text


def test_no_tasks_returns_at_once() -> None:
    asyncio.run(stop_tasks([]))
