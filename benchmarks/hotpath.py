#!/usr/bin/env python3
"""The plait proxy's request path in one process, without sockets: Python cost per request.

    .venv/bin/python benchmarks/hotpath.py [--requests 200000] [--profile] [--hop inbound]

A real :class:`~plait.proxy.dataplane.DataPlane` (metrics and an access log writing to
an in-memory buffer, one ``outbound`` listener routing Host ``bench`` to one endpoint) is
driven directly: each request's bytes go into an :class:`~plait.proxy.http1.Http1Server`
with a recording transport, and the upstream's response (nginx's head, a 1 KiB body) into
the pooled :class:`~plait.proxy.upstream.UpstreamConnection` the request went out on. No
event loop runs and no syscall is made, so what is measured is the Python the proxy
executes per request (the part that `benchmarks/run.py` cannot separate from the
kernel's), with little noise: use it to A/B a change to the request path. ``--profile``
prints cProfile's top functions.

It checks what it measures: the upstream must receive a request head naming ``bench``,
and the client must receive a 200 with the body, on every request.

``--hop`` picks which proxy of `benchmarks/run.py`'s layouts is driven:

* ``outbound`` (the default): the 1-hop proxy ``bench-out`` as above, wrk's request
  (``Host: bench``) on its ``outbound`` listener.
* ``inbound``: the second proxy of the 2-hop plaintext case, ``bench-in``. Its config is
  what the control plane gives that node (``plait.xds.translate`` for Service ``bench``
  with ``bench-in`` fronting it, decoded by the proxy's own ``xds_decode``): the
  ``inbound|bench`` listener, its inline ``*`` route without timeout, the STATIC
  cluster of the app. Its requests are the exact bytes the outbound proxy sends
  upstream (``host``, ``via: 1.1 bench-out``, a fresh ``x-request-id`` each), captured
  from an outbound rig at start-up: a ring of 4096, so no per-value memo hits on the id.
* ``outbound-2hop``: the first proxy of the 2-hop case: the outbound rig, answered with
  the exact response the inbound proxy sends downstream (nginx's head plus
  ``via: 1.1 bench-in``), captured from an inbound rig at start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import importlib
import io
import itertools
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any

from plait.proxy import native
from plait.proxy.accesslog import AccessLog, BufferedWriter
from plait.proxy.dataplane import DataPlane, fast_request_id
from plait.proxy.http1 import Http1Server
from plait.proxy.metrics import Metrics
from plait.proxy.runtime import (
    Cluster,
    Endpoint,
    Listener,
    ProxyConfig,
    Route,
    RouteMatch,
    RouteTable,
    VirtualHost,
    WeightedCluster,
)
from plait.proxy.upstream import UpstreamConnection

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
BODY = b"x" * 1024
_RESPONSE_FIELDS = [  # what the benchmark's nginx upstream sends
    (b"Server", b"nginx/1.22.1"),
    (b"Date", b"Thu, 26 Nov 2026 19:40:00 GMT"),
    (b"Content-Type", b"application/octet-stream"),
    (b"Content-Length", b"1024"),
    (b"Connection", b"keep-alive"),
]
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    + b"".join(n + b": " + v + b"\r\n" for n, v in _RESPONSE_FIELDS)
    + b"\r\n"
    + BODY
)
UPSTREAM = ("127.0.0.1", 9)


class RecordingTransport:
    """Enough of an asyncio transport for the request path; keeps the last write."""

    def __init__(self) -> None:
        self.last: bytes = b""
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.last = data
        self.writes += 1

    def writelines(self, pieces: Any) -> None:
        self.last = b"".join(pieces)
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def can_write_eof(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def config(route_timeout: float | None = 15.0) -> ProxyConfig:
    cname = "outbound|bench"
    route = Route(
        "bench-default",
        RouteMatch(prefix="/"),
        (WeightedCluster(cname, 1),),
        1,
        timeout=route_timeout,
    )
    table = RouteTable("outbound", (VirtualHost("bench", ("bench", "bench:80"), (route,)),))
    return ProxyConfig(
        listeners={
            "outbound": Listener(
                "outbound", "127.0.0.1", 0, "outbound", route_config_name="outbound"
            )
        },
        route_tables={"outbound": table},
        clusters={cname: Cluster(cname, "least_request", 1.0, "eds")},
        endpoints={cname: (Endpoint(*UPSTREAM),)},
        versions={"bench": "1"},
    )


INBOUND_NODE = "bench-in"
INBOUND = "inbound|bench"
SERVICE_YAML = """\
apiVersion: plait/v1
kind: Service
metadata:
  name: bench
