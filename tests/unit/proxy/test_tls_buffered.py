"""TlsBuffered (plait.proxy.tls_buffered): TLS reads into one shared buffer, forwarded.

Forwarding with a recording inner protocol; then real uvloop TLS connections on
loopback: uvloop takes its buffered read path, a body larger than the buffer arrives
intact in bytes the inner protocol may keep, and both TLS sites of the proxy (inbound
accepts, ``UpstreamPool._connect_tls``) put the wrapper in front of their protocol.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from plait.proxy import tls_buffered
from plait.proxy.inbound import InboundAcceptor, MtlsHttp1Server
from plait.proxy.tls import client_context, server_context
from plait.proxy.tls_buffered import READ_SIZE, TlsBuffered
from plait.proxy.upstream import UpstreamConnection, UpstreamPool

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration" / "mtls"))
from certs_for_tests import PEM, key_pem, make_ca, make_leaf

TD = "plait.local"
SERVER_ID = f"spiffe://{TD}/svc/orders"
CLIENT_ID = f"spiffe://{TD}/svc/frontend"


class Recorder:
    """An inner protocol that records every call (and keeps what it was given)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.chunks: list[bytes] = []
        self.transport: Any = None
        self.eof_answer: bool | None = None
        self.done = asyncio.Event() if _has_loop() else None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.calls.append(("made", transport))

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.calls.append(("data", data))

    def eof_received(self) -> bool | None:
        self.calls.append(("eof", None))
        return self.eof_answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append(("lost", exc))
        if self.done is not None:
            self.done.set()

    def pause_writing(self) -> None:
        self.calls.append(("pause", None))

    def resume_writing(self) -> None:
        self.calls.append(("resume", None))

    def tunnel_eof(self, upstream: bool) -> None:
        self.calls.append(("tunnel_eof", upstream))


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# -- forwarding ----------------------------------------------------------------------------


def test_is_a_buffered_protocol_that_uvloop_reads_into() -> None:
    proto = TlsBuffered(Recorder())
    assert isinstance(proto, asyncio.BufferedProtocol)
    assert not isinstance(proto, asyncio.Protocol)  # uvloop would take the copying path
    assert not hasattr(proto, "__dict__")  # one slot per connection, nothing more


def test_every_connection_gets_the_one_shared_buffer() -> None:
    a, b = TlsBuffered(Recorder()), TlsBuffered(Recorder())
    buf = a.get_buffer(300)
    assert len(buf) == READ_SIZE
    assert not buf.readonly
    assert b.get_buffer(1 << 20).obj is buf.obj  # same storage, whatever the size hint
    assert a.get_buffer(-1).obj is buf.obj


def test_buffer_updated_hands_over_a_copy_of_exactly_n_bytes() -> None:
    inner = Recorder()
    proto = TlsBuffered(inner)
    buf = proto.get_buffer(100)
    buf[:5] = b"hello"
    proto.buffer_updated(5)
    buf[:5] = b"XXXXX"  # the next read reuses the buffer
    buf[:3] = b"abc"
    proto.buffer_updated(3)
    assert inner.chunks == [b"hello", b"abc"]
    assert all(type(c) is bytes for c in inner.chunks)


def test_lifecycle_and_flow_control_are_forwarded() -> None:
    inner = Recorder()
    proto = TlsBuffered(inner)
    transport = object()
    exc = ConnectionResetError()
    proto.connection_made(transport)  # type: ignore[arg-type]
    proto.pause_writing()
    proto.resume_writing()
    inner.eof_answer = True
    assert proto.eof_received() is True
    inner.eof_answer = None
    assert proto.eof_received() is None
    proto.tunnel_eof(upstream=True)
    proto.connection_lost(exc)
    assert inner.calls == [
        ("made", transport),
        ("pause", None),
        ("resume", None),
        ("eof", None),
        ("eof", None),
        ("tunnel_eof", True),
        ("lost", exc),
    ]


