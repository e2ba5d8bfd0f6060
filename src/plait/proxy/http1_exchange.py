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
:mod:`~plait.proxy.http1_attempt`). The Exchange is in three parts: the pure decisions
(routing levels, endpoint choice, retry policy) in :mod:`~plait.proxy.http1_route`; its
state, tries, timers and endings in :class:`~plait.proxy.http1_dispatch.Dispatch`, its
base; and here, the events it receives -- from the downstream connection (the request
body going up) and from the current attempt (the response relayed down).

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
from typing import TYPE_CHECKING

from plait.proxy import proxy_status
from plait.proxy.http1_attempt import (
    NO_RETRY,
    P_PENDING,
    P_QUEUE,
    P_UPGRADE,
    P_UPSTREAM_FULL,
    RETRY_RESET,
)
from plait.proxy.http1_checks import (
    BODY_CHUNKED,
    BODY_NONE,
    CRLF,
    HeadRejected,
    chunk_prefix,
    render_interim,
    render_last_chunk,
    render_response_head,
)
from plait.proxy.http1_dispatch import MAX_PENDING, Dispatch
from plait.proxy.http1_route import HeaderView
from plait.proxy.http1_shapes import fast_response_head
from plait.proxy.proxy_status import CONNECTION_TERMINATED, HTTP_PROTOCOL_ERROR, HTTP_REQUEST_ERROR

if TYPE_CHECKING:
    from plait.proxy.http1_whole import WholeResponse
    from plait.proxy.upstream import UpstreamConnection

__all__ = ["MAX_PENDING", "Exchange", "HeaderView"]

# Downstream heads made per remembered upstream head (WholeResponse.heads): one per
# request method, version, keep-alive and proxy (Via) it answered.
MAX_MADE = 16

log = logging.getLogger("plait.proxy.http1")


class Exchange(Dispatch):
    """One request and its response through the proxy: :class:`Dispatch` (state, routing,
    tries, endings) and here the events that drive it, from downstream and upstream."""

    __slots__ = ()

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
        pending = self.pending
        if pending is None:
            pending = self.pending = []
        if head.chunked:
            pending += (chunk_prefix(len(data)), data, CRLF)
        else:
            pending.append(data)
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
            elif self.pending is None:
                self.pending = [tail]
            else:
                self.pending.append(tail)
        route = self.route
        if route is not None:
            if route.timeout and not self.timer:
                self.timer = True
                self.dp.timers.arm(self, route.timeout)
            if route.retry is not None and self.attempt is not None and not self.started:
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

    # The Exchange is the UpstreamHandler of its current attempt's connection: a
    # connection reports to it only while that attempt holds it (Attempt.end, detach and
    # the connection's own failures unbind it first), so every event here is the
    # current attempt's.

    def upstream_head(
        self,
        conn: UpstreamConnection,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        whole: WholeResponse | None = None,
    ) -> None:
        attempt = self.attempt
        if self.done or attempt is None:
            return
        head = self.head
        assert head is not None
        if status < 200 and status != 101:
            if head.version == "1.1":
                self.server.send(render_interim(status, reason, headers))
            return
        if attempt.timeout:
            attempt.disarm()
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
        made = None
        if whole is not None:  # the same head bytes as before: perhaps made already
            key = (head.method, head.version, self.close_after, self.dp.via)
            made = whole.heads.get(key)
        if made is None:
            try:
                resp = fast_response_head(
                    status, reason, headers, head.method, head.version, not self.close_after
                )
            except HeadRejected as exc:
                attempt.end(False)
                self.local_reply(exc.status, exc.error, exc.details)
                return
            ps = None
            if resp.proxy_status is not None:  # names this hop: made per request
                ours = proxy_status.entry(self.server.listener.hop, received_status=status)
                ps = proxy_status.append(resp.proxy_status, ours.encode("ascii"))
            rendered = render_response_head(resp, self.dp.via, ps, downstream_version=head.version)
            if whole is not None and ps is None and len(whole.heads) < MAX_MADE:
                whole.heads[key] = resp, rendered
        else:
            resp, rendered = made
        self.resp = resp
        self.resp_keep_alive = keep_alive
        self.status = status
        if resp.close_downstream:
            self.close_after = True
        self.started = True
        self.corked = rendered

    def upstream_body(self, data: bytes) -> None:
        resp = self.resp
        if resp is None or self.done:
            return
        self.bytes_out += len(data)
        mode = resp.downstream_body
        server = self.server
        corked = self.corked
        if corked is None:
            if mode == BODY_CHUNKED:
                server.send_all((chunk_prefix(len(data)), data, CRLF))
            elif mode != BODY_NONE:
                server.send(data)
            return
        self.corked = None
        if mode == BODY_CHUNKED:
            server.send_all((corked, chunk_prefix(len(data)), data, CRLF))
        elif mode != BODY_NONE:
            server.send_all((corked, data))
        else:
            server.send(corked)

    def upstream_complete(
        self, conn: UpstreamConnection, trailers: list[tuple[bytes, bytes]]
    ) -> None:
        resp = self.resp
        attempt = self.attempt
        if self.done or attempt is None or resp is None:
            return
        tail = render_last_chunk(trailers) if resp.downstream_body == BODY_CHUNKED else b""
        corked = self.corked
        if corked is not None:
            self.corked = None
            tail = corked + tail
        if tail:
            self.server.send(tail)
        head = self.head
        assert head is not None
        keep = self.resp_keep_alive and self.request_done and head.upgrade is None
        attempt.end(resp.status < 500, keep)
        if not self.request_done:
            self.close_after = True
        self._finish()

    def upstream_upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        resp = self.resp
        attempt = self.attempt
        if attempt is None:
            conn.close()
            return
        if self.done or resp is None or resp.status != 101:
            self.attempt_failed(attempt, HTTP_PROTOCOL_ERROR, "unexpected upgrade", NO_RETRY)
            return
        conn = attempt.detach()
        server = self.server
        conn.tunnel = server.transport
        server.tunnel = conn.transport
        server.upgrading = None
        self.uncork()
        if rest:
            server.send(rest)
        if self.early:
            server.tunnel.writelines(self.early)
            self.early = None
        server.resume(P_UPGRADE | P_QUEUE | P_PENDING | P_UPSTREAM_FULL)
        self._finish()

    def upstream_error(
        self, conn: UpstreamConnection, details: str, error: str = HTTP_PROTOCOL_ERROR
    ) -> None:
        """The response is malformed; the connection is already closed."""
        attempt = self.attempt
        if attempt is not None:
            attempt.conn = None
            self.attempt_failed(attempt, error, details, NO_RETRY)

    def upstream_write_paused(self) -> None:
        self.server.pause(P_UPSTREAM_FULL)

    def upstream_write_resumed(self) -> None:
        self.server.resume(P_UPSTREAM_FULL)

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        """The attempt's connection closed before the response was complete."""
        attempt = self.attempt
        if attempt is None:
            return
        attempt.conn = None
        received = conn.received
        if self.done:
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
                    self.server.send(render_last_chunk([]))
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
            self.tried = self.tried[:-1]
            self._attempt()
            return
        reason = f": {exc}" if exc is not None else ""
        details = f"upstream closed the connection before responding{reason}"
        self.attempt_failed(attempt, CONNECTION_TERMINATED, details, RETRY_RESET)
