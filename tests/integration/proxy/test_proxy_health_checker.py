"""HealthChecker against real local sockets: HTTP status, TCP connect, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

import pytest

from plait.proxy.bootstrap import HealthCheck
from plait.proxy.health import HealthChecker

pytestmark = pytest.mark.timeout(30)


class App:
    """A tiny HTTP app whose status the test sets; records the request heads it got."""

    def __init__(self) -> None:
        self.status = 200
        self.heads: list[bytes] = []
        self.silent = False  # accept, then never answer

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            self.heads.append(await reader.readuntil(b"\r\n\r\n"))
            if self.silent:
                await asyncio.sleep(10)
            writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
        writer.close()

    async def start(self) -> tuple[asyncio.Server, int]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return server, server.sockets[0].getsockname()[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def test_http_check_follows_the_status_and_thresholds() -> None:
    async def main() -> None:
        app = App()
        server, port = await app.start()
        changes: list[bool] = []
        spec = HealthCheck(http="/healthz", unhealthy_threshold=2, healthy_threshold=2)
        checker = HealthChecker(spec, "127.0.0.1", port, on_change=changes.append)
        assert not checker.healthy  # unknown counts as unhealthy
        assert await checker.check_once()
        assert checker.healthy and changes == [True]  # the first pass is enough
        assert app.heads[0].startswith(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:")
        app.status = 503
        assert not await checker.check_once()
        assert checker.healthy  # one failure is below the threshold
        assert checker.last_error == "HTTP status 503"
        assert not await checker.check_once()
        assert not checker.healthy and changes == [True, False]
        app.status = 302
        assert await checker.check_once()
        assert not checker.healthy  # needs two passes now
        assert await checker.check_once()
        assert checker.healthy and changes == [True, False, True]
        assert checker.last_error is None
        server.close()

    run(main)


def test_tcp_check_and_refused_connections() -> None:
    async def main() -> None:
        app = App()
        server, port = await app.start()
        spec = HealthCheck(tcp=True, unhealthy_threshold=1)
        checker = HealthChecker(spec, "127.0.0.1", port)
        assert await checker.check_once()
        closed = HealthChecker(spec, "127.0.0.1", free_port())
        assert not await closed.check_once()
        assert closed.last_error is not None and closed.last_error.startswith("cannot connect")
        server.close()

    run(main)


def test_an_app_that_never_answers_times_out() -> None:
    async def main() -> None:
        app = App()
        app.silent = True
        server, port = await app.start()
        checker = HealthChecker(HealthCheck(http="/", timeout="200ms"), "127.0.0.1", port)
        assert await checker.probe() == "no answer within 0.2s"
        server.close()

    run(main)


def test_run_checks_every_interval() -> None:
    async def main() -> None:
        app = App()
        server, port = await app.start()
        flips: list[bool] = []
        spec = HealthCheck(http="/", interval="20ms", unhealthy_threshold=2)
        checker = HealthChecker(spec, "127.0.0.1", port, on_change=flips.append)
        task = asyncio.create_task(checker.run())
        try:
            await asyncio.wait_for(_until(lambda: flips == [True]), 5)
            app.status = 500
            await asyncio.wait_for(_until(lambda: flips == [True, False]), 5)
            assert len(app.heads) >= 3
        finally:
            task.cancel()
            server.close()

    run(main)


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.01)
