"""An Exchange's state and decisions: routing, tries, timers and endings.

Theory of operation. :class:`Dispatch` is the base of
:class:`~plait.proxy.http1_exchange.Exchange` (only the Exchange is ever made) and holds
all of its state. :meth:`Dispatch.start` refuses the request or routes it (the decisions
are pure, in :mod:`~plait.proxy.http1_route`), arms the route timeout once the request is
complete and makes one :class:`~plait.proxy.http1_attempt.Attempt` per try, each with its
per-try timeout. Request bytes go to the attempt's connection (:meth:`Dispatch.send_up`,
held while the downstream read is still being parsed). A failed try is retried when the
route's policy allows, else answered locally (:meth:`Dispatch.local_reply`, with
Proxy-Status); every path ends in :meth:`Dispatch._finish`: one observation (log,
metrics), then the connection's next exchange. The events that drive all this -- from
the downstream connection and from the current attempt -- are the Exchange's own part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait.proxy import proxy_status
from plait.proxy.http1_attempt import P_PENDING, Attempt
from plait.proxy.http1_checks import HeadRejected, RequestHead, ResponseHead, render_request_head
from plait.proxy.http1_route import (
    Unroutable,
    pick_endpoint,
    retry_allowed,
    retry_on_status,
    select_target,
)
from plait.proxy.proxy_status import (
    DESTINATION_UNAVAILABLE,
    HTTP_REQUEST_DENIED,
    HTTP_RESPONSE_TIMEOUT,
    STATUS_FOR,
)
from plait.proxy.rbac import evaluate as evaluate_rbac

if TYPE_CHECKING:
    from plait.proxy.dataplane import ClusterState, DataPlane, Snapshot
    from plait.proxy.http1 import Http1Server
    from plait.proxy.runtime import RbacFilter, Route

MAX_PENDING = 256 * 1024  # request body bytes held while no upstream connection exists
MAX_TARGETS = 256  # remembered heads' targets kept per snapshot; then start over


class Dispatch:
    """An exchange's state, routing, tries and endings; :class:`Exchange` adds the events."""

    __slots__ = (
        "attempt",
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
            self.request_id = self.new_request_id = dp.new_request_id_bytes()
        self.request_done = head is None
        self.close_after = head is None or not head.keep_alive or head.upgrade is not None
        self.pending: list[bytes] | None = None  # body bytes held until a connection exists
        self.pending_bytes = 0
        self.up_cork: list[bytes] | None = None  # upstream bytes held until the read ends
        self.up_sent = False  # any byte of this request went to an upstream
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.early: list[bytes] | None = None
        self.route: Route | None = None
        self.cluster: ClusterState | None = None
        self.head_bytes = b""
        self.attempt: Attempt | None = None
        self.retries_left = 0
        self.tried: tuple[tuple[str, int], ...] = ()  # endpoints tried, in order
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
        self.timer = False  # a route timeout is armed (dp.timers)
        self.bytes_in = 0
        self.bytes_out = 0
        self.rbac: str | None = None  # "would-deny: ..." from an audit-mode policy

    # -- routing and attempts ------------------------------------------------------------

    def start(self, memo: object = None) -> None:
        """Route the request and make its first try. ``memo``: the long-lived object
        :mod:`~plait.proxy.http1_whole` made this head from (the head itself, or the
        template it was made from), under which its route, cluster and upstream head
        are kept with the snapshot: every head from it differs at most in its request
        id, which is put into the kept upstream head."""
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
        target = snap.targets.get(id(memo)) if memo is not None else None
        if target is not None and target[0] is memo and target[1] == name:
            route, cluster = target[2], target[3]
            rid = self.new_request_id or head.request_id or b""  # (kept only with one)
            self.head_bytes = target[4] + rid + target[5]
        else:
            try:
                route, cluster = select_target(snap, name, head, self.dp.rng)
            except Unroutable as exc:
                self.local_reply(exc.status, exc.error, exc.details)
                return
            self.head_bytes = render_request_head(head, self.dp.via, self.new_request_id)
            if memo is not None and len(route.clusters) == 1:  # the same target every time
                self._remember_target(snap, memo, name, route, cluster)
        self.route = route
        self.cluster = cluster
        if route.retry is not None and not head.has_body and head.upgrade is None:
            self.retries_left = route.retry.num_retries
        if self.request_done and route.timeout:
            self.timer = True
            self.dp.timers.arm(self, route.timeout)
        self._attempt()

    def _remember_target(
        self, snap: Snapshot, memo: object, name: str, route: Route, cluster: ClusterState
    ) -> None:
        """Keep this request's route, cluster and upstream head, split where its request
        id is (the new one, or the one received), for the next head from ``memo``. Not
        when the listener's routes look at fields: one of them could be the request id."""
        head = self.head
        assert head is not None
        router = snap.routers.get(name)
        rid = self.new_request_id or head.request_id
        if not rid or router is None or router.uses_headers:
            return
        rendered = self.head_bytes
        at = rendered.find(b": " + rid + b"\r\n") + 2
        if at < 2 or rendered.count(rid) != 1:
            return  # the id is not where only it differs: nothing is kept
        targets = snap.targets
        if len(targets) >= MAX_TARGETS:
            targets.clear()
        targets[id(memo)] = (memo, name, route, cluster, rendered[:at], rendered[at + len(rid) :])

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

    def _attempt(self) -> None:
        cluster = self.cluster
        assert cluster is not None
        ep = pick_endpoint(cluster.balancer, self.tried)
        if ep is None:
            details = f"no healthy endpoint in cluster {cluster.name!r}"
            self.local_reply(503, DESTINATION_UNAVAILABLE, details)
            return
        attempt = self.attempt = Attempt(self, cluster, ep)  # type: ignore[arg-type]  # an Exchange
        self.tried = (*self.tried, attempt.key)
        self.upstream_addr = attempt.key
        if self.request_done and self.route is not None and self.route.retry is not None:
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
        pending = self.pending or []
        self.pending = None
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
        return retry_allowed(self.route, names)

    def _retriable_status(self, status: int) -> bool:
        names = retry_on_status(status)
        return names is not None and self._may_retry(names)

    def _retry(self) -> None:
        self.retries_left -= 1
        self._attempt()

    def _end_attempt(self, ok: bool) -> None:
        attempt = self.attempt
        if attempt is not None:
            attempt.end(ok)

    # -- endings -------------------------------------------------------------------------

    def expired(self) -> None:
        """The route timeout passed (:class:`~plait.proxy.deadlines.Deadlines`)."""
        self.timer = False
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
        if self.timer:
            self.timer = False
            self.dp.timers.disarm(self)

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
        self.server.send(data)
        self._finish()

    def _fail_started(self, error: str, details: str) -> None:
        """A failure after the response head: all that is left is to close."""
        self.uncork()
        self.error = error
        self.details = details
        self._end_attempt(False)
        self.close_after = True
        self._finish()

    def uncork(self) -> None:
        """Send a response head still held back (the upstream read ended)."""
        corked = self.corked
        if corked is not None:
            self.corked = None
            self.server.send(corked)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self.timer:  # _cancel_timer(), inlined (every request passes here)
            self.timer = False
            self.dp.timers.disarm(self)
        attempt = self.attempt
        if attempt is not None:
            # Break the Exchange <-> Attempt cycle: reference counting frees both now,
            # instead of leaving every request to the cyclic collector.
            self.attempt = None
            if attempt.live:
                attempt.end(True)
        self.dp.observe(self)
        self.server.exchange_finished(self)  # type: ignore[arg-type]  # an Exchange
