"""Upstream HTTP/1.1 connections and the per-cluster connection pool.

An :class:`UpstreamConnection` is an asyncio Protocol around one TCP connection to an
endpoint. It parses responses with httptools (llhttp) and reports them, as past-tense
facts, to whoever holds it: an object with the :class:`UpstreamHandler` methods (the
downstream exchange in :mod:`plait.proxy.http1`). It never decides anything about the
request; it only frames what the parser saw:

- ``upstream_head``: a response head (1xx interim, 101 and final heads alike), and
  its :class:`WholeResponse` when it is a remembered one (the same head bytes again);
- ``upstream_body``: a piece of the body, as llhttp delivered it (no copies);
- ``upstream_complete``: the message ended (with its trailers, if chunked);
- ``upstream_upgraded``: a 101 was parsed; the bytes after it start the tunnel;
- ``upstream_lost``: the connection closed or failed (``exc`` None for a clean EOF);
- ``upstream_error``: the response is malformed (the connection is already closed);
- ``upstream_write_paused`` / ``upstream_write_resumed``: flow control, so the
  downstream side can stop reading while the upstream socket's buffer is full;
- ``uncork``: the end of one read of the socket (output held back may go now).

llhttp cannot be told that a response answers a HEAD request, so for HEAD the
connection ends the message itself after the head and starts a fresh parser.

:class:`UpstreamPool` keeps idle connections per endpoint for reuse (LIFO, at most
``max_idle`` per endpoint, dropped after ``idle_timeout``) and opens new ones with the
cluster's connect timeout. A connection returns to the pool only when its response was
complete, the request was fully sent and the server allowed keep-alive.

mTLS clusters key their connections by ``(address, port, local identity)``: a connection
made with one local service's certificate is never reused for another's. A TLS connect
hands back the connection only after the handshake and the server's identity check
(:func:`~plait.proxy.peer_identity.check_peer` against the cluster's ``server_sans``),
before any request byte is written.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Protocol

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from plait.proxy import tls_transport
from plait.proxy.http1_whole import WholeResponse, remember_response
from plait.proxy.http1_whole import hits as _whole_hits
from plait.proxy.http1_whole import responses as _whole_responses
from plait.proxy.peer_identity import PeerRejected, check_peer, trust_domain_of
from plait.proxy.proxy_status import HTTP_PROTOCOL_ERROR
from plait.proxy.write_behind import HeldWrites, WriteBehind

if TYPE_CHECKING:
    from plait.proxy.http1_exchange import Exchange

log = logging.getLogger("plait.proxy.upstream")

# (address, port), or (address, port, local identity) for an mTLS connection
EndpointKey = tuple[Any, ...]
TlsOrigin = tuple[ssl.SSLContext, tuple[str, ...]]  # client context, server SANs expected


class UpstreamHandler(Protocol):
    def upstream_head(
        self,
        conn: UpstreamConnection,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        whole: WholeResponse | None = None,
    ) -> None: ...
    def upstream_body(self, data: bytes) -> None: ...
    def upstream_complete(
        self, conn: UpstreamConnection, trailers: list[tuple[bytes, bytes]]
    ) -> None: ...
    def upstream_upgraded(self, conn: UpstreamConnection, rest: bytes) -> None: ...
    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None: ...
    def upstream_error(
        self, conn: UpstreamConnection, details: str, error: str = HTTP_PROTOCOL_ERROR
    ) -> None: ...
    def upstream_write_paused(self) -> None: ...
    def upstream_write_resumed(self) -> None: ...
    def uncork(self) -> None: ...


class ConnectFailed(Exception):
    """Opening a connection failed; ``error`` is the RFC 9209 error type."""

    def __init__(self, error: str, details: str) -> None:
        super().__init__(details)
        self.error = error
        self.details = details


class _StopParsing(Exception):
    """Raised from a parser callback to end a message llhttp would keep reading."""


class _HeadTooLarge(Exception):
    """Raised from a parser callback: the response header section is over the limit."""


MAX_RESPONSE_HEAD = 64 * 1024
_find: Final = bytes.find  # called unbound: no method lookup per response
HEAD_TOO_LARGE = "http_response_header_section_size"


class _Closed:
    """What a closed connection's parser reports to (nothing is fed to it)."""


_CLOSED_PARSER = HttpResponseParser(_Closed())


