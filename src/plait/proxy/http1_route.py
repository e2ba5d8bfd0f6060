"""Where a request goes and whether it may go again: the Exchange's pure decisions.

Theory of operation. No I/O, no timers: the :class:`~plait.proxy.http1_exchange.Exchange`
asks, and acts on the answer. :func:`select_target` walks the routing levels of one
snapshot -- the listener's :class:`~plait.proxy.router.Router`, its route for host, path
and headers, the route's weighted cluster -- and either names the route and cluster or
raises :class:`Unroutable` with the local answer (503 listener without routes, 404 no
route, 503 unknown cluster). :func:`pick_endpoint` asks the cluster's balancer, preferring
an endpoint this exchange has not tried yet. The retry decisions map a failure (by its
``retry_on`` names, Envoy's) or an upstream status onto the route's retry policy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from plait.proxy.proxy_status import DESTINATION_NOT_FOUND, DESTINATION_UNAVAILABLE

if TYPE_CHECKING:
    from random import Random

    from plait.proxy.dataplane import ClusterState, Snapshot
    from plait.proxy.http1_checks import RequestHead
    from plait.proxy.lb import Balancer, EndpointState
    from plait.proxy.runtime import Route

_RETRY_ON_GATEWAY = frozenset({"5xx", "gateway-error"})  # 502, 503, 504
_RETRY_ON_5XX = frozenset({"5xx"})
_RETRY_ON_409 = frozenset({"retriable-4xx"})
_NO_HEADERS: Mapping[str, str] = {}  # what a router that matches no header is given


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


class Unroutable(Exception):
    """No target for the request: answer ``status`` with Proxy-Status ``error``."""

    def __init__(self, status: int, error: str, details: str) -> None:
        super().__init__(details)
        self.status = status
        self.error = error
        self.details = details


def select_target(
    snap: Snapshot, listener: str, head: RequestHead, rng: Random
) -> tuple[Route, ClusterState]:
    """The route and cluster for ``head`` on ``listener``; raises :class:`Unroutable`."""
    router = snap.routers.get(listener)
    if router is None:
        raise Unroutable(503, DESTINATION_UNAVAILABLE, f"listener {listener!r} has no routes")
    # the Host as the head holds it (bytes): a repeated value is the same object, hashed once
    route = router.match(
        head.host, head.path, HeaderView(head) if router.uses_headers else _NO_HEADERS
    )
    if route is None:
        details = f"no route for host {head.host.decode('latin-1')!r} path {head.path!r}"
        raise Unroutable(404, DESTINATION_NOT_FOUND, details)
    cluster_name = router.pick_cluster(route, rng)
    cluster = snap.clusters.get(cluster_name)
    if cluster is None:
        details = f"route {route.name!r} names cluster {cluster_name!r}, which is not known"
        raise Unroutable(503, DESTINATION_UNAVAILABLE, details)
    return route, cluster


def pick_endpoint(balancer: Balancer, tried: tuple[tuple[str, int], ...]) -> EndpointState | None:
    """The balancer's pick, preferring an endpoint not in ``tried`` (a few more picks)."""
    ep = balancer.pick()
    if ep is None or not tried:
        return ep
    for _ in range(4):  # prefer an endpoint not tried yet
        e = ep.endpoint
        if (e.address, e.port) not in tried:
            return ep
        ep = balancer.pick() or ep
    return ep


def retry_allowed(route: Route | None, names: frozenset[str]) -> bool:
    """Whether the route's retry policy covers a failure of kind ``names``."""
    return route is not None and route.retry is not None and bool(route.retry.retry_on & names)


def retry_on_status(status: int) -> frozenset[str] | None:
    """The ``retry_on`` names an upstream response status matches (None: not retriable)."""
    if status >= 500:
        return _RETRY_ON_GATEWAY if status in (502, 503, 504) else _RETRY_ON_5XX
    if status == 409:
        return _RETRY_ON_409
    return None
