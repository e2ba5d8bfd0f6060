"""The proxy's TLS transport alone: request/response round trips between two
``TlsTransport``s (``plait.proxy.tls_transport``) in one process, over loopback.

The proxies' contexts (``plait.proxy.tls``: TLS 1.3, P-256 certificates made with
openssl as for the benchmark's HAProxy and nginx), one connection, a 70-byte request
answered with a 1,170-byte response (about what the benchmark's upstream sends), one
request in flight. Prints the CPU time per round trip, both ends together, user and
system apart: the A/B for a change of the transport, whose cost is mostly system
calls and OpenSSL. For a deterministic count of user-space instructions, run it under
callgrind at two sizes and take the difference::

    .venv/bin/python benchmarks/tls_roundtrip.py --trips 40000
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python benchmarks/tls_roundtrip.py --trips 6000   # and --trips 1000

It runs whichever request path ``plait.proxy.native`` picks (``PLAIT_PURE=1``: the
interpreted one) and says which.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nuser-agent: wrk\r\n\r\n" + b"x" * 22
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 1131\r\n\r\n" + b"y" * 1131


class _Server(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.got = 0

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        while self.got >= len(REQUEST):
            self.got -= len(REQUEST)
            self.transport.write(RESPONSE)


class _Client(asyncio.Protocol):
    def __init__(self, trips: int, done: asyncio.Future[int]) -> None:
        self.trips = trips
        self.done = done
        self.trip = 0
        self.got = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got < len(RESPONSE):
            return
        self.got -= len(RESPONSE)
        self.trip += 1
        if self.trip >= self.trips:
            self.done.set_result(self.trip)
        else:
            self.transport.write(REQUEST)


def contexts(work: Path) -> tuple[Any, Any]:
    """(server, client) contexts as the proxies build them, from openssl-made certs."""
    from plait.proxy.tls import client_context, server_context

    from peers import make_certs

    certs = make_certs(work)
    bundle = certs.ca.read_bytes()
    server = server_context(certs.server_crt.read_bytes(), certs.server_key.read_bytes(), bundle)
    client = client_context(certs.client_crt.read_bytes(), certs.client_key.read_bytes(), bundle)
    return server, client


async def round_trips(server_ctx: Any, client_ctx: Any, trips: int) -> int:
    """``trips`` round trips over one TLS connection; returns how many completed."""
    from plait.proxy import tls_transport

    loop = asyncio.get_running_loop()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    lsock.setblocking(False)
    port = lsock.getsockname()[1]

    async def accept() -> Any:
        conn, _ = await loop.sock_accept(lsock)
        conn.setblocking(False)
        return await tls_transport.accept(server_ctx, conn, _Server(), 5.0)

    done: asyncio.Future[int] = loop.create_future()
    try:
        st, ct = await asyncio.gather(
            accept(),
            tls_transport.connect(client_ctx, ("127.0.0.1", port), _Client(trips, done), 5.0),
        )
    finally:
        lsock.close()
    ct.write(REQUEST)
    completed = await asyncio.wait_for(done, 60 + trips / 1000)
    ct.close()
    st.close()
    await asyncio.sleep(0.01)
    return completed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trips", type=int, default=40_000, help="round trips (40000)")
    args = p.parse_args(argv)
    import uvloop
    from plait.proxy import native

    with tempfile.TemporaryDirectory(prefix="plait-tls-rt-") as tmp:
        server_ctx, client_ctx = contexts(Path(tmp))
    t0, c0 = time.monotonic(), os.times()
    completed = uvloop.run(round_trips(server_ctx, client_ctx, args.trips))
    t1, c1 = time.monotonic(), os.times()
    user_us = (c1.user - c0.user) * 1e6 / completed
    sys_us = (c1.system - c0.system) * 1e6 / completed
    print(
        f"{completed} round trips in {t1 - t0:.2f} s: user {user_us:.1f} µs, system "
        f"{sys_us:.1f} µs per round trip (both ends); request path {native.STATE}"
    )
    return 0 if completed == args.trips else 1


if __name__ == "__main__":
    sys.exit(main())
