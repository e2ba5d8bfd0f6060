"""TlsTransport (plait.proxy.tls_transport): TLS over non-blocking ``ssl.SSLSocket``s.

Real TLS connections over loopback (127.0.0.1, ephemeral ports, uvloop loops), with
recording protocols: a body several read buffers long goes both ways intact, in
``bytes`` chunks of at most ``READ_SIZE``; the peer's close is ``eof_received`` then
``connection_lost``; flow control pauses and resumes the writer around ``HIGH_WATER`` /
``LOW_WATER`` while the reader is paused; ``eof_received`` returning True keeps the
transport writable (a stdlib client half-closes its TCP write side and still reads the
answer), returning None closes it; ``abort`` drops buffered data and ``close`` sends it
first; handshake failures (unknown CA, silent peer, refused connect) reach the caller
without leaking a socket; closed connections are freed without the cycle collector;
and both TLS sites of the proxy (inbound accepts, ``UpstreamPool._connect_tls``) run
their protocols on a TlsTransport, the plaintext ones not.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from plait.proxy import tls_transport
from plait.proxy.dataplane import DataPlane, ListenerSlot
from plait.proxy.inbound import InboundAcceptor, MtlsHttp1Server
from plait.proxy.metrics import Metrics
from plait.proxy.tls import client_context, server_context
from plait.proxy.tls_transport import HIGH_WATER, LOW_WATER, READ_SIZE, TlsTransport
from plait.proxy.upstream import UpstreamConnection, UpstreamPool

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration" / "mtls"))
from certs_for_tests import PEM, key_pem, make_ca, make_leaf

TD = "plait.local"
SERVER_ID = f"spiffe://{TD}/svc/orders"
CLIENT_ID = f"spiffe://{TD}/svc/frontend"

Contexts = tuple[ssl.SSLContext, ssl.SSLContext]


# -- helpers -------------------------------------------------------------------------------


def _pair_pem(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, uri: str
) -> tuple[bytes, bytes]:
    """A leaf certificate for ``uri`` issued by ``ca``, and its key, as PEM."""
    cert, key = make_leaf(ca, ca_key, [uri], common_name="leaf")
    return cert.public_bytes(PEM), key_pem(key)


@pytest.fixture(scope="module")
def contexts() -> Contexts:
    """(server, client) contexts as the proxy builds them, from one test CA."""
    ca, ca_key = make_ca()
    bundle = ca.public_bytes(PEM)
    server = server_context(*_pair_pem(ca, ca_key, SERVER_ID), bundle)
    client = client_context(*_pair_pem(ca, ca_key, CLIENT_ID), bundle)
    return server, client


@pytest.fixture(scope="module")
def foreign_server_context() -> ssl.SSLContext:
    """A server context whose certificate (and trust) is another CA's."""
    ca, ca_key = make_ca()
    return server_context(*_pair_pem(ca, ca_key, SERVER_ID), ca.public_bytes(PEM))


