"""One try of an exchange on one endpoint: the :class:`Attempt` (Envoy's upstream request).

Theory of operation. The :class:`~plait.proxy.http1_exchange.Exchange` decides (route,
retry, answer locally, relay); an Attempt only carries out one try and reports what
happened. It takes an idle keep-alive connection from the cluster's pool or opens one
(with mTLS, pooled per local identity), binds it to its exchange -- the exchange is the
connection's :class:`~plait.proxy.upstream.UpstreamHandler`, so response events reach it
without a hop -- and writes the request head and body. A try that is over (``live``
false) has unbound its connection (released to the pool, closed, or handed to a tunnel),
so no late event of an abandoned try can reach the exchange.

An Attempt owns its endpoint's load counter -- started when the first byte of the request
leaves, finished exactly once by :meth:`Attempt.end` (a try that never sent anything only
counts a failure, if it failed) -- and its connection until it releases it to the pool
(clean keep-alive end) or closes it (anything else).

The flow-control reasons below (``P_*``) are why the *downstream* connection stops
reading; the exchange sets ``P_UPSTREAM_FULL`` when its attempt's socket buffer fills.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from plait.proxy.proxy_status import (
    DESTINATION_UNAVAILABLE,
    HTTP_RESPONSE_TIMEOUT,
    PROXY_INTERNAL_ERROR,
)
from plait.proxy.upstream import ConnectFailed, TlsOrigin, UpstreamConnection

if TYPE_CHECKING:
    from plait.proxy.dataplane import ClusterState
    from plait.proxy.http1_exchange import Exchange
    from plait.proxy.lb import EndpointState
    from plait.proxy.runtime import UpstreamTls

log = logging.getLogger("plait.proxy.http1")

# Why downstream reading is paused (a bit set: reading resumes when none is left).
P_UPSTREAM_FULL = 1  # the upstream socket's write buffer is over its high-water mark
P_PENDING = 2  # MAX_PENDING body bytes are waiting for an upstream connection
P_QUEUE = 4  # a pipelined request waits for the one before it
P_UPGRADE = 8  # an upgrade request waits for the upstream's answer

# Which retry_on names (Envoy's) allow a retry after each kind of failure.
RETRY_CONNECT = frozenset({"connect-failure", "reset", "5xx", "gateway-error"})
RETRY_RESET = frozenset({"reset", "5xx", "gateway-error"})
NO_RETRY: frozenset[str] = frozenset()


class Attempt:
    """One try of an exchange on one endpoint; the UpstreamHandler of its connection."""

    __slots__ = (
        "cluster",
        "conn",
        "endpoint",
        "ex",
        "key",
        "live",
        "paused",
        "reused",
        "sent",
        "timeout",
    )

    def __init__(self, ex: Exchange, cluster: ClusterState, endpoint: EndpointState) -> None:
        self.ex = ex
        self.cluster = cluster
        self.endpoint = endpoint
        e = endpoint.endpoint
        self.key = (e.address, e.port)
        self.conn: UpstreamConnection | None = None
        self.reused = False
        self.paused = False  # we paused the connection's reading (downstream is full)
        self.timeout = 0.0  # the per-try timeout armed in dp.timers (0: none)
        self.live = True
        self.sent = False  # the endpoint got bytes of the request (and its counter a start)

    def write(self, pieces: list[bytes]) -> None:
        conn = self.conn
        if conn is not None and conn.transport is not None:
            if not self.sent:
                self.sent = True
                self.endpoint.start()
            if len(pieces) == 1:
                conn.send(pieces[0])  # the usual head-only request: no iovec
            else:
                conn.send_all(pieces)

    def run(self) -> None:
        tls = self.cluster.config.tls
        if tls is not None:
            self._run_tls(tls)
            return
        conn = self.cluster.pool.take(self.key)
        if conn is not None:
            self._send(conn, True)
        else:
            self.ex.dp.loop.create_task(self._connect(self.key))

    def _run_tls(self, tls: UpstreamTls) -> None:
        """mTLS: connections are pooled per (endpoint, local identity)."""
        ex = self.ex
        slot = ex.server.listener
        identity = slot.identity
        ctx = ex.dp.tls.client(identity)
        if ctx is None:
            if identity is None:
                details = (
                    f"no local identity for mTLS to {self.cluster.service}: listener "
                    f"{slot.name!r} speaks for no single local service; send the request "
                    "through the caller's own outbound|<service> listener"
                )
            else:
                details = f"no local identity yet: no certificate for {identity} from the CA"
            ex.local_reply(503, DESTINATION_UNAVAILABLE, details)
            return
        key = (*self.key, identity)
        conn = self.cluster.pool.take(key)
        if conn is not None:
            self._send(conn, True)
        else:
            ex.dp.loop.create_task(self._connect(key, (ctx, tls.server_sans)))

    async def _connect(self, key: tuple[object, ...], tls: TlsOrigin | None = None) -> None:
        cluster = self.cluster
        try:
            conn = await cluster.pool.connect(key, cluster.config.connect_timeout, tls)
        except ConnectFailed as exc:
            if self.live:
                self.ex.attempt_failed(self, exc.error, exc.details, RETRY_CONNECT)
            return
        except Exception as bug:  # not the network: say so (a name apart: plait.proxy.native)
            log.exception("connecting to %s:%s", *self.key)
            if self.live:
                self.ex.attempt_failed(self, PROXY_INTERNAL_ERROR, f"connect: {bug!r}", NO_RETRY)
            return
        if not self.live:
            cluster.pool.release(conn)  # the exchange moved on: keep the connection
            return
        self._send(conn, False)

    def _send(self, conn: UpstreamConnection, reused: bool) -> None:
        ex = self.ex
        head = ex.head
        assert head is not None
        self.conn = conn
        self.reused = reused
        conn.begin(ex, head.method == b"HEAD")
        if ex.pending:
            ex.send_up([ex.head_bytes, *ex.take_pending()])
        else:
            ex.send_up([ex.head_bytes])
        if ex.server.write_paused:
            self.pause_reading()

    def arm_timer(self, timeout: float) -> None:
        if not self.timeout and self.live:
            self.timeout = timeout
            self.ex.dp.timers.arm(self, timeout)

    def disarm(self) -> None:
        """Drop the per-try timeout (a response head arrived in time)."""
        self.timeout = 0.0
        self.ex.dp.timers.disarm(self)

    def expired(self) -> None:
        """The per-try timeout passed (:class:`~plait.proxy.deadlines.Deadlines`)."""
        timeout = self.timeout
        self.timeout = 0.0
        if self.live and not self.ex.started:
            details = f"no response within the per-try timeout ({timeout:g}s)"
            self.ex.attempt_failed(self, HTTP_RESPONSE_TIMEOUT, details, RETRY_RESET)

    def end(self, ok: bool, keep: bool = False) -> None:
        """The try is over: keep the connection (``keep``: to the pool) or close it, and
        count the result against the endpoint. Idempotent."""
        if not self.live:
            return
        self.live = False
        if self.timeout:
            self.disarm()
        conn = self.conn
        if conn is not None:
            self.conn = None
            if keep:
                if self.paused and conn.transport is not None:
                    conn.transport.resume_reading()
                self.cluster.pool.release(conn)
            else:
                conn.close()
                self.cluster.pool.forget(conn)
        if self.sent:
            self.endpoint.finish(ok)
        elif not ok:
            self.endpoint.failures += 1  # e.g. connect refused: a failure, not a request

    def detach(self) -> UpstreamConnection:
        """Hand the connection over (to a tunnel) and end the try."""
        conn = self.conn
        assert conn is not None
        self.conn = None
        conn.handler = None
        self.end(True)
        return conn

    def pause_reading(self) -> None:
        conn = self.conn
        if conn is not None and conn.transport is not None and not self.paused:
            conn.transport.pause_reading()
            self.paused = True

    def resume_reading(self) -> None:
        conn = self.conn
        if self.paused and conn is not None and conn.transport is not None:
            conn.transport.resume_reading()
        self.paused = False