spec:
  protocol: http
  ports:
    - name: http
      port: 80
"""


def inbound_config(inbound_port: int) -> ProxyConfig:
    """What the control plane sends ``bench-in`` (2-hop case): translated for the node
    that fronts ``bench`` (app: the upstream) and decoded as the proxy decodes it."""
    from google.protobuf import any_pb2
    from plait.model.load import load_text
    from plait.proxy.xds_decode import apply_response
    from plait.xds.inputs import InboundPort, Instance, NodeInfo
    from plait.xds.translate import translate
    from plait.xds.types import PUSH_ORDER

    host, app_port = UPSTREAM
    node = NodeInfo(
        INBOUND_NODE,
        plait_proxy=True,
        inbound=(InboundPort("bench", host, inbound_port, app_port=app_port, app_address=host),),
    )
    instances = [Instance("bench", INBOUND_NODE, host, inbound_port, {"version": "v1"})]
    snapshot = translate(load_text(SERVICE_YAML, "bench.yaml"), instances, node)
    cfg = ProxyConfig()
    for type_url in PUSH_ORDER:
        packed = []
        for message in snapshot.items(type_url).values():
            any_msg = any_pb2.Any()
            any_msg.Pack(message)
            packed.append(any_msg)
        cfg = apply_response(cfg, type_url, packed, version="1")
    return cfg


def wall_clock(step_us: float | None) -> Callable[[], float]:
    """The access log's clock: the real one (None), or one that advances ``step_us``
    per reading. Under valgrind a request takes milliseconds, so with the real clock
    every request formats its time text, which the proxy does once per millisecond
    (at most): ``--wall-step-us 20`` counts what a request costs at 50k requests/s."""
    if step_us is None:
        return time.time
    return functools.partial(next, itertools.count(time.time(), step_us / 1e6))


class Rig:
    """One DataPlane, one downstream connection, one pooled upstream connection."""

    NODE = "bench-out"
    LOCAL_SERVICES: tuple[str, ...] = ()
    LISTENER = "outbound"  # where the requests arrive
    CLUSTER = "outbound|bench"  # where they go

    def __init__(
        self,
        request_id: Callable[[], str] = fast_request_id,
        route_timeout: float | None = 15.0,
        metrics: bool = True,
        access_log: bool = True,
        wall_step: float | None = None,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.log = io.BytesIO()  # the access log file: BufferedWriter batches into it
        self.writer = BufferedWriter(self.log)
        self.dp = DataPlane(
            self.NODE,
            local_services=self.LOCAL_SERVICES,
            metrics=Metrics() if metrics else None,
            access_log=AccessLog(self.writer.write) if access_log else None,
            request_id=request_id,
            wall_clock=wall_clock(wall_step),
            # No loop runs here to send held writes at an iteration's end: the rig
            # measures the request path with every write going out at once.
            hold_writes=False,
        )
        self.dp.apply(self.configure(route_timeout))
        self.server = Http1Server(self.dp, self.dp.listeners[self.LISTENER])
        self.down = RecordingTransport()
        self.server.connection_made(self.down)  # type: ignore[arg-type]
        state = self.dp.snapshot.clusters[self.CLUSTER]  # type: ignore[union-attr]
        self.conn = UpstreamConnection(state.pool, UPSTREAM)
        self.up = RecordingTransport()
        self.conn.connection_made(self.up)  # type: ignore[arg-type]
        state.pool.release(self.conn)

    def configure(self, route_timeout: float | None) -> ProxyConfig:
        """Bind the node's listeners; the config its control plane would send."""
        self.loop.run_until_complete(self.dp.bind("outbound", "127.0.0.1", 0, "outbound"))
        return config(route_timeout)

    def one(self) -> None:
        self.server.data_received(REQUEST)
        self.conn.data_received(RESPONSE)

    def sample(self) -> tuple[bytes, bytes]:
        """A request this rig sends the proxy, and the response its upstream answers."""
        return REQUEST, RESPONSE

    def check(self) -> None:
        sent = self.up.last
        if not sent.startswith(b"GET / HTTP/1.1\r\nhost: bench\r\n"):
            raise SystemExit(f"upstream got {sent[:200]!r}")
        got = self.down.last
        if not got.startswith(b"HTTP/1.1 200 ") or not got.endswith(BODY):
            raise SystemExit(f"client got {got[:300]!r}")

    def close(self) -> None:
        self.writer.close()
        self.loop.run_until_complete(self.dp.close(grace=0.0))
        self.loop.close()


