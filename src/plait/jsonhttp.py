"""A small JSON-over-HTTP/1.1 server and client on asyncio, for plait's own APIs.

Server: :func:`serve_json` runs an ``asyncio.Protocol`` per connection with an httptools
parser. HTTP/1.1 with keep-alive (requests on one connection are answered in order),
bodies by Content-Length or chunked, at most :data:`MAX_BODY` bytes (more is answered 413
and the connection closed), an idle connection is closed after :data:`IDLE_TIMEOUT`
seconds. The handler takes a :class:`Request` and returns a :class:`Response` whose body
is any JSON-able object; it may raise :class:`HttpError` for a 4xx/5xx with a message.
Errors always have the body ``{"error": "<what is wrong and what to do>"}``. A body that
is not valid JSON makes ``Request.json()`` raise a 400. Given an ``ssl`` context the
server speaks HTTPS; a request then carries the client's verified certificate, if it sent
one (``Request.peer_cert``, DER), and every request carries the client's address
(``Request.peer``).

Clients: :func:`request_json` (asyncio, one connection per request, ``Connection:
close``) and :func:`request_json_sync` (urllib, for the CLI). Both return ``(status,
obj)`` where ``obj`` is the decoded JSON body (None for an empty body), and raise
``OSError``/``TimeoutError`` when the server cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from ssl import SSLContext
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

import httptools

log = logging.getLogger("plait.jsonhttp")

MAX_BODY = 1024 * 1024
IDLE_TIMEOUT = 75.0
MAX_PIPELINED = 32
LINGER_TIMEOUT = 2.0


class HttpError(Exception):
    """Raise from a handler to answer ``status`` with ``{"error": message, **extra}``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra

    def to_response(self) -> Response:
        return Response(self.status, {"error": self.message, **self.extra})


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # names lowercased
    body: bytes = b""
    peer: str | None = None  # the client's "host:port"
    peer_cert: bytes | None = None  # over TLS: the client's verified leaf certificate (DER)

    def json(self) -> Any:
        """The body decoded as JSON; raises :class:`HttpError` 400 if it is not JSON."""
        if not self.body:
            raise HttpError(400, "the request needs a JSON body")
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HttpError(400, f"the request body is not valid JSON: {exc}") from None


@dataclass
class Response:
    status: int = 200
    body_obj: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, keep_alive: bool) -> bytes:
        body = b"" if self.body_obj is None else json.dumps(self.body_obj).encode() + b"\n"
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {self.status} {reason}"]
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "Connection": "keep-alive" if keep_alive else "close",
            "Cache-Control": "no-store",
            **self.headers,
        }
        lines.extend(f"{k}: {v}" for k, v in headers.items())
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


Handler = Callable[[Request], Awaitable[Response]]


class _JsonHttpProtocol(asyncio.Protocol):
    """One connection: parse requests, answer them in order, keep-alive or close."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: deque[tuple[Request, bool] | Response] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._closing = False
        self._peer: str | None = None
        self._peer_cert: bytes | None = None
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._too_big = False

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple) and len(peername) >= 2:
            self._peer = f"{peername[0]}:{peername[1]}"
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self._peer_cert = ssl_object.getpeercert(binary_form=True) or None
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._idle is not None:
            self._idle.cancel()
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._arm_idle()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Response(400, {"error": "protocol upgrades are not supported"}))
        except httptools.HttpParserError as exc:
            if not self._too_big:
                self._fail(Response(400, {"error": f"malformed HTTP request: {exc}"}))

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY:
            self._body_too_large()

    def on_body(self, body: bytes) -> None:
        if self._too_big:
            return
        self._body += body
        if len(self._body) > MAX_BODY:
            self._body_too_large()

    def on_message_complete(self) -> None:
        if self._too_big or self._closing:
            return
        url = urlsplit(self._url.decode("latin-1"))
        request = Request(
            method=self._parser.get_method().decode("latin-1").upper(),
            path=url.path or "/",
            query=dict(parse_qsl(url.query)),
            headers=self._headers,
            body=bytes(self._body),
            peer=self._peer,
            peer_cert=self._peer_cert,
        )
        self._enqueue((request, self._parser.should_keep_alive()))

    # -- answering ---------------------------------------------------------------------

    def _body_too_large(self) -> None:
        self._too_big = True
        self._fail(Response(413, {"error": f"the request body is larger than {MAX_BODY} bytes"}))

    def _fail(self, response: Response) -> None:
        """Answer with ``response`` after what is queued, then close the connection."""
        self._enqueue(response)
        self._closing = True

    def _enqueue(self, item: tuple[Request, bool] | Response) -> None:
        self._queue.append(item)
        if self._transport is not None and len(self._queue) > MAX_PIPELINED:
            self._transport.pause_reading()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        while self._queue and self._transport is not None:
            item = self._queue.popleft()
            if isinstance(item, Response):
                self._transport.write(item.encode(keep_alive=False))
                self._linger_close()
                return
            request, keep_alive = item
            response = await self._answer(request)
            keep_alive = keep_alive and not (self._closing and not self._queue)
            if self._transport.is_closing():
                return
            self._transport.write(response.encode(keep_alive=keep_alive))
            if not keep_alive:
                self._transport.close()
                return
            if len(self._queue) <= MAX_PIPELINED // 2:
                self._transport.resume_reading()

    async def _answer(self, request: Request) -> Response:
        try:
            return await self._handler(request)
        except HttpError as exc:
            return exc.to_response()
        except Exception as exc:
            log.exception("%s %s failed", request.method, request.path)
            return Response(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})

    def _linger_close(self) -> None:
        """Close after an error answer without losing it: closing a socket with unread
        input (the rest of a refused body) sends a reset that can destroy the answer in
        flight. So send FIN, read and drop input until the peer closes, then close."""
        transport = self._transport
        if transport is None:
            return
        if transport.can_write_eof():
            transport.write_eof()
            transport.resume_reading()
            asyncio.get_running_loop().call_later(LINGER_TIMEOUT, transport.close)
        else:
            transport.close()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(IDLE_TIMEOUT, self._on_idle)

    def _on_idle(self) -> None:
        if (
            self._transport is not None
            and not self._queue
            and (self._worker is None or self._worker.done())
        ):
            self._transport.close()
        else:
            self._arm_idle()


async def serve_json(
    handler: Handler, host: str, port: int, ssl: SSLContext | None = None
) -> asyncio.Server:
    """Start serving ``handler`` on ``host:port`` (port 0 = any free port); HTTPS when
    ``ssl`` is a server context."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _JsonHttpProtocol(handler), host, port, ssl=ssl)


