"""A DataPlane driven in one process, without sockets or a running loop, for unit tests.

Bytes go into an :class:`~plait.proxy.http1.Http1Server` (the client's reads) and into
the pooled :class:`~plait.proxy.upstream.UpstreamConnection` the request went out on
(the upstream's reads); both transports record what the proxy writes. Request ids and
clocks are deterministic, so two rigs fed the same bytes must write the same bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass
from typing import Any

from plait.proxy.accesslog import AccessLog
from plait.proxy.dataplane import DataPlane
from plait.proxy.http1 import Http1Server
from plait.proxy.metrics import Metrics
from plait.proxy.runtime import (
    Cluster,
    Endpoint,
    HeaderMatcher,
    Listener,
    ProxyConfig,
    Route,
    RouteMatch,
    RouteTable,
    VirtualHost,
    WeightedCluster,
)
from plait.proxy.upstream import UpstreamConnection

CLUSTER = "outbound|bench"
UPSTREAM = ("127.0.0.1", 9)


class RecordingTransport:
    """Enough of an asyncio transport for the request path: keeps every write."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.eof = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def writelines(self, pieces: Any) -> None:
        self.written.append(b"".join(pieces))

    def take(self) -> bytes:
        out = b"".join(self.written)
        self.written.clear()
        return out

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def config(
    domains: tuple[str, ...] = ("bench", "bench:80"),
    clusters: tuple[str, ...] = (CLUSTER,),
    headers: tuple[HeaderMatcher, ...] = (),
) -> ProxyConfig:
    """Host ``bench`` (any path) to one endpoint; no route timeout. ``domains``: the
    virtual host's instead; ``clusters``: a weighted split (1 each) between these, all
    with the same endpoint; ``headers``: the route's field matchers."""
    weighted = tuple(WeightedCluster(name, 1) for name in clusters)
    route = Route("bench", RouteMatch(prefix="/", headers=headers), weighted, len(weighted))
    table = RouteTable("outbound", (VirtualHost("bench", domains, (route,)),))
    return ProxyConfig(
        listeners={
            "outbound": Listener(
                "outbound", "127.0.0.1", 0, "outbound", route_config_name="outbound"
            )
        },
        route_tables={"outbound": table},
        clusters={name: Cluster(name, "least_request", 1.0, "eds") for name in clusters},
        endpoints={name: (Endpoint(*UPSTREAM),) for name in clusters},
        versions={"bench": "1"},
    )


@dataclass
class Outcome:
    """What one client read (and the upstream's answer) made the proxy do."""

    upstream: bytes  # written to the upstream connection
    downstream: bytes  # written to the client
    log: list[dict[str, Any]]  # access log records, without their times
    upstream_kept: bool  # the upstream connection went back to the pool
    client_closed: bool


class WireRig:
    """One DataPlane, one client connection, one pooled upstream connection at a time."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.lines: list[str] = []
        ids = itertools.count(1)
        ticks = itertools.count()
        self.dp = DataPlane(
            "rig",
            metrics=Metrics(),
            access_log=AccessLog(self.lines.append),
            request_id=lambda: f"{next(ids):032x}",
            clock=lambda: next(ticks) / 1000.0,
            wall_clock=lambda: 1_800_000_000.0,
        )
        self.loop.run_until_complete(self.dp.bind("outbound", "127.0.0.1", 0, "outbound"))
        self.dp.apply(config())
        self.server = Http1Server(self.dp, self.dp.listeners["outbound"])
        self.down = RecordingTransport()
        self.server.connection_made(self.down)  # type: ignore[arg-type]
        self.pool = self.dp.snapshot.clusters[CLUSTER].pool  # type: ignore[union-attr]
        self.conn, self.up = self._pooled()

    def _pooled(self) -> tuple[UpstreamConnection, RecordingTransport]:
        conn = UpstreamConnection(self.pool, UPSTREAM)
        up = RecordingTransport()
        conn.connection_made(up)  # type: ignore[arg-type]
        self.pool.release(conn)
        return conn, up

    def exchange(self, request: bytes, response: list[bytes]) -> Outcome:
        """The client sends ``request`` in one read; when any of it reached the upstream,
        the upstream answers with ``response``, read by read."""
        self.server.data_received(request)
        self._iteration()  # held writes go out at the loop iteration's end (write_behind)
        sent = self.up.take()
        if sent and not self.conn.closed:
            for piece in response:
                self.conn.data_received(piece)
        kept = self.pool.take(UPSTREAM) is self.conn
        if kept:
            self.pool.release(self.conn)
        else:  # closed, or still busy: the next request gets a fresh connection
            self.conn.close()
            self.conn, self.up = self._pooled()
        records = [json.loads(line) for line in self.lines]
        self.lines.clear()
        for record in records:
            del record["time"], record["duration_ms"]
        self._iteration()
        return Outcome(sent, self.down.take(), records, kept, self.server.closing)

    def _iteration(self) -> None:
        """Let the loop run what is ready: the held writes' callback among it."""
        self.loop.run_until_complete(asyncio.sleep(0))

    def close(self) -> None:
        self.loop.run_until_complete(self.dp.close(grace=0.0))
        self.loop.close()
