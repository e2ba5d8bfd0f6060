#!/usr/bin/env python3
"""The plait proxy's request path in one process, without sockets: Python cost per request.

    .venv/bin/python benchmarks/hotpath.py [--requests 200000] [--profile]

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
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib
import io
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any

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


class Rig:
    """One DataPlane, one downstream connection, one pooled upstream connection."""

    def __init__(
        self,
        request_id: Callable[[], str] = fast_request_id,
        route_timeout: float | None = 15.0,
        metrics: bool = True,
        access_log: bool = True,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.log = io.BytesIO()  # the access log file: BufferedWriter batches into it
        self.writer = BufferedWriter(self.log)
        self.dp = DataPlane(
            "bench-out",
            metrics=Metrics() if metrics else None,
            access_log=AccessLog(self.writer.write) if access_log else None,
            request_id=request_id,
        )

        async def bind() -> None:
            await self.dp.bind("outbound", "127.0.0.1", 0, "outbound")

        self.loop.run_until_complete(bind())
        self.dp.apply(config(route_timeout))
        slot = self.dp.listeners["outbound"]
        self.server = Http1Server(self.dp, slot)
        self.down = RecordingTransport()
        self.server.connection_made(self.down)  # type: ignore[arg-type]
        state = self.dp.snapshot.clusters["outbound|bench"]  # type: ignore[union-attr]
        self.conn = UpstreamConnection(state.pool, UPSTREAM)
        self.up = RecordingTransport()
        self.conn.connection_made(self.up)  # type: ignore[arg-type]
        state.pool.release(self.conn)

    def one(self) -> None:
        self.server.data_received(REQUEST)
        self.conn.data_received(RESPONSE)

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


def measure(requests: int, repeat: int = 5, **options: Any) -> list[float]:
    """Microseconds per request, one figure per repetition (``options``: for :class:`Rig`)."""
    rig = Rig(**options)
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


def breakdown(requests: int, repeat: int) -> dict[str, float]:
    """Best µs per request of each variant (the production path first)."""
    from plait.proxy.http1_shapes import fast_request_head, fast_response_head

    _CANNED["request"] = fast_request_head(b"GET", b"/", "1.1", [(b"Host", b"bench")], True)
    nginx = [(n, v) for n, v in _RESPONSE_FIELDS if n not in (b"Connection",)]
    _CANNED["response"] = fast_response_head(200, b"OK", nginx, b"GET", "1.1", True)
    out = {}
    for label, (patches, options) in VARIANTS.items():
        undo = [_patch(*p) for p in patches]
        try:
            out[label] = min(measure(requests, repeat, **options))
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
    args = ap.parse_args(argv)
    if args.breakdown:
        costs = breakdown(args.requests, args.repeat)
        base = costs["production defaults"]
        for label, us in costs.items():
            saved = f"  (-{base - us:.2f} us)" if us != base else ""
            print(f"{label:32s} {us:6.2f} us/request{saved}")
        return 0
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        measure(args.requests, 1)
        prof.disable()
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(30)
        return 0
    times = measure(args.requests, args.repeat)
    best, median = min(times), sorted(times)[len(times) // 2]
    print(f"request path: {best:.2f} us/request (best of {args.repeat}), median {median:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
