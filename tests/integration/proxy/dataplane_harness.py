"""Test tools for the data plane: a uvloop thread, recording upstream servers, configs.

The proxy under test and its upstreams run on one uvloop event loop in a background
thread (:class:`LoopThread`); tests drive them from the main thread with real clients
(curl subprocesses, raw sockets). Everything binds 127.0.0.1 port 0.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httptools
import uvloop

from plait.proxy.dataplane import DataPlane
from plait.proxy.runtime import (
    Cluster,
    Endpoint,
    Listener,
    ProxyConfig,
    RetryPolicy,
    Route,
    RouteMatch,
    RouteTable,
    VirtualHost,
    WeightedCluster,
)

T = TypeVar("T")
HOST = "127.0.0.1"


class LoopThread:
    """A uvloop event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        async def _call() -> T:
            return fn(*args)

        return self.run(_call())

    def stop(self) -> None:
        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(_cancel_all(), timeout=5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()


# -- a recording upstream ---------------------------------------------------------------


@dataclass
class Received:
    """One request as the upstream saw it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body_len: int = 0
    body_sha256: str = ""
    complete: bool = False

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ",".join(values) if values else None

    def header_count(self, name: str) -> int:
        return sum(1 for n, _ in self.headers if n.lower() == name.lower())


@dataclass
class UpstreamServer:
    """An HTTP/1.1 origin for tests. Paths choose behaviour (see ``_respond``)."""

    name: str
    accepts: int = 0
    requests: list[Received] = field(default_factory=list)
    raw: list[bytearray] = field(default_factory=list)  # bytes received, per connection
    port: int = 0
    server: Any = None
    transports: set[Any] = field(default_factory=set)
    force_status: int | None = None  # answer every request with this status
    delay_ms: int = 0  # wait this long before answering any request

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _UpstreamProto(self), HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self.transports):
            t.abort()


class _UpstreamProto(asyncio.Protocol):
    def __init__(self, srv: UpstreamServer) -> None:
        self.srv = srv
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.req: Received | None = None
        self.hash: Any = None
        self.tunnel = False
        self.raw = bytearray()
        self.url = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.raw = bytearray()
        self.srv.raw.append(self.raw)
        self.srv.accepts += 1
        self.srv.transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.srv.transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.raw += data
        if self.tunnel:
            self.transport.write(b"echo:" + data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.tunnel = True
            rest = data[exc.args[0] :]
            if rest:
                self.transport.write(b"echo:" + rest)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.hash = hashlib.sha256()
        self.req = Received("", "", "", [])

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.req is not None
        self.req.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        req = self.req
        assert req is not None
        req.method = self.parser.get_method().decode()
        req.target = self.url.decode("latin-1")
        req.version = self.parser.get_http_version()
        self.srv.requests.append(req)
        if (req.header("expect") or "").lower() == "100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if req.target.startswith("/ws") and self.parser.should_upgrade():
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                b"connection: Upgrade\r\n\r\n"
            )
        if req.target.startswith("/early"):
            self.transport.write(b"HTTP/1.1 413 Too Big\r\ncontent-length: 4\r\n\r\nbig\n")

    def on_body(self, body: bytes) -> None:
        assert self.req is not None
        self.req.body_len += len(body)
        self.hash.update(body)

    def on_message_complete(self) -> None:
        req = self.req
        assert req is not None
        req.complete = True
        req.body_sha256 = self.hash.hexdigest()
        if req.target.startswith(("/ws", "/early")):
            return
        asyncio.get_running_loop().create_task(self._respond(req))

    async def _respond(self, req: Received) -> None:
        """``/status/N``, ``/slow/MS``, ``/big/N`` (chunked, N bytes), ``/close``,
        ``/headers`` (the request head as seen), ``/ps`` (with a Proxy-Status), else an
        echo summary: name, body length and sha256."""
        t = self.transport
        path = req.target.split("?")[0]
        parts = path.strip("/").split("/")
        extra = b"x-served-by: " + self.srv.name.encode() + b"\r\n"
        if parts[0] == "slow":
            await asyncio.sleep(int(parts[1]) / 1000)
        if self.srv.delay_ms:
            await asyncio.sleep(self.srv.delay_ms / 1000)
        if t.is_closing():
            return
        if self.srv.force_status is not None:
            parts = ["status", str(self.srv.force_status)]
        if parts[0] == "reset":
            t.abort()
            return
        if parts[0] == "die-mid":
            t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
            await asyncio.sleep(0.05)
            t.abort()
            return
        if parts[0] == "status":
            body = f"status {parts[1]} from {self.srv.name}\n".encode()
            t.write(
                b"HTTP/1.1 %s X\r\ncontent-length: %d\r\n%s\r\n"
                % (parts[1].encode(), len(body), extra)
                + body
            )
            return
        if parts[0] == "big":
            n = int(parts[1])
            t.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n" + extra + b"\r\n")
            for piece in pattern_chunks(n):
                t.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                if t.get_write_buffer_size() > 1 << 20:
                    await asyncio.sleep(0.001)
            t.write(b"0\r\nx-trailer: done\r\n\r\n")
            return
        if parts[0] == "hugehead":
            fat = b"".join(b"x-fat-%d: %s\r\n" % (i, b"f" * 1000) for i in range(70))
            t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n" + fat + b"\r\n")
            return
        if parts[0] == "headers":
            body = "\n".join(f"{n}: {v}" for n, v in req.headers).encode("latin-1") + b"\n"
        else:
            summary = f"{req.method} {req.target} len={req.body_len} sha256={req.body_sha256}"
            body = f"{self.srv.name} {summary}\n".encode()
        head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n" % len(body) + extra
        head += b"connection: keep-alive\r\nkeep-alive: timeout=5\r\n"
        if parts[0] == "ps":
            head += b'proxy-status: "origin-gw"; error=destination_unavailable\r\n'
        if parts[0] == "close":
            head += b"connection: close\r\n"
        t.write(head + b"\r\n" + body)
        if parts[0] == "close":
            t.close()


def mapped_libraries(pid: int) -> set[str]:
    """The files mapped into process ``pid`` (``/proc/<pid>/maps``): its shared objects."""
    paths = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            paths.add(parts[5])
    return paths


def pattern_chunks(n: int, piece: int = 65536) -> Iterable[bytes]:
    """``n`` deterministic bytes in pieces (see :func:`pattern_sha256`)."""
    block = bytes(range(256)) * (piece // 256)
    sent = 0
    while sent < n:
        take = min(piece, n - sent)
        yield block[:take]
        sent += take


def pattern_sha256(n: int) -> str:
    h = hashlib.sha256()
    for piece in pattern_chunks(n):
        h.update(piece)
    return h.hexdigest()


# -- configs ------------------------------------------------------------------------------


def route(
    name: str,
    clusters: dict[str, int] | str,
    prefix: str = "/",
    timeout: float | None = None,
    retry: RetryPolicy | None = None,
) -> Route:
    if isinstance(clusters, str):
        clusters = {clusters: 1}
    wcs = tuple(WeightedCluster(c, w) for c, w in clusters.items())
    return Route(
        name=name,
        match=RouteMatch(prefix=prefix),
        clusters=wcs,
        total_weight=sum(clusters.values()),
        timeout=timeout,
        retry=retry,
    )


def outbound_config(
    services: dict[str, list[int]],
    *,
    routes: dict[str, list[Route]] | None = None,
    connect_timeout: float = 1.0,
    endpoints: dict[str, list[tuple[str, int]]] | None = None,
    inbound: dict[str, int] | None = None,
    extra_clusters: Iterable[Cluster] = (),
) -> ProxyConfig:
    """Outbound: a virtual host per service (domains ``svc`` and ``svc:80``) with
    ``routes[svc]`` then a catch-all to ``outbound|svc``; inbound: ``inbound|svc`` ->
    STATIC cluster at the given app port."""
    vhosts = []
    clusters: dict[str, Cluster] = {}
    eps: dict[str, tuple[Endpoint, ...]] = {}
    for svc, ports in services.items():
        cname = f"outbound|{svc}"
        rts = [*(routes or {}).get(svc, []), route(f"{svc}-default", cname)]
        vhosts.append(VirtualHost(svc, (svc, f"{svc}:80"), tuple(rts)))
        clusters[cname] = Cluster(cname, "round_robin", connect_timeout, "eds")
        eps[cname] = tuple(Endpoint(HOST, p) for p in ports)
    for cname, addrs in (endpoints or {}).items():
        clusters.setdefault(cname, Cluster(cname, "round_robin", connect_timeout, "eds"))
        eps[cname] = tuple(Endpoint(a, p) for a, p in addrs)
    table = RouteTable("outbound", tuple(vhosts))
    listeners = {
        "outbound": Listener("outbound", HOST, 0, "outbound", route_config_name="outbound")
    }
    for svc, app_port in (inbound or {}).items():
        name = f"inbound|{svc}"
        inline = RouteTable(name, (VirtualHost(name, ("*",), (route(name, name),)),))
        listeners[name] = Listener(name, HOST, 0, "inbound", route_table=inline, service=svc)
        clusters[name] = Cluster(
            name, "round_robin", connect_timeout, "static", (Endpoint(HOST, app_port),)
        )
    for cluster in extra_clusters:
        clusters[cluster.name] = cluster
    return ProxyConfig(
        listeners=listeners,
        route_tables={"outbound": table},
        clusters=clusters,
        endpoints=eps,
        versions={"test": "1"},
    )


# -- a proxy under test -------------------------------------------------------------------


class ProxyUnderTest:
    """A DataPlane with an outbound listener (and inbound ones) on a LoopThread."""

    def __init__(
        self,
        lt: LoopThread,
        node_id: str = "node-t",
        inbound: Iterable[str] = (),
        **kwargs: Any,
    ) -> None:
        self.lt = lt
        self.lines: list[str] = []
        from plait.proxy.accesslog import AccessLog
        from plait.proxy.metrics import Metrics

        self.metrics = Metrics()
        self.dp = DataPlane(
            node_id,
            metrics=self.metrics,
            access_log=AccessLog(self.lines.append),
            **kwargs,
        )
        self.port = lt.run(self.dp.bind("outbound", HOST, 0, "outbound"))[1]
        self.inbound_ports = {
            svc: lt.run(self.dp.bind(f"inbound|{svc}", HOST, 0, "inbound", svc))[1]
            for svc in inbound
        }

    def apply(self, config: ProxyConfig) -> None:
        self.lt.call(self.dp.apply, config)

    def close(self) -> None:
        self.lt.run(self.dp.close(grace=1.0))


def raw_exchange(port: int, data: bytes, timeout: float = 3.0) -> tuple[bytes, bool]:
    """Send ``data``, read until the peer closes or ``timeout``; (bytes, closed)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        closed = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                got = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not got:
                closed = True
                break
            chunks.append(got)
        return b"".join(chunks), closed
