"""Fixtures shared by the proxy's real-process tests: processes stopped by PID at the end,
and an event loop in a thread for in-process upstream apps."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from dataplane_harness import LoopThread
from test_proxy_main import stop


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        stop(p)


@pytest.fixture
def lt() -> Iterator[LoopThread]:
    loop_thread = LoopThread()
    yield loop_thread
    loop_thread.stop()