def test_the_inner_protocol_is_let_go_when_the_connection_is_lost() -> None:
    inner = Recorder()
    proto = TlsBuffered(inner)
    proto.connection_made(object())  # type: ignore[arg-type]
    assert proto.inner is inner
    proto.connection_lost(None)
    assert proto.inner is not inner  # no cycle through uvloop's bound methods
    # late calls (the other side of a tunnel) are dropped, not failed
    proto.tunnel_eof(upstream=True)
    proto.pause_writing()
    proto.resume_writing()
    assert proto.eof_received() is None
    proto.connection_lost(None)
    assert [c[0] for c in inner.calls] == ["made", "lost"]


# -- real TLS over loopback (uvloop) -------------------------------------------------------


def _pair(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, uri: str
) -> tuple[bytes, bytes]:
    """A leaf certificate for ``uri`` issued by ``ca``, and its key, as PEM."""
    cert, key = make_leaf(ca, ca_key, [uri], common_name="leaf")
    return cert.public_bytes(PEM), key_pem(key)


@pytest.fixture(scope="module")
def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts as the proxy builds them, from one test CA."""
    ca, ca_key = make_ca()
    bundle = ca.public_bytes(PEM)
    server = server_context(*_pair(ca, ca_key, SERVER_ID), bundle)
    client = client_context(*_pair(ca, ca_key, CLIENT_ID), bundle)
    return server, client


def _run(coro: Any) -> Any:
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, 20))
    finally:
        loop.close()


class _Counting(TlsBuffered):
    reads = 0

    def get_buffer(self, sizehint: int) -> memoryview:
        type(self).reads += 1
        return super().get_buffer(sizehint)


def test_a_large_body_arrives_intact_in_kept_bytes(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = contexts
    body = hashlib.sha256(b"seed").digest() * (300_000 // 32)  # > 4 buffers

    async def main() -> tuple[Recorder, Recorder]:
        loop = asyncio.get_running_loop()
        server_inner = Recorder()
        srv = await loop.create_server(
            lambda: _Counting(server_inner), "127.0.0.1", 0, ssl=server_ctx
        )
        port = srv.sockets[0].getsockname()[1]
        client_inner = Recorder()
        transport, proto = await loop.create_connection(
            lambda: TlsBuffered(client_inner), "127.0.0.1", port, ssl=client_ctx
        )
        assert transport.get_protocol() is proto and proto.inner is client_inner
        transport.write(body)
        while sum(map(len, server_inner.chunks)) < len(body):
            await asyncio.sleep(0.01)
        server_inner.transport.write(body[::-1])  # and back, to the client side
        while sum(map(len, client_inner.chunks)) < len(body):
            await asyncio.sleep(0.01)
        transport.close()  # close_notify: eof_received then connection_lost on the server
        assert server_inner.done is not None and client_inner.done is not None
        await server_inner.done.wait()
        await client_inner.done.wait()
        srv.close()
        return server_inner, client_inner

    _Counting.reads = 0
    server_inner, client_inner = _run(main())
    assert _Counting.reads > 0  # uvloop read through get_buffer, not data_received
    assert b"".join(server_inner.chunks) == body
    assert b"".join(client_inner.chunks) == body[::-1]
    assert len(server_inner.chunks) >= len(body) // READ_SIZE
    assert all(type(c) is bytes and 0 < len(c) <= READ_SIZE for c in server_inner.chunks)
    names = [c[0] for c in server_inner.calls]
    assert names[0] == "made" and names[-1] == "lost"
    assert "eof" in names
    # every read reused the one buffer: it holds the last read, the kept chunks their own
    assert tls_buffered._BUFFER.startswith(body[::-1][-len(client_inner.chunks[-1]) :])


def test_closed_tls_connections_are_freed_without_the_cycle_collector(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """uvloop keeps a buffered protocol's bound methods after the loss: the wrapper must
    not keep its protocol (and through it the transport) in a cycle."""
    server_ctx, client_ctx = contexts

    class Inner(Recorder):
        pass

    async def main() -> int:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(lambda: TlsBuffered(Inner()), "127.0.0.1", 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        for _ in range(20):
            inner = Inner()
            transport, _ = await loop.create_connection(
                lambda inner=inner: TlsBuffered(inner), "127.0.0.1", port, ssl=client_ctx
            )
            transport.write(b"ping")
            await asyncio.sleep(0.005)
            transport.close()
            assert inner.done is not None
            await inner.done.wait()
        del inner, transport
        await asyncio.sleep(0.2)
        srv.close()
        await srv.wait_closed()
        await asyncio.sleep(0.05)
        return sum(1 for o in gc.get_objects() if type(o) is Inner)

    gc.collect()
    gc.disable()
    try:
        alive = _run(main())
    finally:
        gc.enable()
    assert alive == 0


# -- the proxy's two TLS sites -------------------------------------------------------------


class _Slot:
    name = "inbound|orders"
    service = "orders"
    peer_trust_domain = TD

    def __init__(self, tls_mode: str) -> None:
        self.tls_mode = tls_mode


class _Tls:
    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx

    def server(self, service: str | None) -> ssl.SSLContext:
        return self.ctx


class _Dp:
    """What InboundAcceptor and MtlsHttp1Server use of a DataPlane until a request."""

    reuse_port = False
    request_head_timeout = 5.0

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.tls = _Tls(ctx)
        self.connections: set[Any] = set()
        self.events: list[tuple[str, str | None]] = []

    def tls_event(self, slot: Any, what: str, details: str | None = None) -> None:
        self.events.append((what, details))


@pytest.mark.parametrize("mode", ["strict", "permissive"])
def test_inbound_tls_accepts_read_through_the_wrapper(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], mode: str
) -> None:
    server_ctx, client_ctx = contexts

    async def main() -> tuple[_Dp, Any, Any]:
        dp = _Dp(server_ctx)
        acceptor = await InboundAcceptor.bind(dp, _Slot(mode), "127.0.0.1", 0)  # type: ignore[arg-type]
        port = acceptor.sock.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        while not dp.connections:
            await asyncio.sleep(0.01)
        (server,) = dp.connections
        protocol = server.transport.get_protocol()
        inner = getattr(protocol, "inner", None)  # until the connection is lost
        writer.close()
        acceptor.close()
        return dp, server, (protocol, inner)

    dp, server, (protocol, inner) = _run(main())
    assert dp.events == [("ok", None)]
    assert isinstance(server, MtlsHttp1Server)
    assert server.peer == CLIENT_ID
    assert isinstance(protocol, TlsBuffered) and inner is server


def test_inbound_plaintext_accepts_are_not_wrapped(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async def main() -> tuple[Any, Any]:
        dp = _Dp(contexts[0])
        acceptor = await InboundAcceptor.bind(dp, _Slot("plaintext"), "127.0.0.1", 0)  # type: ignore[arg-type]
        port = acceptor.sock.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        while not dp.connections:
            await asyncio.sleep(0.01)
        (server,) = dp.connections
        protocol = server.transport.get_protocol()
        writer.close()
        acceptor.close()
        return server, protocol

    server, protocol = _run(main())
    assert protocol is server and not isinstance(server, MtlsHttp1Server)


def test_upstream_tls_connects_read_through_the_wrapper(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = contexts

    async def main() -> tuple[Any, Any, list[bytes]]:
        loop = asyncio.get_running_loop()
        got: list[bytes] = []

        class App(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                got.append(data)
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

        srv = await loop.create_server(App, "127.0.0.1", 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        pool = UpstreamPool("c")
        key = ("127.0.0.1", port, CLIENT_ID)
        conn = await pool.connect(key, 5.0, (client_ctx, (SERVER_ID,)))
        protocol = conn.transport.get_protocol() if conn.transport is not None else None
        inner = getattr(protocol, "inner", None)  # until the connection is lost
        conn.transport.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")  # type: ignore[union-attr]
        while not got:
            await asyncio.sleep(0.01)
        conn.close()
        srv.close()
        return conn, (protocol, inner), got

    conn, (protocol, inner), got = _run(main())
    assert isinstance(conn, UpstreamConnection)  # callers keep the inner protocol
    assert isinstance(protocol, TlsBuffered) and inner is conn
    assert got and got[0].startswith(b"GET / ")


def test_plaintext_sockets_are_not_wrapped() -> None:
    """Only the TLS sites: the plaintext hot path keeps its plain protocols."""

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        pool = UpstreamPool("c")
        conn = await pool.connect(("127.0.0.1", port), 5.0)
        protocol = conn.transport.get_protocol() if conn.transport is not None else None
        conn.close()
        srv.close()
        return conn, protocol

    conn, protocol = _run(main())
    assert protocol is conn
