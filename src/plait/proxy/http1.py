"""The downstream HTTP/1.1 engine: one Protocol per client connection, one Exchange per request.

Theory of operation.

:class:`Http1Server` owns a client connection. httptools (llhttp) parses requests; on a
complete head :func:`~plait.proxy.http1_checks.parse_request_head` validates and
normalizes it (anything ambiguous is answered 400 and the connection closed, never
forwarded), and an :class:`Exchange` is queued. Exchanges run one at a time, in order
(pipelined requests wait, with reading paused, so responses cannot interleave).

An :class:`Exchange` is one request/response through the proxy::

    start -> route (Router) -> cluster (weighted pick) -> endpoint (balancer)
          -> connection (pool: idle one, or a new one within connect_timeout)
          -> head + body upstream -> response head, body, trailers downstream -> finish

Bytes are streamed, never buffered whole: request body pieces go upstream as llhttp
hands them over (re-chunked when chunked), response pieces go downstream the same way.
Flow control couples the two sockets: when one side's write buffer passes its high-water
mark, the other side stops reading until it drains (``pause_reading``/``resume_reading``
driven by ``pause_writing``/``resume_writing``). Before an upstream connection exists,
up to :data:`MAX_PENDING` body bytes are held, then reading pauses.

Failures become local responses with an RFC 9209 ``Proxy-Status`` naming this hop
(``<node>/<direction>``): no config 503, no route 404, no healthy endpoint 503, connect
refused 502, connect timeout 504, reset before the response 502, route timeout 504.
Once response bytes have gone downstream, a failure can only close the connection.
Retries (``route.retry``) apply to requests without a body, before any response byte
was sent, on another endpoint when the balancer offers one. A reused keep-alive
connection that turns out to be dead before answering is retried once on a fresh
connection, outside the retry budget (the server closed it while idle).

``Upgrade`` requests (WebSocket) are forwarded with their Upgrade/Connection fields; on
101 both connections become a raw byte tunnel with the same flow control.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from plait.proxy import proxy_status
from plait.proxy.http1_checks import (
    BODY_CHUNKED,
    BODY_NONE,
    CRLF,
    MAX_HEAD_BYTES,
    HeadRejected,
    RequestHead,
    ResponseHead,
    chunk_prefix,
    parse_request_head,
    parse_response_head,
    render_interim,
    render_last_chunk,
    render_request_head,
    render_response_head,
)
from plait.proxy.proxy_status import (
    CONNECTION_TERMINATED,
    DESTINATION_NOT_FOUND,
    DESTINATION_UNAVAILABLE,
    HTTP_PROTOCOL_ERROR,
    HTTP_REQUEST_ERROR,
    HTTP_RESPONSE_TIMEOUT,
    PROXY_INTERNAL_ERROR,
    STATUS_FOR,
)
from plait.proxy.upstream import ConnectFailed, UpstreamConnection

if TYPE_CHECKING:
    from plait.proxy.dataplane import ClusterState, DataPlane, ListenerSlot
    from plait.proxy.lb import EndpointState
    from plait.proxy.runtime import Route

log = logging.getLogger("plait.proxy.http1")

MAX_PENDING = 256 * 1024  # request body bytes held while no upstream connection exists

# Why downstream reading is paused (a bit set: reading resumes when none is left).
P_UPSTREAM_FULL = 1  # the upstream socket's write buffer is over its high-water mark
P_PENDING = 2  # MAX_PENDING body bytes are waiting for an upstream connection
P_QUEUE = 4  # a pipelined request waits for the one before it
P_UPGRADE = 8  # an upgrade request waits for the upstream's answer

# Which retry_on names (Envoy's) allow a retry after each kind of failure.
_RETRY_CONNECT = frozenset({"connect-failure", "reset", "5xx", "gateway-error"})
_RETRY_RESET = frozenset({"reset", "5xx", "gateway-error"})
_RETRY_GATEWAY_STATUS = frozenset({502, 503, 504})


class HeaderView(Mapping[str, str]):
    """Request headers as the Router wants them (lowercase names); built on first use."""

    __slots__ = ("_head", "_map")

    def __init__(self, head: RequestHead) -> None:
        self._head = head
        self._map: dict[str, str] | None = None

    def _build(self) -> dict[str, str]:
        m: dict[str, str] = {}
        for name, value in self._head.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            m[key] = f"{m[key]},{text}" if key in m else text
        m.setdefault("host", self._head.host.decode("latin-1"))
        self._map = m
        return m

    def __getitem__(self, key: str) -> str:
        m = self._map
        return (self._build() if m is None else m)[key]

    def __iter__(self) -> Iterator[str]:
        m = self._map
        return iter(self._build() if m is None else m)

    def __len__(self) -> int:
        m = self._map
        return len(self._build() if m is None else m)


class Http1Server(asyncio.Protocol):
    """One downstream connection."""

    def __init__(self, dp: DataPlane, listener: ListenerSlot) -> None:
        self.dp = dp
        self.listener = listener
        self.transport: Any = None
        self.parser = HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.current: Exchange | None = None  # the exchange whose request is being read
        self.upgrading: Exchange | None = None
        self.tunnel: Any = None  # upstream transport once a 101 switched protocols
        self.write_paused = False
        self.closing = False
        self._paused = 0
        self._eof = False
        self._draining = False
        self._tunnel_eofs = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._head_bytes = 0
        self._stall = 0
        self._messages = 0

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.dp.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.upgrading is not None:
            self.upgrading.early_data(data)
            return
        if self.closing:
            return
        was_in_head = self._in_head
        messages = self._messages
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgrade_requested(data[exc.args[0] :])
            return
        except HttpParserError as exc:
            self._parse_failed(exc)
            return
        if self._in_head and was_in_head and messages == self._messages:
            # A whole segment inside one unfinished head: bound what llhttp accumulates.
            self._stall += len(data)
            if self._stall > MAX_HEAD_BYTES:
                self.reject(HeadRejected("request header section is larger than 64 KiB", 431))

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            self.tunnel_eof(upstream=False)
            return True
        self._eof = True
        current = self.current
        if self.queue and (current is None or current.request_done or current.done):
            return True  # the request is complete: answer it, then close
        return None  # nothing to answer, or a truncated request: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.dp.connections.discard(self)
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.close()
        queue = list(self.queue)
        self.queue.clear()
        for ex in queue:
            ex.downstream_lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.tunnel is not None:
            self.tunnel.pause_reading()
        elif self.queue:
            self.queue[0].downstream_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.resume_reading()
        elif self.queue:
            self.queue[0].downstream_write_resumed()

    # -- reading control -----------------------------------------------------------------

    def pause(self, reason: int) -> None:
        if not self._paused and not self.closing:
            self.transport.pause_reading()
        self._paused |= reason

    def resume(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and not self.closing:
                self.transport.resume_reading()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.transport.close()

    def drain(self) -> None:
        """Graceful shutdown: finish what is in flight, then close."""
        self._draining = True
        if not self.queue and self.tunnel is None:
            self.close()
        for ex in self.queue:
            ex.close_after = True

    def tunnel_eof(self, upstream: bool) -> None:
        """One side of a tunnel half-closed: pass it on; close when both have."""
        self._tunnel_eofs += 1
        peer = self.transport if upstream else self.tunnel
        if self._tunnel_eofs >= 2 or peer is None:
            if self.tunnel is not None:
                self.tunnel.close()
            self.close()
        elif peer.can_write_eof():
            peer.write_eof()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.closing:  # answered and closing: parse nothing more
            raise HeadRejected("connection is closing")
        self._in_head = True
        self._messages += 1
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._stall = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:  # a trailer field of a chunked request
            if self.current is not None:
                self.current.request_trailer(name, value)
            return
        self._headers.append((name, value))
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadRejected("request header section is larger than 64 KiB", 431)

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        head = parse_request_head(
            parser.get_method(),
            self._url,
            parser.get_http_version(),
            self._headers,
            parser.should_keep_alive(),
        )
        ex = Exchange(self, head)
        self.current = ex
        self.queue.append(ex)
        if len(self.queue) == 1:
            ex.start()
        else:
            self.pause(P_QUEUE)

    def on_body(self, body: bytes) -> None:
        ex = self.current
        if ex is not None:
            ex.request_body(body)

    def on_message_complete(self) -> None:
        ex = self.current
        if ex is not None:
            ex.request_complete()

    # -- errors and endings --------------------------------------------------------------

    def _upgrade_requested(self, rest: bytes) -> None:
        ex = self.current
        if ex is None or ex.done:
            self.close()
            return
        self.upgrading = ex
        self.pause(P_UPGRADE)
        if ex.head is None or ex.head.upgrade is None:
            ex.close_after = True  # an upgrade we do not forward (h2c): answer, then close
        if rest:
            ex.early_data(rest)

    def _parse_failed(self, exc: HttpParserError) -> None:
        if self.closing:
            return
        cause = exc.__context__
        if isinstance(cause, HeadRejected):
            self.reject(cause)
            return
        if cause is not None:
            log.error("error handling a request", exc_info=cause)
            self.reject(HeadRejected("internal error", 500, PROXY_INTERNAL_ERROR))
            return
        ex = self.current
        if not self._in_head and ex is not None and not ex.request_done:
            ex.request_failed(f"malformed request body: {exc}")
            return
        self.reject(HeadRejected(f"malformed request: {exc}"))

    def reject(self, err: HeadRejected) -> None:
        """Answer ``err`` (after responses already owed) and close; stop parsing."""
        self.closing = True  # no more parsing; the transport closes after the answer
        ex = Exchange(self, None, err)
        self.queue.append(ex)
        if len(self.queue) == 1:
            ex.start()

    def exchange_finished(self, ex: Exchange) -> None:
        queue = self.queue
        if queue and queue[0] is ex:
            queue.popleft()
        if self.tunnel is not None:
            return
        if self.upgrading is ex:
            self.upgrading = None
        if ex.close_after or self._draining or (self._eof and not queue):
            self.closing = True
            self.transport.close()
            return
        if self.closing and not queue:
            self.transport.close()
            return
        if len(queue) <= 1:
            self.resume(P_QUEUE)
        if queue:
            queue[0].start()


class Exchange:
    """One request and its response through the proxy."""

    __slots__ = (
        "attempt_no",
        "bytes_in",
        "bytes_out",
        "close_after",
        "cluster",
        "conn",
        "corked",
        "details",
        "done",
        "dp",
        "early",
        "endpoint",
        "error",
        "head",
        "head_bytes",
        "new_request_id",
        "pending",
        "pending_bytes",
        "rejection",
        "request_done",
        "request_id",
        "resp",
        "resp_keep_alive",
        "retries_left",
        "reused",
        "route",
        "server",
        "stale_retried",
        "started",
        "started_at",
        "status",
        "timer",
        "trailers",
        "tried",
        "try_timer",
        "up_paused",
        "upstream_addr",
    )

    def __init__(
        self, server: Http1Server, head: RequestHead | None, rejection: HeadRejected | None = None
    ) -> None:
        dp = server.dp
        self.server = server
        self.dp = dp
        self.head = head
        self.rejection = rejection
        self.started_at = dp.clock()
        received = head.request_id if head is not None else None
        if received:
            self.request_id = received
            self.new_request_id: bytes | None = None
        else:
            self.request_id = self.new_request_id = dp.new_request_id().encode("ascii")
        self.request_done = head is None
        self.close_after = head is None or not head.keep_alive or head.upgrade is not None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.early: list[bytes] | None = None
        self.conn: UpstreamConnection | None = None
        self.cluster: ClusterState | None = None
        self.endpoint: EndpointState | None = None
        self.route: Route | None = None
        self.head_bytes = b""
        self.attempt_no = 0
        self.retries_left = 0
        self.tried: list[tuple[str, int]] = []
        self.upstream_addr: tuple[str, int] | None = None
        self.reused = False
        self.stale_retried = False
        self.resp: ResponseHead | None = None
        self.resp_keep_alive = False
        self.started = False  # a response head was produced (maybe still corked)
        self.corked: bytes | None = None  # response head held to go out with the body
        self.done = False
        self.status = 0
        self.error: str | None = None
        self.details: str | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.try_timer: asyncio.TimerHandle | None = None
        self.up_paused = False
        self.bytes_in = 0
        self.bytes_out = 0

    # -- routing and attempts ------------------------------------------------------------

    def start(self) -> None:
        head = self.head
        if head is None:
            err = self.rejection or HeadRejected("bad request")
            self.local_reply(err.status, err.error, err.details)
            return
        snap = self.dp.snapshot
        if snap is None:
            self.local_reply(503, DESTINATION_UNAVAILABLE, "no config from control plane yet")
            return
        name = self.server.listener.name
        router = snap.routers.get(name)
        if router is None:
            self.local_reply(503, DESTINATION_UNAVAILABLE, f"listener {name!r} has no routes")
            return
        host = head.host.decode("latin-1")
        route = router.match(host, head.path, HeaderView(head))
        if route is None:
            details = f"no route for host {host!r} path {head.path!r}"
            self.local_reply(404, DESTINATION_NOT_FOUND, details)
            return
        cluster_name = router.pick_cluster(route, self.dp.rng)
        cluster = snap.clusters.get(cluster_name)
        if cluster is None:
            details = f"route {route.name!r} names cluster {cluster_name!r}, which is not known"
            self.local_reply(503, DESTINATION_UNAVAILABLE, details)
            return
        self.route = route
        self.cluster = cluster
        if route.retry is not None and not head.has_body and head.upgrade is None:
            self.retries_left = route.retry.num_retries
        self.head_bytes = render_request_head(head, self.dp.via, self.new_request_id)
        if self.request_done and route.timeout:
            self.timer = self.dp.loop.call_later(route.timeout, self._route_timed_out)
        self._attempt()

    def _pick(self, cluster: ClusterState) -> EndpointState | None:
        ep = cluster.balancer.pick()
        tried = self.tried
        if ep is None or not tried:
            return ep
        for _ in range(4):  # prefer an endpoint not tried yet
            e = ep.endpoint
            if (e.address, e.port) not in tried:
                return ep
            ep = cluster.balancer.pick() or ep
        return ep

    def _attempt(self) -> None:
        cluster = self.cluster
        assert cluster is not None
        ep = self._pick(cluster)
        if ep is None:
            details = f"no healthy endpoint in cluster {cluster.name!r}"
            self.local_reply(503, DESTINATION_UNAVAILABLE, details)
            return
        self.attempt_no += 1
        self.endpoint = ep
        ep.start()
        key = (ep.endpoint.address, ep.endpoint.port)
        self.tried.append(key)
        self.upstream_addr = key
        if self.request_done:
            self._arm_try_timer()
        conn = cluster.pool.take(key)
        if conn is not None:
            self._send(conn, True)
        else:
            self.dp.loop.create_task(self._connect(cluster, key, self.attempt_no))

    async def _connect(self, cluster: ClusterState, key: tuple[str, int], attempt: int) -> None:
        try:
            conn = await cluster.pool.connect(key, cluster.config.connect_timeout)
        except ConnectFailed as exc:
            if not self.done and attempt == self.attempt_no:
                self._attempt_failed(exc.error, exc.details, _RETRY_CONNECT)
            return
        except Exception as exc:  # a bug, not the network: say so
            log.exception("connecting to %s:%s", *key)
            if not self.done and attempt == self.attempt_no:
                self._end_attempt(False)
                self.local_reply(500, PROXY_INTERNAL_ERROR, f"connect: {exc!r}")
            return
        if self.done or attempt != self.attempt_no or self.conn is not None:
            cluster.pool.release(conn)  # the exchange moved on: keep the connection
            return
        self._send(conn, False)

    def _send(self, conn: UpstreamConnection, reused: bool) -> None:
        head = self.head
        assert head is not None
        self.conn = conn
        self.reused = reused
        conn.begin(self, head.method == b"HEAD")
        transport = conn.transport
        assert transport is not None
        if self.pending:
            transport.writelines([self.head_bytes, *self.pending])
            self.pending = []
            self.pending_bytes = 0
            self.server.resume(P_PENDING)
        else:
            transport.write(self.head_bytes)
        if self.server.write_paused:
            transport.pause_reading()
            self.up_paused = True

    def _arm_try_timer(self) -> None:
        route = self.route
        if route is None or route.retry is None or not route.retry.per_try_timeout:
            return
        if self.try_timer is not None:
            self.try_timer.cancel()
        self.try_timer = self.dp.loop.call_later(
            route.retry.per_try_timeout, self._try_timed_out, self.attempt_no
        )

    def _end_attempt(self, ok: bool) -> None:
        ep = self.endpoint
        if ep is not None:
            self.endpoint = None
            ep.finish(ok)
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None

    def _drop_upstream(self) -> None:
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.close()
            if self.cluster is not None:
                self.cluster.pool.forget(conn)

    def _attempt_failed(self, error: str, details: str, retry_on: frozenset[str]) -> None:
        self._drop_upstream()
        self._end_attempt(False)
        if self._may_retry(retry_on):
            self._retry()
            return
        self.local_reply(STATUS_FOR.get(error, 502), error, details)

    def _may_retry(self, names: frozenset[str]) -> bool:
        if self.retries_left <= 0 or self.started or self.done:
            return False
        route = self.route
        return route is not None and route.retry is not None and bool(route.retry.retry_on & names)

    def _retriable_status(self, status: int) -> bool:
        if status >= 500:
            names = {"5xx", "gateway-error"} if status in _RETRY_GATEWAY_STATUS else {"5xx"}
        elif status == 409:
            names = {"retriable-4xx"}
        else:
            return False
        return self._may_retry(frozenset(names))

    def _retry(self) -> None:
        self.retries_left -= 1
        self._attempt()

    # -- downstream events ---------------------------------------------------------------

    def request_body(self, data: bytes) -> None:
        if self.done:
            return
        self.bytes_in += len(data)
        head = self.head
        assert head is not None
        conn = self.conn
        if conn is not None and conn.transport is not None:
            if head.chunked:
                conn.transport.writelines((chunk_prefix(len(data)), data, CRLF))
            else:
                conn.transport.write(data)
            return
        if head.chunked:
            self.pending += (chunk_prefix(len(data)), data, CRLF)
        else:
            self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > MAX_PENDING:
            self.server.pause(P_PENDING)

    def request_trailer(self, name: bytes, value: bytes) -> None:
        if self.trailers is None:
            self.trailers = []
        self.trailers.append((name, value))

    def request_complete(self) -> None:
        if self.done or self.request_done:
            return
        self.request_done = True
        head = self.head
        assert head is not None
        if head.chunked:
            tail = render_last_chunk(self.trailers or [])
            conn = self.conn
            if conn is not None and conn.transport is not None:
                conn.transport.write(tail)
            else:
                self.pending.append(tail)
        route = self.route
        if route is not None:
            if route.timeout and self.timer is None:
                self.timer = self.dp.loop.call_later(route.timeout, self._route_timed_out)
            if self.attempt_no and not self.started:
                self._arm_try_timer()

    def request_failed(self, details: str) -> None:
        """The request body turned out malformed: never reuse the upstream connection."""
        self._drop_upstream()
        self._end_attempt(True)
        self.close_after = True
        self.local_reply(400, HTTP_REQUEST_ERROR, details)

    def early_data(self, data: bytes) -> None:
        """Bytes after an upgrade request, held until the upstream switches protocols."""
        if self.early is None:
            self.early = []
        self.early.append(data)

    def downstream_write_paused(self) -> None:
        conn = self.conn
        if conn is not None and conn.transport is not None and not self.up_paused:
            conn.transport.pause_reading()
            self.up_paused = True

    def downstream_write_resumed(self) -> None:
        conn = self.conn
        if self.up_paused and conn is not None and conn.transport is not None:
            conn.transport.resume_reading()
        self.up_paused = False

    def downstream_lost(self) -> None:
        if self.done:
            return
        self._drop_upstream()
        self._end_attempt(True)
        if not self.started:
            self.status = 499
        self.details = "the downstream connection closed before the response was complete"
        self.done = True
        self._cancel_timers()
        self.dp.observe(self)

    # -- upstream events (UpstreamHandler) -----------------------------------------------

    def upstream_head(
        self,
        conn: UpstreamConnection,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
    ) -> None:
        if self.done or conn is not self.conn:
            return
        head = self.head
        assert head is not None
        transport = self.server.transport
        if status < 200 and status != 101:
            if head.version == "1.1":
                transport.write(render_interim(status, reason, headers))
            return
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if self.retries_left > 0 and self._retriable_status(status):
            self._drop_upstream()
            self._end_attempt(False)
            self._retry()
            return
        if status == 101 and head.upgrade is None:
            self._drop_upstream()
            self._end_attempt(False)
            details = "upstream switched protocols without an upgrade request"
            self.local_reply(502, HTTP_PROTOCOL_ERROR, details)
            return
        if not self.request_done and head.has_body:
            self.close_after = True  # an early response: the rest of the request is unread
        try:
            resp = parse_response_head(
                status,
                reason,
                headers,
                request_method=head.method,
                downstream_version=head.version,
                downstream_keep_alive=not self.close_after,
            )
        except HeadRejected as exc:
            self._drop_upstream()
            self._end_attempt(False)
            self.local_reply(exc.status, exc.error, exc.details)
            return
        self.resp = resp
        self.resp_keep_alive = keep_alive
        self.status = status
        if resp.close_downstream:
            self.close_after = True
        ps = None
        if resp.proxy_status is not None:
            ours = proxy_status.entry(self.server.listener.hop, received_status=status)
            ps = proxy_status.append(resp.proxy_status, ours.encode("ascii"))
        self.started = True
        # Held until the first body piece or the end of this read, to save a syscall.
        self.corked = render_response_head(resp, self.dp.via, ps, downstream_version=head.version)

    def upstream_body(self, data: bytes) -> None:
        resp = self.resp
        if resp is None or self.done:
            return
        self.bytes_out += len(data)
        mode = resp.downstream_body
        corked = self.corked
        if corked is None:
            if mode == BODY_CHUNKED:
                self.server.transport.writelines((chunk_prefix(len(data)), data, CRLF))
            elif mode != BODY_NONE:
                self.server.transport.write(data)
            return
        self.corked = None
        if mode == BODY_CHUNKED:
            self.server.transport.writelines((corked, chunk_prefix(len(data)), data, CRLF))
        elif mode != BODY_NONE:
            self.server.transport.writelines((corked, data))
        else:
            self.server.transport.write(corked)

    def uncork(self) -> None:
        """The end of an upstream read: send a response head still held back."""
        corked = self.corked
        if corked is not None:
            self.corked = None
            self.server.transport.write(corked)

    def upstream_complete(
        self, conn: UpstreamConnection, trailers: list[tuple[bytes, bytes]]
    ) -> None:
        if self.done or conn is not self.conn:
            return
        resp = self.resp
        if resp is None:
            return
        self.conn = None
        tail = render_last_chunk(trailers) if resp.downstream_body == BODY_CHUNKED else b""
        corked = self.corked
        if corked is not None:
            self.corked = None
            tail = corked + tail
        if tail:
            self.server.transport.write(tail)
        if self.up_paused and conn.transport is not None:
            conn.transport.resume_reading()
            self.up_paused = False
        cluster = self.cluster
        head = self.head
        assert cluster is not None and head is not None
        if self.resp_keep_alive and self.request_done and head.upgrade is None:
            cluster.pool.release(conn)
        else:
            conn.close()
            cluster.pool.forget(conn)
        self._end_attempt(resp.status < 500)
        if not self.request_done:
            self.close_after = True
        self._finish()

    def upstream_upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        resp = self.resp
        if self.done or conn is not self.conn or resp is None or resp.status != 101:
            conn.close()
            return
        self.conn = None
        server = self.server
        conn.handler = None
        conn.tunnel = server.transport
        server.tunnel = conn.transport
        server.upgrading = None
        self.uncork()
        if rest:
            server.transport.write(rest)
        if self.early:
            server.tunnel.writelines(self.early)
            self.early = None
        server.resume(P_UPGRADE | P_QUEUE | P_PENDING | P_UPSTREAM_FULL)
        self._end_attempt(True)
        self._finish()

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        if self.done or conn is not self.conn:
            return
        self.conn = None
        resp = self.resp
        head = self.head
        assert head is not None
        if resp is not None:
            if (
                exc is None
                and resp.content_length is None
                and not resp.upstream_chunked
                and resp.downstream_body != BODY_NONE
            ):  # a body delimited by the connection's end: complete
                self.uncork()
                if resp.downstream_body == BODY_CHUNKED:
                    self.server.transport.write(render_last_chunk([]))
                self._end_attempt(True)
                if not self.request_done:
                    self.close_after = True
                self._finish()
                return
            self._end_attempt(False)
            self._fail_started(CONNECTION_TERMINATED, "upstream closed the connection mid-response")
            return
        if self.reused and not conn.received and not head.has_body and not self.stale_retried:
            # An idle keep-alive connection the server had closed: not the endpoint's fault.
            self.stale_retried = True
            self._end_attempt(True)
            self.tried.pop()
            self._attempt()
            return
        reason = f": {exc}" if exc is not None else ""
        details = f"upstream closed the connection before responding{reason}"
        self._attempt_failed(CONNECTION_TERMINATED, details, _RETRY_RESET)

    def upstream_error(self, conn: UpstreamConnection, details: str) -> None:
        if self.done or conn is not self.conn:
            return
        self.conn = None
        self._end_attempt(False)
        if self.started:
            self._fail_started(HTTP_PROTOCOL_ERROR, details)
        else:
            self.local_reply(502, HTTP_PROTOCOL_ERROR, details)

    def upstream_write_paused(self) -> None:
        self.server.pause(P_UPSTREAM_FULL)

    def upstream_write_resumed(self) -> None:
        self.server.resume(P_UPSTREAM_FULL)

    # -- timers --------------------------------------------------------------------------

    def _route_timed_out(self) -> None:
        self.timer = None
        if self.done:
            return
        timeout = self.route.timeout if self.route is not None else 0
        details = f"no complete response within the route timeout ({timeout:g}s)"
        self._drop_upstream()
        self._end_attempt(False)
        if self.started:
            self._fail_started(HTTP_RESPONSE_TIMEOUT, details)
        else:
            self.local_reply(504, HTTP_RESPONSE_TIMEOUT, details)

    def _try_timed_out(self, attempt: int) -> None:
        self.try_timer = None
        if self.done or self.started or attempt != self.attempt_no:
            return
        route = self.route
        timeout = route.retry.per_try_timeout if route and route.retry else 0
        details = f"no response within the per-try timeout ({timeout:g}s)"
        self._attempt_failed(HTTP_RESPONSE_TIMEOUT, details, _RETRY_RESET)

    def _cancel_timers(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None

    # -- endings -------------------------------------------------------------------------

    def local_reply(self, status: int, error: str, details: str) -> None:
        """Answer with a response made here, carrying Proxy-Status for this hop."""
        if self.done:
            return
        if self.started:
            self._fail_started(error, details)
            return
        self._drop_upstream()
        self._end_attempt(True)
        head = self.head
        if not self.request_done and (head is None or head.has_body):
            self.close_after = True  # the rest of the request body will not be read
        self.status = status
        self.error = error
        self.details = details
        data = proxy_status.local_response(
            status,
            "",
            self.server.listener.hop,
            error,
            details,
            self.dp.via_text,
            self.request_id.decode("latin-1"),
            self.close_after,
            head=head is not None and head.method == b"HEAD",
        )
        self.started = True
        self.server.transport.write(data)
        self._finish()

    def _fail_started(self, error: str, details: str) -> None:
        """A failure after response bytes went downstream: all we can do is close."""
        self.uncork()
        self.error = error
        self.details = details
        self._drop_upstream()
        self._end_attempt(False)
        self.close_after = True
        self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self._cancel_timers()
        self._end_attempt(True)
        self.dp.observe(self)
        self.server.exchange_finished(self)
