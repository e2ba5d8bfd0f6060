"""plait's data plane: the proxy that runs next to every service.

A tour, following one request from an app to its destination and back.

**The process** (:mod:`~plait.proxy.main`, ``python -m plait.proxy --config b.yaml``)
composes the stack in one place: it reads the bootstrap (:mod:`~plait.proxy.bootstrap`,
parsed in a short-lived child by :mod:`~plait.proxy.bootstrap_reader`), binds the
outbound listener and one inbound listener per local service *before* talking to the
control plane (so their real ports go into the node metadata), starts the admin
server (:mod:`~plait.proxy.admin`), health checks (:mod:`~plait.proxy.health`),
registration heartbeats (:mod:`~plait.proxy.registration`) and the xDS client
(:mod:`~plait.proxy.xds_client`), then writes the ready file.

**Config** arrives over ADS. :mod:`~plait.proxy.xds_decode` turns protos into the frozen
values of :mod:`~plait.proxy.runtime` (or NACKs what is outside the supported subset);
the data plane never sees a proto. :class:`~plait.proxy.dataplane.DataPlane` applies each
accepted ``ProxyConfig`` as one snapshot: a :class:`~plait.proxy.router.Router` per
listener (attached by name, ``outbound`` / ``inbound|<svc>``) and per cluster a
balancer (:mod:`~plait.proxy.lb`) and a connection pool (:mod:`~plait.proxy.upstream`);
balancer counters and idle connections carry over from one config to the next.

**A request** (:mod:`~plait.proxy.http1`): an :class:`~plait.proxy.http1.Http1Server`
(one asyncio Protocol per client connection, on uvloop) feeds bytes to llhttp
(httptools). When a head is complete, :mod:`~plait.proxy.http1_checks` (pure, no I/O;
its parts ``http1_checks_request``, ``http1_checks_response``, ``http1_checks_common``)
validates it against request smuggling -- ambiguous framing is answered 400 and the
connection closed, never forwarded -- and normalizes it: hop-by-hop fields dropped,
absolute-form rewritten to origin-form, ``Via`` appended, ``x-request-id`` kept or made.
An :class:`~plait.proxy.http1_exchange.Exchange` (its state, tries and endings in the
base :class:`~plait.proxy.http1_dispatch.Dispatch`, its pure routing and retry decisions
in :mod:`~plait.proxy.http1_route`) then walks the routing levels, making one
:class:`~plait.proxy.http1_attempt.Attempt` per try::

    listener -> Router.match (virtual host, route) -> weighted cluster pick
             -> balancer.pick (endpoint) -> pool (idle keep-alive connection, or connect)

and streams the body up and the response down without buffering it whole, with flow
control between the two sockets (:mod:`~plait.proxy.upstream` holds the upstream
connections and their pool). Upgrades (WebSocket) become a raw byte tunnel on 101.

**When something fails**, the response the proxy makes says which hop made it and why:
an RFC 9209 ``Proxy-Status`` (:mod:`~plait.proxy.proxy_status`) naming
``<node>/<direction>`` with the registry's error type (404 no route, 503 no healthy
endpoint or no config yet, 502 connection refused or reset, 504 connect or route
timeout); responses passing through keep upstream entries and get ours appended.
Retries, per route, cover requests without a body before any response byte was sent.

**Every request** ends in one access log line (:mod:`~plait.proxy.accesslog`, JSON,
with the same error type as the header) and one sample in the Prometheus metrics
(:mod:`~plait.proxy.metrics`), labelled with source and destination service.

Layering: decisions live in pure modules (``http1_checks`` with its parts
``http1_checks_*``, ``http1_shapes``, ``http1_route``, ``router``, ``lb``, ``proxy_status``,
``runtime``, ``xds_decode`` with its per-resource parts ``xds_decode_*``), checked by
``mypy --strict`` and unit tests; the shells (``http1``, ``http1_exchange``,
``http1_dispatch``, ``http1_attempt``, ``upstream``, ``dataplane``, ``admin``, ``main``)
hold sockets and timers and are tested with real processes and curl.
"""

from plait.proxy.native import select as _select_request_path

_select_request_path(__path__)  # compiled modules (make native) when current, else the sources