def _captured(rig: Rig, n: int, what: Callable[[Rig], bytes]) -> list[bytes]:
    """``what(rig)`` after each of ``n`` requests through ``rig`` (then closed)."""
    out = []
    try:
        for _ in range(n):
            rig.one()
            rig.check()
            out.append(what(rig))
    finally:
        rig.close()
    return out


RING = 4096  # distinct inbound requests (request ids), cycled


class InboundRig(Rig):
    """The second proxy of the 2-hop plaintext case (``--hop inbound``): ``bench-in``,
    its ``inbound|bench`` listener fed what ``bench-out`` sends upstream."""

    NODE = INBOUND_NODE
    LOCAL_SERVICES = ("bench",)
    LISTENER = INBOUND
    CLUSTER = INBOUND

    def __init__(self, **options: Any) -> None:
        # what the outbound proxy sends upstream, request by request (distinct ids)
        self.requests = _captured(Rig(), RING, lambda r: r.up.last)
        self.next_request = itertools.cycle(self.requests).__next__
        self.sent = b""
        super().__init__(**options)

    def configure(self, route_timeout: float | None) -> ProxyConfig:
        """(The inbound route has no timeout: ``route_timeout`` is not used.)"""

        async def bind() -> int:
            await self.dp.bind("outbound", "127.0.0.1", 0, "outbound")
            return (await self.dp.bind(INBOUND, "127.0.0.1", 0, "inbound", "bench"))[1]

        return inbound_config(self.loop.run_until_complete(bind()))

    def sample(self) -> tuple[bytes, bytes]:
        return self.requests[0], RESPONSE

    def one(self) -> None:
        self.sent = request = self.next_request()
        self.server.data_received(request)
        self.conn.data_received(RESPONSE)

    def check(self) -> None:
        super().check()
        sent = self.up.last
        rid = self.sent.partition(b"x-request-id: ")[2][:32]
        if b"\r\nvia: 1.1 bench-out, 1.1 bench-in\r\n" not in sent or rid not in sent:
            raise SystemExit(f"upstream got {sent[:200]!r} for {self.sent!r}")


class TwoHopOutboundRig(Rig):
    """The first proxy of the 2-hop case (``--hop outbound-2hop``): the outbound rig,
    answered by what ``bench-in`` sends downstream instead of nginx's response."""

    def __init__(self, **options: Any) -> None:
        (self.response,) = _captured(InboundRig(), 1, lambda r: r.down.last)
        super().__init__(**options)

    def one(self) -> None:
        self.server.data_received(REQUEST)
        self.conn.data_received(self.response)

    def sample(self) -> tuple[bytes, bytes]:
        return REQUEST, self.response

    def check(self) -> None:
        super().check()
        if b"\r\nvia: 1.1 bench-in, 1.1 bench-out\r\n" not in self.down.last:
            raise SystemExit(f"client got {self.down.last[:300]!r}")


RIGS: dict[str, type[Rig]] = {
    "outbound": Rig,
    "inbound": InboundRig,
    "outbound-2hop": TwoHopOutboundRig,
}


def measure(requests: int, repeat: int = 5, hop: str = "outbound", **options: Any) -> list[float]:
    """Microseconds per request, one figure per repetition (``hop``: a key of
    :data:`RIGS`; ``options``: for :class:`Rig`)."""
    rig = RIGS[hop](**options)
    try:
        for _ in range(2000):  # warm-up: caches, pools, the allocator
            rig.one()
        rig.check()
        out = []
        for _ in range(repeat):
            rig.log.seek(0)
            rig.log.truncate()
            t0 = time.perf_counter()
            for _ in range(requests):
                rig.one()
            out.append((time.perf_counter() - t0) / requests * 1e6)
            rig.check()
        return out
    finally:
        rig.close()


# --breakdown: what each part of the request path costs, measured by taking it away.
# Each variant patches one named attribute for the length of its measurement; a variant
# whose target has moved fails (AttributeError) instead of silently measuring nothing.
_CANNED: dict[str, Any] = {}


def _noop(*args: Any) -> None:
    return None


def _canned_request_head(*args: Any) -> Any:
    return _CANNED["request"]


def _canned_response_head(*args: Any) -> Any:
    return _CANNED["response"]


def _same_id() -> str:
    return "0" * 32