class UpstreamConnection(asyncio.Protocol):
    """One connection to an endpoint; serves one request at a time."""

    __slots__ = (
        "_head_bytes",
        "_head_request",
        "_headers",
        "_in_body",
        "_interim",
        "_last_head",
        "_reason",
        "_stopped",
        "_trailers",
        "closed",
        "handler",
        "idle_since",
        "key",
        "parser",
        "pool",
        "received",
        "requests",
        "send",
        "send_all",
        "transport",
        "tunnel",
    )

    # The transport's write and writelines, bound at connection_made: a request's writes
    # call them without looking the method up on the transport each time.
    send: Callable[[bytes], object]
    send_all: Callable[[Iterable[bytes]], object]

    def __init__(self, pool: UpstreamPool | None, key: EndpointKey) -> None:
        self.pool = pool
        self.key = key
        # the transport, or on a running proxy a HeldWrites over it (write_behind)
        self.transport: Any = None
        self.parser = HttpResponseParser(self)
        # Exchange named first: compiled, a call on the handler checks for it and makes
        # a direct call, and only another UpstreamHandler's method is looked up by name
        self.handler: Exchange | UpstreamHandler | None = None
        self.tunnel: Any = None  # the downstream transport once a 101 switched protocols
        self.closed = False
        self.requests = 0
        self.received = False  # any byte of the current response seen
        self.idle_since = 0.0
        self._headers: list[tuple[bytes, bytes]] = []
        self._trailers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._in_body = False
        self._interim = False
        self._head_request = False
        self._head_bytes = 0
        self._stopped = False
        self._last_head: tuple[int, bytes, list[tuple[bytes, bytes]], bool] | None = None

    # -- used by the exchange ------------------------------------------------------------

    def begin(self, handler: UpstreamHandler, head_request: bool) -> None:
        """Bind the connection to the next request's handler."""
        self.handler = handler
        self.requests += 1
        self.received = False
        self._head_request = head_request

    def close(self) -> None:
        """Close now, dropping unsent data; nobody is told (the caller knows)."""
        self.handler = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # On a running proxy the requests wait for the loop iteration's end, as the
        # writes to clients do (plait.proxy.write_behind).
        pool = self.pool
        behind = pool.write_behind if pool is not None else None
        self.transport = transport if behind is None else HeldWrites(transport, behind)
        self.send = self.transport.write
        self.send_all = self.transport.writelines

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        self.received = True
        watch = False
        if not self._in_body:  # a head starts or goes on: count its bytes (upper bound)
            if not self._head_bytes and not self._head_request and self.handler is not None:
                # Between messages, where a response may come whole in one read.
                end = _find(data, b"\r\n\r\n") + 4
                whole = _whole_responses.get(data[:end]) if end > 4 else None  # http1_whole
                if whole is not None and len(data) - end == whole.length:
                    self._whole(whole, data, end)
                    return
                watch = True
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
            handler = self.handler
            if handler is not None:
                handler.uncork()  # the end of this read: flush a held-back response head
            elif watch and not self._in_body and not self.closed:
                self._remember_whole(data)
            # a head still incomplete: bound what llhttp holds
            if not self._in_body and self._head_bytes > 2 * MAX_RESPONSE_HEAD:
                self.close()
                if handler is not None:
                    details = "upstream response header section is larger than 64 KiB"
                    handler.upstream_error(self, details, HEAD_TOO_LARGE)
        except HttpParserUpgrade as upgrade:  # a name apart (plait.proxy.native)
            handler = self.handler
            if handler is not None:
                handler.upstream_upgraded(self, data[upgrade.args[0] :])
        except HttpParserError as exc:
            if self._stopped:  # HEAD response ended by us; the connection stays usable
                self._stopped = False
                self._in_body = False
                self.parser = HttpResponseParser(self)
                return
            handler = self.handler
            self.close()
            if handler is not None:
                cause = exc.__context__
                if isinstance(cause, _HeadTooLarge):
                    details = "upstream response header section is larger than 64 KiB"
                    handler.upstream_error(self, details, HEAD_TOO_LARGE)
                elif cause is not None and not isinstance(cause, _StopParsing):
                    log.exception("error in a response handler", exc_info=cause)
                    handler.upstream_lost(self, exc)
                else:
                    handler.upstream_error(self, f"malformed response from upstream: {exc}")

    def _whole(self, whole: WholeResponse, data: bytes, end: int) -> None:
        """A read that is one whole response whose head llhttp parsed before, body
        included (:mod:`~plait.proxy.http1_whole`): what its callbacks would do, without
        them."""
        handler = self.handler
        assert handler is not None
        _whole_hits[1] += 1
        try:
            self._in_body = True  # on_headers_complete (a final status: not interim)
            handler.upstream_head(
                self, whole.status, whole.reason, whole.headers, whole.keep_alive, whole
            )
            if whole.length:
                handler = self.handler
                if handler is not None:
                    handler.upstream_body(data[end:])  # on_body
            self._in_body = False  # on_message_complete
            handler = self.handler
            self.handler = None
            if handler is not None:
                handler.upstream_complete(self, self._trailers)
        except Exception as exc:  # as a callback's exception inside feed_data
            self._in_body = False
            handler = self.handler
            self.close()
            if handler is not None:
                log.exception("error in a response handler", exc_info=exc)
                handler.upstream_lost(self, exc)

    def _remember_whole(self, data: bytes) -> None:
        """The read held exactly one response (:func:`~plait.proxy.http1_whole.
        remember_response` checks that its body was all of the rest)."""
        last = self._last_head
        self._last_head = None
        if last is not None:
            remember_response(data, *last)

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            self.tunnel.get_protocol().tunnel_eof(upstream=True)
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        # The parser holds this protocol: a cycle that only a full collection would find
        # once a long-lived connection is in the oldest generation (and main.settle_gc
        # makes those rare). Dropping the parser lets reference counting free both now.
        self.parser = _CLOSED_PARSER
        if self.pool is not None:
            self.pool.forget(self)
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        handler = self.handler
        self.handler = None
        if handler is not None:
            handler.upstream_lost(self, exc)

    def pause_writing(self) -> None:
        handler = self.handler
        if handler is not None:
            handler.upstream_write_paused()
        elif self.tunnel is not None:
            self.tunnel.pause_reading()

    def resume_writing(self) -> None:
        handler = self.handler
        if handler is not None:
            handler.upstream_write_resumed()
        elif self.tunnel is not None:
            self.tunnel.resume_reading()

    # -- httptools callbacks -------------------------------------------------------------

    # The head's lists are handed over and replaced in on_headers_complete, the trailers
    # in on_message_complete.

    def on_message_begin(self) -> None:
        if self.handler is None:
            # Bytes of a response nobody asked for: after the last one in the same read,
            # or to an idle connection. Kept, they would answer the next request sent on
            # this connection (response queue poisoning): close it instead.
            raise _StopParsing

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_body:
            self._trailers.append((name, value))
        else:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._head_bytes > MAX_RESPONSE_HEAD:  # the reads so far allow a large head
            size = sum([len(n) + len(v) + 4 for n, v in self._headers])
            if size > MAX_RESPONSE_HEAD:
                raise _HeadTooLarge
        parser = self.parser
        status = parser.get_status_code()
        self._in_body = True
        self._head_bytes = 0
        self._interim = 100 <= status < 200  # 101 too: its end is not the exchange's
        handler = self.handler
        headers = self._headers
        reason = self._reason
        self._headers = []
        self._reason = b""
        if handler is None:
            raise _StopParsing
        keep_alive = parser.should_keep_alive()
        self._last_head = (status, reason, headers, keep_alive)
        handler.upstream_head(self, status, reason, headers, keep_alive)
        if self._head_request and not self._interim and status != 101:
            # llhttp would wait for a body that a response to HEAD never has.
            handler = self.handler
            self.handler = None
            if handler is not None:
                handler.upstream_complete(self, [])
            self._stopped = True
            raise _StopParsing

    def on_body(self, body: bytes) -> None:
        handler = self.handler
        if handler is not None:
            handler.upstream_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False  # what follows starts the next message's head
        if self._interim:
            self._interim = False
            return
        handler = self.handler
        self.handler = None
        trailers = self._trailers
        if trailers:
            self._trailers = []
        if handler is not None:
            handler.upstream_complete(self, trailers)