def server_port(server: asyncio.Server) -> int:
    """The port a server from :func:`serve_json` actually bound."""
    return int(server.sockets[0].getsockname()[1])


# -- clients -----------------------------------------------------------------------------


def _decode_body(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"error": body.decode("utf-8", "replace")}


class _ResponseCollector:
    def __init__(self) -> None:
        self.body = bytearray()
        self.done = False

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def request_head(
    method: str,
    host: str,
    port: int,
    target: str,
    content_length: int,
    *,
    json_body: bool,
    headers: dict[str, str] | None = None,
) -> bytes:
    """The head of a one-shot JSON request (``Connection: close``); shared by the HTTP and
    HTTPS (:mod:`plait.identity.https`) clients. ``method`` is sent as given."""
    lines = [
        f"{method} {target} HTTP/1.1",
        f"Host: {host}:{port}",
        "Accept: application/json",
        "Connection: close",
        f"Content-Length: {content_length}",
    ]
    if json_body:
        lines.append("Content-Type: application/json")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_json_response(reader: asyncio.StreamReader) -> tuple[int, Any] | None:
    """Read one HTTP response; ``(status, decoded JSON body)``, or None if the connection
    closed before the response was complete. Raises ``httptools.HttpParserError``."""
    collector = _ResponseCollector()
    parser = httptools.HttpResponseParser(collector)
    while not collector.done:
        chunk = await reader.read(65536)
        if not chunk:
            return None
        parser.feed_data(chunk)
    return parser.get_status_code(), _decode_body(bytes(collector.body))


async def request_json(
    base_url: str, method: str, path: str, body: Any = None, timeout: float = 5.0
) -> tuple[int, Any]:
    """Send one request (JSON ``body`` unless None) and return ``(status, decoded body)``."""
    url = urlsplit(base_url)
    if url.scheme != "http" or not url.hostname:
        raise ValueError(f"expected a base URL like http://127.0.0.1:8080, got {base_url!r}")
    host, port = url.hostname, url.port or 80
    target = url.path.rstrip("/") + path
    payload = b"" if body is None else json.dumps(body).encode()
    head = request_head(
        method.upper(), host, port, target, len(payload), json_body=body is not None
    )

    async def exchange() -> tuple[int, Any]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(head + payload)
            await writer.drain()
            answer = await read_json_response(reader)
            if answer is None:
                raise ConnectionError(f"{base_url}: connection closed before a full response")
            return answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.wait_for(exchange(), timeout)


def request_json_sync(
    base_url: str, method: str, path: str, body: Any = None, timeout: float = 5.0
) -> tuple[int, Any]:
    """Blocking twin of :func:`request_json` (urllib), for the CLI."""
    # imported here: urllib.request pulls in http.client and email (about 3 MB), which
    # the proxy, a user of this module's async client, never needs (docs/internals.md)
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base_url.rstrip("/") + path, data=data, method=method.upper())
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    # Never through an HTTP_PROXY from the environment: the API is reached directly.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, _decode_body(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, _decode_body(err.read())
