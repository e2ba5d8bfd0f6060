"""Registrar against a real plait.jsonhttp server: beats, kicks, failures never raise."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from plait.jsonhttp import Request, Response, serve_json, server_port
from plait.proxy.registration import Registrar

pytestmark = pytest.mark.timeout(30)

INSTANCE = {
    "service": "orders",
    "address": "127.0.0.1",
    "port": 15006,
    "labels": {"version": "v1"},
    "healthy": True,
}


class ControlPlane:
    def __init__(self) -> None:
        self.beats: list[tuple[str, str, Any]] = []
        self.status = 200

    async def handle(self, request: Request) -> Response:
        self.beats.append((request.method, request.path, request.json()))
        if self.status != 200:
            return Response(self.status, {"error": "the store is read-only"})
        return Response(200, {"ok": True})


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


async def until(check: Callable[[], bool]) -> None:
    async def wait() -> None:
        while not check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), 5)


def test_heartbeats_at_start_and_when_kicked() -> None:
    async def main() -> None:
        cp = ControlPlane()
        server = await serve_json(cp.handle, "127.0.0.1", 0)
        healthy = [True]

        def instances() -> list[dict[str, Any]]:
            return [{**INSTANCE, "healthy": healthy[0]}]

        url = f"http://127.0.0.1:{server_port(server)}"
        registrar = Registrar(url, "host-a", instances, interval=60, ttl=10)
        task = asyncio.create_task(registrar.run())
        try:
            await until(lambda: registrar.sent == 1)
            assert cp.beats == [
                ("POST", "/v1/registry/heartbeat", {
                    "node_id": "host-a", "ttl": 10, "instances": [INSTANCE]}),
            ]  # fmt: skip
            healthy[0] = False
            registrar.kick()  # long before the 60 s interval
            await until(lambda: registrar.sent == 2)
            assert cp.beats[1][2]["instances"][0]["healthy"] is False
        finally:
            task.cancel()
            server.close()

    run(main)


def test_failures_are_counted_and_retried_never_raised() -> None:
    async def main() -> None:
        cp = ControlPlane()
        cp.status = 503
        server = await serve_json(cp.handle, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server_port(server)}"
        registrar = Registrar(url, "host-a", lambda: [INSTANCE], interval=0.02, ttl=1)
        task = asyncio.create_task(registrar.run())
        try:
            await until(lambda: registrar.failures >= 2)
            assert registrar.last_error == "RuntimeError: HTTP 503: the store is read-only"
            assert registrar.sent == 0
            cp.status = 200
            await until(lambda: registrar.sent >= 1)
            assert (registrar.failures, registrar.last_error) == (0, None)
        finally:
            task.cancel()
            server.close()

    run(main)


def test_an_unreachable_control_plane_is_only_logged() -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        registrar = Registrar(f"http://127.0.0.1:{port}", "n", list, interval=0.02, ttl=1)
        assert await registrar.heartbeat() is False
        assert registrar.last_error is not None
        assert "ConnectionRefusedError" in registrar.last_error

        def broken() -> list[dict[str, Any]]:
            raise KeyError("orders")

        registrar = Registrar(f"http://127.0.0.1:{port}", "n", broken, interval=0.02, ttl=1)
        task = asyncio.create_task(registrar.run())
        await until(lambda: registrar.failures >= 3)  # still looping
        assert not task.done()
        task.cancel()

    run(main)