# label -> (attributes to replace: (module, "Class.attr" or "name", value), Rig options)
VARIANTS: dict[str, tuple[list[tuple[str, str, Any]], dict[str, Any]]] = {
    "production defaults": ([], {}),
    # DataPlane.observe formats the line and updates the series itself: take them away
    "no access log line": ([], {"access_log": False}),
    "no metrics sample": ([], {"metrics": False}),
    "no observe (log, metrics)": ([("plait.proxy.dataplane", "DataPlane.observe", _noop)], {}),
    "no request id made": ([], {"request_id": _same_id}),
    "no route timeout timer": ([], {"route_timeout": None}),
    "no head checks (canned heads)": (
        [
            ("plait.proxy.http1", "fast_request_head", _canned_request_head),
            ("plait.proxy.http1_exchange", "fast_response_head", _canned_response_head),
        ],
        {},
    ),
}


def _patch(module: str, dotted: str, value: Any) -> tuple[Any, str, Any]:
    obj: Any = importlib.import_module(module)
    *owners, name = dotted.split(".")
    for owner in owners:
        obj = getattr(obj, owner)
    old = getattr(obj, name)  # AttributeError: the variant's target moved
    setattr(obj, name, value)
    return obj, name, old


class _Fields:
    """httptools callbacks keeping a message's target, reason and fields."""

    def __init__(self) -> None:
        self.url = self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


def canned_heads(hop: str = "outbound") -> tuple[Any, Any]:
    """The request and response heads the hop's rig gets (what the checks make of its
    first request and its response), for the canned-heads variant."""
    from httptools import HttpRequestParser, HttpResponseParser
    from plait.proxy.http1_shapes import fast_request_head, fast_response_head

    rig = RIGS[hop]()
    try:
        request, response = rig.sample()
    finally:
        rig.close()
    req = _Fields()
    parser = HttpRequestParser(req)
    parser.feed_data(request)
    version = parser.get_http_version()
    method = parser.get_method()
    request_head = fast_request_head(
        method, req.url, version, req.headers, parser.should_keep_alive()
    )
    resp = _Fields()
    rparser = HttpResponseParser(resp)
    rparser.feed_data(response)
    status = rparser.get_status_code()
    response_head = fast_response_head(status, resp.reason, resp.headers, method, version, True)
    return request_head, response_head


def breakdown(requests: int, repeat: int, hop: str = "outbound", **common: Any) -> dict[str, float]:
    """Best µs per request of each variant (the production path first); ``common``:
    :class:`Rig` options for all of them."""
    _CANNED["request"], _CANNED["response"] = canned_heads(hop)
    out = {}
    for label, (patches, options) in VARIANTS.items():
        undo = [_patch(*p) for p in patches]
        try:
            out[label] = min(measure(requests, repeat, hop, **common, **options))
        finally:
            for obj, name, old in reversed(undo):
                setattr(obj, name, old)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="cProfile one repetition")
    ap.add_argument(
        "--breakdown", action="store_true", help="price each part by measuring without it"
    )
    ap.add_argument(
        "--hop",
        choices=list(RIGS),
        default="outbound",
        help="which proxy: the 1-hop outbound one (default), or the 2-hop case's inbound "
        "(second) or outbound (first) one",
    )
    ap.add_argument(
        "--wall-step-us",
        type=float,
        default=None,
        help="the access log's wall clock advances this much per reading instead of "
        "being read (default: read it); see wall_clock()",
    )
    args = ap.parse_args(argv)
    if (args.breakdown or args.profile) and not native.STATE.startswith("interpreted"):
        ap.error(
            "--breakdown and --profile patch and trace Python functions, which the compiled "
            f"request path does not have ({native.STATE}): run with PLAIT_PURE=1"
        )
    opts = {} if args.wall_step_us is None else {"wall_step": args.wall_step_us}
    if args.breakdown:
        costs = breakdown(args.requests, args.repeat, args.hop, **opts)
        base = costs["production defaults"]
        for label, us in costs.items():
            saved = f"  (-{base - us:.2f} us)" if us != base else ""
            print(f"{label:32s} {us:6.2f} us/request{saved}")
        return 0
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        measure(args.requests, 1, args.hop, **opts)
        prof.disable()
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(30)
        return 0
    times = measure(args.requests, args.repeat, args.hop, **opts)
    best, median = min(times), sorted(times)[len(times) // 2]
    label = "request path" if args.hop == "outbound" else f"request path ({args.hop})"
    print(f"{label}: {best:.2f} us/request (best of {args.repeat}), median {median:.2f}")
    print(f"  ({native.STATE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