class UpstreamPool:
    """Connections to one cluster's endpoints, idle ones kept per endpoint for reuse."""

    __slots__ = (
        "_active",
        "_clock",
        "_idle",
        "cluster",
        "connects",
        "idle_timeout",
        "max_idle",
        "on_connect",
        "write_behind",
    )

    def __init__(
        self,
        cluster: str,
        *,
        max_idle: int = 64,
        idle_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        on_connect: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.on_connect = on_connect
        # the DataPlane's, once it is bound: new connections hold their writes
        self.write_behind: WriteBehind | None = None
        self.connects = 0
        self._clock = clock
        self._idle: dict[EndpointKey, list[UpstreamConnection]] = {}
        self._active: set[UpstreamConnection] = set()

    def take(self, key: EndpointKey) -> UpstreamConnection | None:
        """An idle connection to ``key`` (most recently used first), or None."""
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest_ok = self._clock() - self.idle_timeout
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if conn.idle_since < oldest_ok:
                conn.close()
                continue
            self._active.add(conn)
            return conn
        return None

    async def connect(
        self, key: EndpointKey, timeout: float, tls: TlsOrigin | None = None
    ) -> UpstreamConnection:
        """A new connection to ``key``; raises :class:`ConnectFailed`."""
        loop = asyncio.get_running_loop()
        self.connects += 1
        try:
            if tls is None:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: UpstreamConnection(self, key), key[0], key[1]),
                    timeout,
                )
            else:
                conn = await asyncio.wait_for(self._connect_tls(key, tls, timeout), timeout)
        # Each handler names its exception apart, and reads its attributes through Any:
        # compiled (plait.proxy.native), a name is one variable of one type, and an
        # attribute typeshed calls str is checked to be one, while reason,
        # verify_message and strerror can be None.
        except ssl.SSLCertVerificationError as cert_error:
            self._count(False)
            bad: Any = cert_error
            details = f"{key[0]}:{key[1]}: {bad.verify_message or bad.reason or bad}"
            raise ConnectFailed("tls_certificate_error", details) from None
        except ssl.SSLError as tls_error:
            self._count(False)
            failed: Any = tls_error
            error = "tls_alert_received" if "ALERT" in str(failed.reason) else "tls_protocol_error"
            raise ConnectFailed(
                error, f"{key[0]}:{key[1]}: TLS: {failed.reason or failed}"
            ) from None
        except TimeoutError:
            self._count(False)
            raise ConnectFailed(
                "connection_timeout", f"connect to {key[0]}:{key[1]} timed out after {timeout}s"
            ) from None
        except OSError as os_error:
            self._count(False)
            refused: Any = os_error
            if refused.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                raise ConnectFailed(
                    "destination_ip_unroutable", f"{key[0]}:{key[1]}: {refused.strerror}"
                ) from None
            reason = refused.strerror or str(refused)
            raise ConnectFailed("connection_refused", f"{key[0]}:{key[1]}: {reason}") from None
        self._count(True)
        self._active.add(conn)
        return conn

    async def _connect_tls(
        self, key: EndpointKey, tls: TlsOrigin, timeout: float
    ) -> UpstreamConnection:
        ctx, sans = tls
        conn = UpstreamConnection(self, key)
        await tls_transport.connect(ctx, (key[0], key[1]), conn, timeout)
        transport = conn.transport
        sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        domain = trust_domain_of(sans[0]) if sans else None
        verdict = check_peer(der, domain, sans)
        if isinstance(verdict, PeerRejected):
            conn.close()
            self._count(False)
            raise ConnectFailed("tls_certificate_error", f"{key[0]}:{key[1]}: {verdict.reason}")
        return conn

    def _count(self, ok: bool) -> None:
        if self.on_connect is not None:
            self.on_connect(self.cluster, ok)

    def release(self, conn: UpstreamConnection) -> None:
        """Give back a connection whose exchange completed cleanly."""
        self._active.discard(conn)
        conn.handler = None
        if conn.closed or conn.pool is not self:
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = self._clock()
        idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """The connection closed: drop it from the idle list."""
        self._active.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def retain(self, keys: Iterable[EndpointKey]) -> None:
        """Close idle connections to endpoints no longer in the cluster."""
        keep = set(keys)
        for key in [k for k in self._idle if k[:2] not in keep]:
            for conn in self._idle.pop(key):
                conn.close()

    def close(self) -> None:
        """Close every idle connection (active ones end with their exchange)."""
        self.retain(())

    def snapshot(self) -> dict[str, object]:
        return {
            "connects": self.connects,
            "active": len(self._active),
            "idle": {":".join(map(str, k)): len(v) for k, v in self._idle.items() if v},
        }
