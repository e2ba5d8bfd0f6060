#!/usr/bin/env python3
"""A yardstick, not a proxy: the least a Python HTTP/1.1 relay can do per request.

    python benchmarks/lean_relay.py LISTEN_PORT UPSTREAM_PORT ACCESS_LOG

uvloop + httptools, one pre-opened keep-alive connection per downstream request in flight
(a pool of 64 to 127.0.0.1:UPSTREAM_PORT; one the upstream closes, idle past its
keep-alive timeout, leaves the pool and a new one takes its place), and per request only
the basic work every proxy
does: parse the request head and the response head (httptools callbacks, both ways),
route on Host (a dict), drop hop-by-hop fields, add ``x-request-id`` (when missing) and
``Via``, count the response in a dict, and write one access log line to a buffered file.
Everything goes out in one write per direction per read.

What it leaves out on purpose is everything else plait does (header validity checks
beyond llhttp's, Proxy-Status, retries, timeouts, connection errors, bodies across
reads, pipelining, flow control, P2C balancing, metrics histograms, a JSON log line):
it is the floor for a proxy written in Python on this machine, measured side by side
with HAProxy and plait by ``benchmarks/lean_compare.py``. Never use it for anything else:
an upstream error or a second request on a busy connection is not handled.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

import httptools
import uvloop

HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
}
VIA = b"via: 1.1 lean\r\n\r\n"
ROUTES = {b"bench": "outbound|bench"}  # Host -> cluster: the routing decision
counts: dict[tuple[str, int], int] = {}
pool: list[Upstream] = []
_rand = random.Random().getrandbits


class Upstream(asyncio.Protocol):
    """One pooled connection to the upstream, relaying one response at a time."""

    def __init__(self, log: object) -> None:
        self.log = log
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.down: Downstream | None = None
        self.out: list[bytes] = []
        self.cluster = ""
        self.status = 0
        self.size = 0
        self.t0 = 0.0
        self.rid = b""
        self.path = b""
        self.reason = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        # Out of the pool, or the next request sent on it would never be answered
        # (the relay slowed from round to round as the upstream closed idle ones).
        if self in pool:
            pool.remove(self)
        if self.down is not None:
            self.down.transport.close()
        asyncio.get_running_loop().create_task(connect(self.log))

    def data_received(self, data: bytes) -> None:
        down = self.down
        self.out = out = []
        self.parser.feed_data(data)
        if out and down is not None:
            down.transport.writelines(out)

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        head = [b"HTTP/1.1 %d %s\r\n" % (status, self.reason)]
        for name, value in self.headers:
            if name.lower() not in HOP_BY_HOP:
                head.append(name + b": " + value + b"\r\n")
        head.append(VIA)
        self.headers = []
        self.out.append(b"".join(head))
        self.status = status
        self.size = 0

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        self.out.append(body)

    def on_message_complete(self) -> None:
        self.down = None
        pool.append(self)
        key = (self.cluster, self.status)
        counts[key] = counts.get(key, 0) + 1
        self.log.write(  # type: ignore[attr-defined]
            b'{"time":%.3f,"request_id":"%s","path":"%s","status":%d,"bytes":%d,'
            b'"duration_ms":%.3f,"upstream":"%s"}\n'
            % (
                time.time(),
                self.rid,
                self.path,
                self.status,
                self.size,
                (time.monotonic() - self.t0) * 1000,
                self.cluster.encode(),
            )
        )


class Downstream(asyncio.Protocol):
    """A client connection: parse, route, forward on a pooled upstream connection."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.up: Upstream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        host = rid = None
        head = [self.parser.get_method() + b" " + self.url + b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            lower = name.lower()
            if lower == b"host":
                host = value
            elif lower == b"x-request-id":
                rid = value
            if lower not in HOP_BY_HOP:
                head.append(name + b": " + value + b"\r\n")
        self.headers = []
        if rid is None:
            rid = b"%032x" % _rand(128)
            head.append(b"x-request-id: " + rid + b"\r\n")
        head.append(VIA)
        cluster = ROUTES.get(host or b"")
        if cluster is None:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            return
        up = self.up = pool.pop()
        up.down = self
        up.cluster = cluster
        up.t0 = time.monotonic()
        up.rid = rid
        up.path = self.url
        up.transport.write(b"".join(head))

    def on_body(self, body: bytes) -> None:
        if self.up is not None:
            self.up.transport.write(body)


UPSTREAM_PORT = 0


async def connect(log: object) -> None:
    """One more pooled connection to the upstream."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Upstream(log), "127.0.0.1", UPSTREAM_PORT)
    pool.append(conn)


async def main(listen: int, upstream: int, log_path: str) -> None:
    global UPSTREAM_PORT
    UPSTREAM_PORT = upstream
    loop = asyncio.get_running_loop()
    with open(log_path, "ab", buffering=65536) as log:
        for _ in range(64):
            await connect(log)
        server = await loop.create_server(Downstream, "127.0.0.1", listen)
        async with server:
            await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
