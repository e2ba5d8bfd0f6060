"""plait.jsonhttp: the JSON HTTP/1.1 server and both clients, over real sockets."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from plait.jsonhttp import (
    MAX_BODY,
    HttpError,
    Request,
    Response,
    request_json,
    request_json_sync,
    serve_json,
    server_port,
)

pytestmark = pytest.mark.timeout(30)


async def echo(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("kaboom")
    if request.path == "/teapot":
        raise HttpError(418, "short and stout", hint="tip me over")
    if request.path == "/slow":
        await asyncio.sleep(0.1)
    body = request.json() if request.method == "POST" else None
    return Response(
        200,
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "body": body,
            "ua": request.headers.get("x-test"),
        },
    )


def run(scenario: Callable[[int], Awaitable[None]]) -> None:
    async def main() -> None:
        server = await serve_json(echo, "127.0.0.1", 0)
        try:
            await scenario(server_port(server))
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


async def raw(port: int, data: bytes, until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 5) if until_close else b""
    writer.close()
    return out


def responses(data: bytes) -> list[tuple[int, Any]]:
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.split(": ", 1) for line in lines[1:])
        length = int(headers["Content-Length"])
        out.append((status, json.loads(rest[:length]) if length else None))
        data = rest[length:]
    return out


def test_clients_round_trip() -> None:
    async def scenario(port: int) -> None:
        base = f"http://127.0.0.1:{port}"
        status, obj = await request_json(base, "POST", "/x?a=1&b=two", {"k": [1, 2]})
        assert status == 200
        assert obj == {
            "method": "POST",
            "path": "/x",
            "query": {"a": "1", "b": "two"},
            "body": {"k": [1, 2]},
            "ua": None,
        }
        status, obj = await asyncio.to_thread(request_json_sync, base, "GET", "/y")
        assert (status, obj["path"]) == (200, "/y")
        status, obj = await asyncio.to_thread(request_json_sync, base, "GET", "/teapot")
        assert (status, obj) == (418, {"error": "short and stout", "hint": "tip me over"})
        status, obj = await request_json(base, "GET", "/boom")
        assert status == 500 and "kaboom" in obj["error"]

    run(scenario)


def test_sync_client_ignores_http_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    async def scenario(port: int) -> None:
        status, _ = await asyncio.to_thread(
            request_json_sync, f"http://127.0.0.1:{port}", "GET", "/z"
        )
        assert status == 200

    run(scenario)


def test_keep_alive_and_pipelining_answer_in_order() -> None:
    async def scenario(port: int) -> None:
        req = "GET {} HTTP/1.1\r\nHost: x\r\n\r\n"
        last = "GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        data = await raw(port, (req.format("/slow") + req.format("/fast") + last).encode())
        got = responses(data)
        assert [obj["path"] for _, obj in got] == ["/slow", "/fast", "/last"]
        assert b"Connection: keep-alive" in data and data.count(b"Connection: close") == 1

    run(scenario)


def test_bodies_over_the_limit_are_refused_with_413() -> None:
    async def scenario(port: int) -> None:
        head = f"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"
        ((status, obj),) = responses(await raw(port, head.encode()))
        assert status == 413 and "larger than" in obj["error"]
        # Chunked with no length given: refused once the limit is passed.
        chunk = b"x" * (MAX_BODY // 2)
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3))
        head = b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        ((status, _),) = responses(await raw(port, head + body + b"0\r\n\r\n"))
        assert status == 413

    run(scenario)


def test_bad_json_and_bad_http_are_400() -> None:
    async def scenario(port: int) -> None:
        base = f"http://127.0.0.1:{port}"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /j HTTP/1.1\r\nHost: x\r\nConnection: close\r\n")
        writer.write(b"Content-Length: 5\r\n\r\n{nope")
        ((status, obj),) = responses(await reader.read())
        writer.close()
        assert status == 400 and "not valid JSON" in obj["error"]
        ((status, obj),) = responses(await raw(port, b"NOT HTTP AT ALL\r\n\r\n"))
        assert status == 400 and "malformed" in obj["error"]
        status, _ = await request_json(base, "GET", "/still-fine")
        assert status == 200

    run(scenario)


def test_async_client_raises_when_nothing_listens() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()

    async def scenario() -> None:
        with pytest.raises(OSError):
            await request_json(f"http://127.0.0.1:{port}", "GET", "/v1/health", timeout=2)

    asyncio.run(scenario())
    with pytest.raises(OSError):
        request_json_sync(f"http://127.0.0.1:{port}", "GET", "/v1/health", timeout=2)