def _run(coro: Any) -> Any:
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, 20))
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def _pattern(n: int, seed: bytes = b"seed") -> bytes:
    """``n`` bytes that never repeat a 32-byte block: reordering or loss shows."""
    blocks = (hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(n // 32 + 1))
    return b"".join(blocks)[:n]


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.005)


class Recorder(asyncio.Protocol):
    """A protocol that records every call (and keeps what it was given)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.chunks: list[Any] = []
        self.transport: Any = None
        self.eof_answer: bool | None = None
        self.lost = asyncio.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.calls.append(("made", None))

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.calls.append(("data", len(data)))

    def eof_received(self) -> bool | None:
        self.calls.append(("eof", None))
        return self.eof_answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append(("lost", exc))
        self.lost.set()

    def pause_writing(self) -> None:
        self.calls.append(("pause", self.transport.get_write_buffer_size()))

    def resume_writing(self) -> None:
        self.calls.append(("resume", self.transport.get_write_buffer_size()))

    @property
    def received(self) -> int:
        return sum(map(len, self.chunks))

    def names(self, *wanted: str) -> list[str]:
        return [c[0] for c in self.calls if not wanted or c[0] in wanted]


def _listener(rcvbuf: int | None = None) -> socket.socket:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # inherited by the accepted sockets
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    lsock.setblocking(False)
    return lsock


async def _accept_tls(
    lsock: socket.socket, ctx: ssl.SSLContext, protocol: asyncio.Protocol, timeout: float = 5.0
) -> TlsTransport:
    conn, _ = await asyncio.get_running_loop().sock_accept(lsock)
    conn.setblocking(False)
    return await tls_transport.accept(ctx, conn, protocol, timeout)


async def _pair(
    contexts: Contexts,
    server: asyncio.Protocol,
    client: asyncio.Protocol,
    rcvbuf: int | None = None,
) -> tuple[TlsTransport, TlsTransport]:
    """A TlsTransport server (accept) and client (connect), connected to each other."""
    server_ctx, client_ctx = contexts
    lsock = _listener(rcvbuf)
    port = lsock.getsockname()[1]
    try:
        st, ct = await asyncio.gather(
            _accept_tls(lsock, server_ctx, server),
            tls_transport.connect(client_ctx, ("127.0.0.1", port), client, 5.0),
        )
    finally:
        lsock.close()
    return st, ct


# -- data both ways, the peer's close ------------------------------------------------------


def test_a_large_body_goes_both_ways_intact(contexts: Contexts) -> None:
    body = _pattern(300_000)  # > 4 read buffers

    async def main() -> tuple[Recorder, Recorder]:
        server, client = Recorder(), Recorder()
        st, ct = await _pair(contexts, server, client)
        assert isinstance(st, TlsTransport) and isinstance(ct, TlsTransport)
        assert server.transport is st and client.transport is ct
        assert st.get_protocol() is server and ct.get_protocol() is client
        assert not ct.can_write_eof()
        der = ct.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert x509.load_der_x509_certificate(der).subject.rfc4514_string() == "CN=leaf"
        assert ct.get_extra_info("peername") == st.get_extra_info("sockname")

        ct.write(body)
        await _until(lambda: server.received >= len(body))
        st.writelines([body[::-1][:1000], body[::-1][1000:]])  # and back, to the client
        await _until(lambda: client.received >= len(body))
        assert server.names() == ["made"] + ["data"] * len(server.chunks)

        ct.close()  # close_notify: eof_received then connection_lost on the server
        assert ct.is_closing()
        await server.lost.wait()
        await client.lost.wait()
        await asyncio.sleep(0.05)  # nothing more comes
        return server, client

    server, client = _run(main())
    assert b"".join(server.chunks) == body
    assert b"".join(client.chunks) == body[::-1]
    for proto in (server, client):
        assert len(proto.chunks) >= len(body) // READ_SIZE
        assert all(type(c) is bytes and 0 < len(c) <= READ_SIZE for c in proto.chunks)
    assert server.names("made", "eof", "lost") == ["made", "eof", "lost"]
    assert server.calls[-1] == ("lost", None)
    assert server.names()[-2:] == ["eof", "lost"]
    assert client.names("made", "eof", "lost") == ["made", "lost"]
    assert client.calls[-1] == ("lost", None)
    assert server.transport.get_protocol() is None  # dropped after connection_lost


# -- flow control --------------------------------------------------------------------------


def test_a_paused_reader_pauses_the_writer_until_it_resumes(contexts: Contexts) -> None:
    data = _pattern(4 * 1024 * 1024, b"flow")
    piece = 64 * 1024

    async def main() -> tuple[Recorder, Recorder, int]:
        server, client = Recorder(), Recorder()
        st, ct = await _pair(contexts, server, client, rcvbuf=32 * 1024)
        # small kernel buffers: the kernel cannot take 4 MB while nobody reads
        ct.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        st.pause_reading()
        assert not st.is_reading()
        for i in range(0, len(data), piece):
            ct.write(data[i : i + piece])
        assert client.names("pause", "resume") == ["pause"]
        buffered = ct.get_write_buffer_size()
        assert buffered > HIGH_WATER
        await asyncio.sleep(0.2)
        assert server.chunks == []  # paused: nothing was read
        assert client.names("pause", "resume") == ["pause"]  # still paused
        assert ct.get_write_buffer_size() > LOW_WATER

        st.resume_reading()
        assert st.is_reading()
        await _until(lambda: server.received >= len(data))
        await _until(lambda: ct.get_write_buffer_size() == 0)
        ct.close()
        await server.lost.wait()
        await client.lost.wait()
        return server, client, buffered

    server, client, buffered = _run(main())
    assert buffered > len(data) // 2  # most of it waited in the transport
    assert b"".join(server.chunks) == data
    assert all(0 < len(c) <= READ_SIZE for c in server.chunks)
    flow = [c for c in client.calls if c[0] in ("pause", "resume")]
    assert [name for name, _ in flow] == ["pause", "resume"]
    assert flow[0][1] > HIGH_WATER
    assert flow[1][1] <= LOW_WATER


# -- eof_received: True keeps the transport writable, None closes it -----------------------


def _half_closing_client(port: int, ctx: ssl.SSLContext, request: bytes) -> bytes:
    """A blocking stdlib TLS client: send, half-close TCP, read until the end."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with raw, ctx.wrap_socket(raw) as tls:
        tls.sendall(request)
        # the base class' shutdown: SSLSocket.shutdown would drop the SSL object
        socket.socket.shutdown(tls, socket.SHUT_WR)
        got = b""
        while chunk := tls.recv(65536):
            got += chunk
        return got


class _Answering(Recorder):
    """Answers after the peer's end, from the loop's next iteration; reading is resumed
    first (as Http1Server does when its queue moves): the end is not read twice."""

    def eof_received(self) -> bool | None:
        answer = super().eof_received()
        asyncio.get_running_loop().call_soon(self._resume)
        return answer

    def _resume(self) -> None:
        if self.transport.is_closing():  # eof_received said close: answer into it now
            self._answer()
            return
        self.transport.resume_reading()
        asyncio.get_running_loop().call_later(0.05, self._answer)

    def _answer(self) -> None:
        self.calls.append(("answer", self.transport.is_closing()))
        self.transport.write(b"answer to " + b"".join(self.chunks))
        self.transport.close()


@pytest.mark.parametrize("keep_open", [True, None])
def test_eof_received_true_keeps_the_transport_writable(
    contexts: Contexts, keep_open: bool | None
) -> None:
    server_ctx, client_ctx = contexts

    async def main() -> tuple[bytes, _Answering]:
        lsock = _listener()
        port = lsock.getsockname()[1]
        server = _Answering()
        server.eof_answer = keep_open
        reply = asyncio.ensure_future(
            asyncio.to_thread(_half_closing_client, port, client_ctx, b"the question")
        )
        try:
            await _accept_tls(lsock, server_ctx, server)
        finally:
            lsock.close()
        got = await reply
        await server.lost.wait()
        return got, server

    got, server = _run(main())
    assert b"".join(server.chunks) == b"the question"
    assert server.names("made", "eof", "lost") == ["made", "eof", "lost"]
    assert server.calls[-1] == ("lost", None)
    if keep_open:
        assert ("answer", False) in server.calls  # still open after eof_received
        assert got == b"answer to the question"
    else:
        assert ("answer", True) in server.calls  # closed: the write was dropped
        assert got == b""


# -- abort and close -----------------------------------------------------------------------


def test_abort_closes_at_once_and_ignores_later_writes(contexts: Contexts) -> None:
    async def main() -> tuple[Recorder, Recorder]:
        server, client = Recorder(), Recorder()
        _, ct = await _pair(contexts, server, client)
        ct.write(b"before")
        await _until(lambda: server.received >= 6)
        ct.abort()
        assert ct.is_closing() and not ct.is_reading()
        assert client.names("lost") == []  # on the next loop iteration
        ct.write(b"after")  # ignored, not raised
        ct.writelines([b"after"])
        assert ct.get_write_buffer_size() == 0
        await client.lost.wait()
        ct.abort()
        ct.close()
        await server.lost.wait()
        await asyncio.sleep(0.05)
        assert ct.is_closing()
        return server, client

    server, client = _run(main())
    assert client.calls == [("made", None), ("lost", None)]
    assert b"".join(server.chunks) == b"before"
    assert server.names("lost") == ["lost"]


async def _raised(awaitable: Awaitable[Any]) -> BaseException | None:
    """What ``awaitable`` raised (None: it returned)."""
    try:
        await awaitable
    except Exception as exc:  # checked by the test
        return exc
    return None


async def _buffered_pair(contexts: Contexts, data: bytes) -> tuple[Recorder, Recorder, Any, Any]:
    """A connected pair with small socket buffers, the server not reading, and ``data``
    written by the client: most of it waits in the client transport's buffer."""
    server, client = Recorder(), Recorder()
    st, ct = await _pair(contexts, server, client, rcvbuf=32 * 1024)
    ct.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    st.pause_reading()
    ct.write(data)
    assert ct.get_write_buffer_size() > 0
    return server, client, st, ct


def test_abort_drops_what_is_buffered(contexts: Contexts) -> None:
    data = _pattern(2 * 1024 * 1024, b"abort")

    async def main() -> tuple[Recorder, Recorder]:
        server, client, st, ct = await _buffered_pair(contexts, data)
        ct.abort()
        assert ct.get_write_buffer_size() == 0
        st.resume_reading()
        await client.lost.wait()
        await server.lost.wait()
        return server, client

    server, client = _run(main())
    got = b"".join(server.chunks)
    assert len(got) < len(data) and data.startswith(got)
    assert client.names("lost") == ["lost"] and client.calls[-1] == ("lost", None)


def test_close_sends_what_is_buffered_first(contexts: Contexts) -> None:
    data = _pattern(2 * 1024 * 1024, b"close")

    async def main() -> tuple[Recorder, Recorder]:
        server, client, st, ct = await _buffered_pair(contexts, data)
        ct.close()
        assert ct.is_closing()
        ct.write(b"after close")  # ignored
        await asyncio.sleep(0.1)
        assert client.names("lost") == []  # still sending
        assert ct.get_write_buffer_size() > 0
        st.resume_reading()
        await server.lost.wait()
        await client.lost.wait()
        return server, client

    server, client = _run(main())
    assert b"".join(server.chunks) == data
    assert server.names()[-2:] == ["eof", "lost"]
    assert server.calls[-1] == ("lost", None)
    assert client.calls[-1] == ("lost", None) and client.names("lost") == ["lost"]


# -- handshake failures --------------------------------------------------------------------


def test_an_unknown_server_ca_fails_connect_and_leaks_no_socket(
    contexts: Contexts, foreign_server_context: ssl.SSLContext
) -> None:
    _, client_ctx = contexts

    async def main() -> tuple[BaseException, BaseException, int, int, Recorder, Recorder]:
        lsock = _listener()
        port = lsock.getsockname()[1]
        before = _fds()
        server, client = Recorder(), Recorder()
        accepted: list[socket.socket] = []

        async def serve() -> None:
            conn, _ = await asyncio.get_running_loop().sock_accept(lsock)
            accepted.append(conn)
            conn.setblocking(False)
            await tls_transport.accept(foreign_server_context, conn, server, 5.0)

        results = await asyncio.gather(
            serve(),
            tls_transport.connect(client_ctx, ("127.0.0.1", port), client, 5.0),
            return_exceptions=True,
        )
        server_exc, client_exc = results
        assert accepted and accepted[0].fileno() == -1  # handed to the SSLSocket, closed
        await asyncio.sleep(0.05)
        after = _fds()
        lsock.close()
        return server_exc, client_exc, before, after, server, client

    server_exc, client_exc, before, after, server, client = _run(main())
    assert isinstance(client_exc, ssl.SSLCertVerificationError), repr(client_exc)
    assert isinstance(server_exc, (ssl.SSLError, OSError)), repr(server_exc)
    assert after == before
    assert server.calls == [] and client.calls == []  # no protocol saw a connection


def test_a_silent_server_times_the_handshake_out(contexts: Contexts) -> None:
    _, client_ctx = contexts

    async def main() -> tuple[BaseException | None, float, int, int, Recorder]:
        lsock = _listener()
        port = lsock.getsockname()[1]
        before = _fds()
        client = Recorder()
        accepting = asyncio.ensure_future(asyncio.get_running_loop().sock_accept(lsock))
        t0 = time.monotonic()
        exc = await _raised(
            tls_transport.connect(client_ctx, ("127.0.0.1", port), client, timeout=0.3)
        )
        elapsed = time.monotonic() - t0
        conn, _ = await accepting  # the server accepted and never spoke
        conn.close()
        await asyncio.sleep(0.05)
        after = _fds()
        lsock.close()
        return exc, elapsed, before, after, client

    exc, elapsed, before, after, client = _run(main())
    assert isinstance(exc, TimeoutError), repr(exc)
    assert 0.25 <= elapsed < 5
    assert after == before
    assert client.calls == []


def test_a_silent_client_times_the_accept_out(contexts: Contexts) -> None:
    server_ctx, _ = contexts

    async def main() -> tuple[BaseException | None, socket.socket, int, int, Recorder]:
        loop = asyncio.get_running_loop()
        lsock = _listener()
        port = lsock.getsockname()[1]
        before = _fds()
        server = Recorder()
        raw = socket.socket()
        raw.setblocking(False)
        await loop.sock_connect(raw, ("127.0.0.1", port))
        conn, _ = await loop.sock_accept(lsock)
        conn.setblocking(False)
        exc = await _raised(tls_transport.accept(server_ctx, conn, server, 0.3))
        raw.close()
        await asyncio.sleep(0.05)
        after = _fds()
        lsock.close()
        return exc, conn, before, after, server

    exc, conn, before, after, server = _run(main())
    assert isinstance(exc, TimeoutError), repr(exc)
    assert conn.fileno() == -1
    assert after == before
    assert server.calls == []


def test_a_refused_connect_raises_and_leaks_no_socket(contexts: Contexts) -> None:
    _, client_ctx = contexts

    async def main() -> tuple[BaseException | None, int, int]:
        lsock = _listener()
        port = lsock.getsockname()[1]
        lsock.close()  # nobody listens there now
        before = _fds()
        exc = await _raised(tls_transport.connect(client_ctx, ("127.0.0.1", port), Recorder(), 2.0))
        await asyncio.sleep(0.05)
        return exc, before, _fds()

    exc, before, after = _run(main())
    assert isinstance(exc, ConnectionRefusedError), repr(exc)
    assert after == before


# -- no reference cycle --------------------------------------------------------------------


def test_closed_tls_connections_are_freed_without_the_cycle_collector(
    contexts: Contexts,
) -> None:
    """After connection_lost the transport drops its protocol: the protocol (which keeps
    its transport) must not sit in a cycle that only the collector would free; and
    nothing of the handshakes stays (their sockets, the SSLWant*Errors they raised)."""
    server_ctx, client_ctx = contexts

    class Inner(Recorder):
        pass

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        lsock = _listener()
        port = lsock.getsockname()[1]
        server_lost: list[asyncio.Event] = []
        handshakes: set[asyncio.Future[Any]] = set()

        async def serve() -> None:  # handshakes side by side, as InboundAcceptor's
            while True:
                conn, _ = await loop.sock_accept(lsock)
                conn.setblocking(False)
                event = asyncio.Event()
                server_lost.append(event)
                protocol = _Signalling(Inner(), event)
                task = asyncio.ensure_future(tls_transport.accept(server_ctx, conn, protocol, 5.0))
                handshakes.add(task)
                task.add_done_callback(handshakes.discard)

        async def one() -> None:
            inner = Inner()
            transport = await tls_transport.connect(client_ctx, ("127.0.0.1", port), inner, 5.0)
            transport.write(b"ping")
            await asyncio.sleep(0.005)
            transport.close()
            await inner.lost.wait()

        server_task = asyncio.ensure_future(serve())
        for _ in range(5):  # 4 connects at once: the pool's connects overlap too
            await asyncio.gather(*(one() for _ in range(4)))
        await _until(lambda: len(server_lost) == 20 and all(e.is_set() for e in server_lost))
        server_task.cancel()
        await asyncio.gather(server_task, return_exceptions=True)
        del server_task
        lsock.close()
        await asyncio.sleep(0.05)
        kinds = (Inner, ssl.SSLSocket, ssl.SSLWantReadError, ssl.SSLWantWriteError)
        return [sum(1 for o in gc.get_objects() if type(o) is kind) for kind in kinds]

    gc.collect()
    gc.disable()
    try:
        alive = _run(main())
    finally:
        gc.enable()
    # Neither the protocols nor the sockets nor the handshakes' SSLWant*Errors. Compiled,
    # an await inside an except clause of handshake() leaked, when handshakes overlapped,
    # about one SSLWantReadError per handshake and with its traceback the SSLSocket:
    # references lost, so not even the collector freed them.
    assert alive == [0, 0, 0, 0]


class _Signalling(asyncio.Protocol):
    """Forwards to ``inner`` and sets ``event`` when the connection is lost."""

    def __init__(self, inner: Recorder, event: asyncio.Event) -> None:
        self.inner: Recorder | None = inner
        self.event = event

    def connection_made(self, transport: Any) -> None:
        assert self.inner is not None
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        assert self.inner is not None
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.inner.connection_lost(exc)
        self.inner = None  # the recorder keeps its transport: let both go
        self.event.set()


# -- the proxy's two TLS sites -------------------------------------------------------------


def _slot(tls_mode: str) -> ListenerSlot:
    return ListenerSlot(
        name="inbound|orders",
        direction="inbound",
        service="orders",
        hop="node/inbound",
        source="orders",
        tls_mode=tls_mode,  # type: ignore[arg-type]
        peer_trust_domain=TD,
    )


class _Tls:
    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx

    def server(self, service: str | None) -> ssl.SSLContext:
        return self.ctx


def _dp(ctx: ssl.SSLContext) -> DataPlane:
    """A DataPlane whose server TLS context is ``ctx`` (what InboundAcceptor and
    MtlsHttp1Server use of it until a request)."""
    dp = DataPlane("node", metrics=Metrics())
    dp.tls = _Tls(ctx)  # type: ignore[assignment]
    return dp


def _handshakes(dp: DataPlane) -> list[str]:
    """The plait_tls_handshakes_total series of ``dp`` with a count."""
    return [
        line
        for line in dp.metrics.render().splitlines()
        if line.startswith("plait_tls_handshakes_total{")
    ]


@pytest.mark.parametrize("mode", ["strict", "permissive"])
def test_inbound_tls_accepts_read_through_the_wrapper(contexts: Contexts, mode: str) -> None:
    server_ctx, client_ctx = contexts

    async def main() -> tuple[DataPlane, Any, Any, Any]:
        dp = _dp(server_ctx)
        acceptor = await InboundAcceptor.bind(dp, _slot(mode), "127.0.0.1", 0)
        port = acceptor.sock.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        await _until(lambda: bool(dp.connections))
        (server,) = dp.connections
        transport = server.transport
        protocol = transport.get_protocol()
        writer.close()
        acceptor.close()
        return dp, server, transport, protocol

    dp, server, transport, protocol = _run(main())
    assert _handshakes(dp) == [
        'plait_tls_handshakes_total{listener="inbound|orders",result="ok"} 1'
    ]
    assert isinstance(server, MtlsHttp1Server)
    assert server.peer == CLIENT_ID
    assert isinstance(transport, TlsTransport)
    assert protocol is server


def test_inbound_plaintext_accepts_are_not_wrapped(contexts: Contexts) -> None:
    async def main() -> tuple[Any, Any, Any]:
        dp = _dp(contexts[0])
        acceptor = await InboundAcceptor.bind(dp, _slot("plaintext"), "127.0.0.1", 0)
        port = acceptor.sock.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        await _until(lambda: bool(dp.connections))
        (server,) = dp.connections
        transport = server.transport
        protocol = transport.get_protocol()
        writer.close()
        acceptor.close()
        return server, transport, protocol

    server, transport, protocol = _run(main())
    assert protocol is server and not isinstance(server, MtlsHttp1Server)
    assert not isinstance(transport, TlsTransport)


class _Handler:
    """An UpstreamHandler that records the response."""

    def __init__(self) -> None:
        self.head: tuple[int, bytes, list[tuple[bytes, bytes]], bool] | None = None
        self.body = b""
        self.done = asyncio.Event()
        self.errors: list[Any] = []

    def upstream_head(
        self,
        conn: Any,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        whole: Any = None,
    ) -> None:
        self.head = (status, reason, headers, keep_alive)

    def upstream_body(self, data: bytes) -> None:
        self.body += data

    def upstream_complete(self, conn: Any, trailers: list[tuple[bytes, bytes]]) -> None:
        self.done.set()

    def upstream_upgraded(self, conn: Any, rest: bytes) -> None:
        self.errors.append(("upgraded", rest))

    def upstream_lost(self, conn: Any, exc: Exception | None) -> None:
        self.errors.append(("lost", exc))
        self.done.set()

    def upstream_error(self, conn: Any, details: str, error: str = "") -> None:
        self.errors.append(("error", details))
        self.done.set()

    def upstream_write_paused(self) -> None:
        pass

    def upstream_write_resumed(self) -> None:
        pass

    def uncork(self) -> None:
        pass


def test_upstream_tls_connects_read_through_the_wrapper(contexts: Contexts) -> None:
    server_ctx, client_ctx = contexts

    async def main() -> tuple[Any, Any, Any, list[bytes], _Handler]:
        loop = asyncio.get_running_loop()
        got: list[bytes] = []

        class App(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                got.append(data)
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-app: 1\r\n\r\nok")

        srv = await loop.create_server(App, "127.0.0.1", 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        pool = UpstreamPool("c")
        key = ("127.0.0.1", port, CLIENT_ID)
        conn = await pool.connect(key, 5.0, (client_ctx, (SERVER_ID,)))
        transport = conn.transport
        protocol = transport.get_protocol() if transport is not None else None
        handler = _Handler()
        conn.begin(handler, head_request=False)  # type: ignore[arg-type]
        conn.transport.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")  # type: ignore[union-attr]
        await handler.done.wait()
        conn.close()
        srv.close()
        return conn, transport, protocol, got, handler

    conn, transport, protocol, got, handler = _run(main())
    assert isinstance(conn, UpstreamConnection)
    assert isinstance(transport, TlsTransport)
    assert protocol is conn
    assert got and got[0].startswith(b"GET / ")
    assert handler.errors == []
    assert handler.head is not None
    status, reason, headers, keep_alive = handler.head
    assert (status, reason, keep_alive) == (200, b"OK", True)
    assert (b"x-app", b"1") in headers
    assert handler.body == b"ok"


def test_plaintext_sockets_are_not_wrapped() -> None:
    """Only the TLS sites: the plaintext hot path keeps uvloop's plain transports."""

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        pool = UpstreamPool("c")
        conn = await pool.connect(("127.0.0.1", port), 5.0)
        transport = conn.transport
        protocol = transport.get_protocol() if transport is not None else None
        conn.close()
        srv.close()
        return conn, transport, protocol

    conn, transport, protocol = _run(main())
    assert protocol is conn
    assert not isinstance(transport, TlsTransport)
