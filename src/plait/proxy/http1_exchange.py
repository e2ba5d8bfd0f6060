"""One request through the proxy: the Exchange (router side) and its Attempts (upstream).

Theory of operation. An :class:`Exchange` is one request/response, created by
:class:`~plait.proxy.http1.Http1Server` once a head passed the checks. It walks the
routing levels and makes one :class:`~plait.proxy.http1_attempt.Attempt` per try::

    Exchange.start: listener Router -> route -> weighted cluster -> balancer endpoint
        Attempt.run: pool (idle keep-alive connection, or connect within connect_timeout)
            -> head + body upstream -> response events back to the Exchange
    Exchange: response head, body, trailers downstream -> finish (log, metrics)

The Exchange decides (retry, answer locally, relay); an Attempt only carries out one try
and reports what happened (Envoy's router filter and upstream request; see
:mod:`~plait.proxy.http1_attempt`).

Bytes are streamed, never buffered whole: request body pieces go upstream as llhttp hands
them over (re-chunked when chunked), response pieces go downstream the same way. Flow
control couples the sockets: when one side's write buffer passes its high-water mark,
the other stops reading until it drains. Before an upstream connection exists, up to
:data:`MAX_PENDING` body bytes are held, then downstream reading pauses. A response head
is *corked*: held until the first body piece or the end of that upstream read, so that a
small response leaves in one write.

Failures become local responses with an RFC 9209 ``Proxy-Status`` naming this hop
(``<node>/<direction>``): no config 503, no route 404, no healthy endpoint 503, connect
refused 502, connect timeout 504, reset before the response 502, route timeout 504.
Once a response head has been produced, a failure can only close the connection.
Retries (``route.retry``) cover requests without a body, before any response head, on
another endpoint when the balancer offers one. A reused keep-alive connection found dead
before answering is retried once on a fresh connection, outside the retry budget.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from plait.proxy import proxy_status
from plait.proxy.http1_attempt import (
    NO_RETRY,
    P_PENDING,
    P_QUEUE,
    P_UPGRADE,
    P_UPSTREAM_FULL,
    RETRY_RESET,
    Attempt,
)
from plait.proxy.http1_checks import (
    BODY_CHUNKED,
    BODY_NONE,
    CRLF,
    HeadRejected,
    RequestHead,
    ResponseHead,
    chunk_prefix,
    render_interim,
    render_last_chunk,
    render_request_head,
    render_response_head,
)
from plait.proxy.http1_shapes import fast_response_head
from plait.proxy.proxy_status import (
    CONNECTION_TERMINATED,
    DESTINATION_NOT_FOUND,
    DESTINATION_UNAVAILABLE,
    HTTP_PROTOCOL_ERROR,
    HTTP_REQUEST_DENIED,
    HTTP_REQUEST_ERROR,
    HTTP_RESPONSE_TIMEOUT,
    STATUS_FOR,
)
from plait.proxy.rbac import evaluate as evaluate_rbac

if TYPE_CHECKING:
    from plait.proxy.dataplane import ClusterState, DataPlane
    from plait.proxy.deadlines import Deadline
    from plait.proxy.http1 import Http1Server
    from plait.proxy.lb import EndpointState
    from plait.proxy.runtime import RbacFilter, Route

log = logging.getLogger("plait.proxy.http1")

MAX_PENDING = 256 * 1024  # request body bytes held while no upstream connection exists

_GATEWAY_STATUS = frozenset({502, 503, 504})


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


class Exchange:
    """One request and its response through the proxy."""

    __slots__ = (
        "attempt",
        "attempts",
        "bytes_in",
        "bytes_out",
        "close_after",
        "cluster",
        "corked",
        "details",
        "done",
        "dp",
        "early",
        "error",
        "head",
        "head_bytes",
        "new_request_id",
        "pending",
        "pending_bytes",
        "rbac",
        "rejection",
        "request_done",
        "request_id",
        "resp",
        "resp_keep_alive",
        "retries_left",
        "route",
        "server",
        "stale_retried",
        "started",
        "started_at",
        "status",
        "timer",
        "trailers",
        "tried",
        "up_cork",
        "up_sent",
        "upstream_addr",
    )

    def __init__(
        self, server: Http1Server, head: RequestHead | None, rejection: HeadRejected | None = None
    ) -> None:
        dp = server.dp
        self.server = server
        self.dp: DataPlane = dp
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
        self.up_cork: list[bytes] | None = None  # upstream bytes held until the read ends
        self.up_sent = False  # any byte of this request went to an upstream
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.early: list[bytes] | None = None
        self.route: Route | None = None
        self.cluster: ClusterState | None = None
        self.head_bytes = b""
        self.attempt: Attempt | None = None
        self.attempts = 0
        self.retries_left = 0
        self.tried: list[tuple[str, int]] = []
        self.upstream_addr: tuple[str, int] | None = None
        self.stale_retried = False
        self.resp: ResponseHead | None = None
        self.resp_keep_alive = False
        self.started = False  # a response head was produced (maybe still corked)
        self.corked: bytes | None = None  # response head held to go out with the body
        self.done = False
        self.status = 0
        self.error: str | None = None
        self.details: str | None = None
        self.timer: Deadline | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.rbac: str | None = None  # "would-deny: ..." from an audit-mode policy

    # -- routing and attempts ------------------------------------------------------------

    def start(self) -> None:
        head = self.head
        err = self.rejection
        if err is not None or head is None:
            err = err or HeadRejected("bad request")
            self.local_reply(err.status, err.error, err.details)
            return
        snap = self.dp.snapshot
        if snap is None:
            self.local_reply(503, DESTINATION_UNAVAILABLE, "no config from control plane yet")
            return
        name = self.server.listener.name
        rbac = snap.rbac.get(name)
        if rbac is not None and not self._authorized(rbac):
            return
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
            self.timer = self.dp.timers.call_later(route.timeout, self._route_timed_out)
        self._attempt()

    def _authorized(self, filters: tuple[RbacFilter, ...]) -> bool:
        """RBAC on the peer identity: answer 403 and return False when denied."""
        server = self.server
        denied, would = evaluate_rbac(filters, server.peer)
        if would is not None:
            self.rbac = would
            self.dp.rbac_denied(server.listener, server.peer, shadow=True)
        if denied is None:
            return True
        self.dp.rbac_denied(server.listener, server.peer, shadow=False)
        self.local_reply(403, HTTP_REQUEST_DENIED, denied)
        return False

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
        self.attempts += 1
        attempt = self.attempt = Attempt(self, cluster, ep)
        self.tried.append(attempt.key)
        self.upstream_addr = attempt.key
        if self.request_done:
            self._arm_try_timer(attempt)
        attempt.run()

    def _arm_try_timer(self, attempt: Attempt) -> None:
        route = self.route
        if route is not None and route.retry is not None and route.retry.per_try_timeout:
            attempt.arm_timer(route.retry.per_try_timeout)

    def send_up(self, pieces: list[bytes]) -> None:
        """Write to the attempt's connection; while the downstream read that produced
        the bytes is still being parsed, hold them until it is (``flush_up``), so that a
        request found malformed later in the same read sends nothing upstream at all."""
        if self.server.feeding:
            cork = self.up_cork
            if cork is None:
                self.up_cork = pieces
            else:
                cork += pieces
            return
        attempt = self.attempt
        if attempt is not None:
            self.up_sent = True
            attempt.write(pieces)

    def flush_up(self) -> None:
        """The downstream read is parsed: send what it held for the upstream."""
        cork = self.up_cork
        self.up_cork = None
        attempt = self.attempt
        if cork and not self.done and attempt is not None:
            self.up_sent = True
            attempt.write(cork)

    def take_pending(self) -> list[bytes]:
        """The request bytes held until a connection existed (the attempt sends them)."""
        pending = self.pending
        self.pending = []
        self.pending_bytes = 0
        self.server.resume(P_PENDING)
        return pending

    def attempt_failed(
        self, attempt: Attempt, error: str, details: str, retry_on: frozenset[str]
    ) -> None:
        attempt.end(False)
        if attempt is not self.attempt or self.done:
            return
        if self.started:
            self._fail_started(error, details)
        elif self._may_retry(retry_on):
            self._retry()
        else:
            self.local_reply(STATUS_FOR.get(error, 502), error, details)

    def _may_retry(self, names: frozenset[str]) -> bool:
        if self.retries_left <= 0 or self.started or self.done:
            return False
        route = self.route
        return route is not None and route.retry is not None and bool(route.retry.retry_on & names)

    def _retriable_status(self, status: int) -> bool:
        if status >= 500:
            names = {"5xx", "gateway-error"} if status in _GATEWAY_STATUS else {"5xx"}
        elif status == 409:
            names = {"retriable-4xx"}
        else:
            return False
        return self._may_retry(frozenset(names))

    def _retry(self) -> None:
        self.retries_left -= 1
        self._attempt()

    def _end_attempt(self, ok: bool) -> None:
        attempt = self.attempt
        if attempt is not None:
            attempt.end(ok)

    # -- downstream events ---------------------------------------------------------------

    def request_body(self, data: bytes) -> None:
        if self.done:
            return
        self.bytes_in += len(data)
        head = self.head
        assert head is not None
        attempt = self.attempt
        if attempt is not None and attempt.conn is not None:
            if head.chunked:
                self.send_up([chunk_prefix(len(data)), data, CRLF])
            else:
                self.send_up([data])
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
            attempt = self.attempt
            if attempt is not None and attempt.conn is not None:
                self.send_up([tail])
            else:
                self.pending.append(tail)
        route = self.route
        if route is not None:
            if route.timeout and self.timer is None:
                self.timer = self.dp.timers.call_later(route.timeout, self._route_timed_out)
            if self.attempt is not None and not self.started:
                self._arm_try_timer(self.attempt)

    def request_failed(self, details: str) -> None:
        """The request body turned out malformed: never reuse the upstream connection."""
        self.close_after = True
        self.server.closing = True  # nothing after this request can be trusted
        queue = self.server.queue
        if queue and queue[0] is not self:  # pipelined: answer in turn
            self.rejection = HeadRejected(details)
            return
        self.up_cork = None
        attempt = self.attempt
        if attempt is not None:  # a connection that got nothing of this request is clean
            attempt.end(True, keep=not self.up_sent and attempt.conn is not None)
        self.local_reply(400, HTTP_REQUEST_ERROR, details)

    def early_data(self, data: bytes) -> None:
        """Bytes after an upgrade request, held until the upstream switches protocols."""
        if self.early is None:
            self.early = []
        self.early.append(data)

    def downstream_write_paused(self) -> None:
        if self.attempt is not None:
            self.attempt.pause_reading()

    def downstream_write_resumed(self) -> None:
        if self.attempt is not None:
            self.attempt.resume_reading()

    def downstream_lost(self) -> None:
        if self.done:
            return
        self._end_attempt(True)
        if not self.started:
            self.status = 499
        self.details = "the downstream connection closed before the response was complete"
        self.done = True
        self._cancel_timer()
        self.dp.observe(self)
        self.attempt = None  # no Exchange <-> Attempt cycle left behind

    # -- responses (from the current attempt) --------------------------------------------

    def response_head(
        self,
        attempt: Attempt,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
    ) -> None:
        if self.done or attempt is not self.attempt:
            return
        head = self.head
        assert head is not None
        if status < 200 and status != 101:
            if head.version == "1.1":
                self.server.transport.write(render_interim(status, reason, headers))
            return
        if attempt.timer is not None:
            attempt.timer.cancel()
            attempt.timer = None
        if self.retries_left > 0 and self._retriable_status(status):
            attempt.end(False)
            self._retry()
            return
        if status == 101 and head.upgrade is None:
            details = "upstream switched protocols without an upgrade request"
            self.attempt_failed(attempt, HTTP_PROTOCOL_ERROR, details, NO_RETRY)
            return
        if not self.request_done and head.has_body:
            self.close_after = True  # an early response: the rest of the request is unread
        try:
            resp = fast_response_head(
                status, reason, headers, head.method, head.version, not self.close_after
            )
        except HeadRejected as exc:
            attempt.end(False)
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
        self.corked = render_response_head(resp, self.dp.via, ps, downstream_version=head.version)

    def response_body(self, data: bytes) -> None:
        resp = self.resp
        if resp is None or self.done:
            return
        self.bytes_out += len(data)
        mode = resp.downstream_body
        transport = self.server.transport
        corked = self.corked
        if corked is None:
            if mode == BODY_CHUNKED:
                transport.writelines((chunk_prefix(len(data)), data, CRLF))
            elif mode != BODY_NONE:
                transport.write(data)
            return
        self.corked = None
        if mode == BODY_CHUNKED:
            transport.writelines((corked, chunk_prefix(len(data)), data, CRLF))
        elif mode != BODY_NONE:
            transport.writelines((corked, data))
        else:
            transport.write(corked)

    def uncork(self) -> None:
        """Send a response head still held back (the upstream read ended)."""
        corked = self.corked
        if corked is not None:
            self.corked = None
            self.server.transport.write(corked)

    def response_complete(self, attempt: Attempt, trailers: list[tuple[bytes, bytes]]) -> None:
        resp = self.resp
        if self.done or attempt is not self.attempt or resp is None:
            return
        tail = render_last_chunk(trailers) if resp.downstream_body == BODY_CHUNKED else b""
        corked = self.corked
        if corked is not None:
            self.corked = None
            tail = corked + tail
        if tail:
            self.server.transport.write(tail)
        head = self.head
        assert head is not None
        keep = self.resp_keep_alive and self.request_done and head.upgrade is None
        attempt.end(resp.status < 500, keep)
        if not self.request_done:
            self.close_after = True
        self._finish()

    def response_upgraded(self, attempt: Attempt, rest: bytes) -> None:
        resp = self.resp
        if self.done or attempt is not self.attempt or resp is None or resp.status != 101:
            self.attempt_failed(attempt, HTTP_PROTOCOL_ERROR, "unexpected upgrade", NO_RETRY)
            return
        conn = attempt.detach()
        server = self.server
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
        self._finish()

    def upstream_gone(self, attempt: Attempt, received: bool, exc: Exception | None) -> None:
        """The attempt's connection closed before the response was complete."""
        if self.done or attempt is not self.attempt:
            attempt.end(False)
            return
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
                attempt.end(True)
                if not self.request_done:
                    self.close_after = True
                self._finish()
                return
            details = "upstream closed the connection mid-response"
            self.attempt_failed(attempt, CONNECTION_TERMINATED, details, NO_RETRY)
            return
        if attempt.reused and not received and not head.has_body and not self.stale_retried:
            # An idle keep-alive connection the server had closed: not the endpoint's fault.
            self.stale_retried = True
            attempt.end(True)
            self.tried.pop()
            self._attempt()
            return
        reason = f": {exc}" if exc is not None else ""
        details = f"upstream closed the connection before responding{reason}"
        self.attempt_failed(attempt, CONNECTION_TERMINATED, details, RETRY_RESET)

    # -- endings -------------------------------------------------------------------------

    def _route_timed_out(self) -> None:
        self.timer = None
        if self.done:
            return
        timeout = self.route.timeout if self.route is not None else 0
        details = f"no complete response within the route timeout ({timeout:g}s)"
        self._end_attempt(False)
        if self.started:
            self._fail_started(HTTP_RESPONSE_TIMEOUT, details)
        else:
            self.local_reply(504, HTTP_RESPONSE_TIMEOUT, details)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def local_reply(self, status: int, error: str, details: str) -> None:
        """Answer with a response made here, carrying Proxy-Status for this hop."""
        if self.done:
            return
        if self.started:
            self._fail_started(error, details)
            return
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
        """A failure after the response head: all that is left is to close."""
        self.uncork()
        self.error = error
        self.details = details
        self._end_attempt(False)
        self.close_after = True
        self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self._cancel_timer()
        self._end_attempt(True)
        self.dp.observe(self)
        # Break the Exchange <-> Attempt cycle: reference counting frees both now, instead
        # of leaving every request to the cyclic collector (a third of its cost was that).
        self.attempt = None
        self.server.exchange_finished(self)
