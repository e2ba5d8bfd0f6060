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
import io
import pstats
import sys
import time
from typing import Any

from plait.proxy.accesslog import AccessLog, BufferedWriter
from plait.proxy.dataplane import DataPlane
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
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 19:40:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Connection: keep-alive\r\n\r\n" + BODY
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


def config() -> ProxyConfig:
    cname = "outbound|bench"
    route = Route(
        "bench-default", RouteMatch(prefix="/"), (WeightedCluster(cname, 1),), 1, timeout=15.0
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

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.log = io.BytesIO()  # the access log file: BufferedWriter batches into it
        self.writer = BufferedWriter(self.log)
        self.dp = DataPlane("bench-out", metrics=Metrics(), access_log=AccessLog(self.writer.write))

        async def bind() -> None:
            await self.dp.bind("outbound", "127.0.0.1", 0, "outbound")

        self.loop.run_until_complete(bind())
        self.dp.apply(config())
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


def measure(requests: int, repeat: int = 5) -> list[float]:
    """Microseconds per request, one figure per repetition."""
    rig = Rig()
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="cProfile one repetition")
    args = ap.parse_args(argv)
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
