"""A BufferedProtocol front for the protocols of TLS connections: no 256 KiB read buffers.

uvloop's SSL transport hands decrypted data to a plain :class:`asyncio.Protocol` by
calling ``SSLObject.read(262144)`` for every read (``_do_read__copied`` in uvloop's
``sslproto.pyx``): CPython allocates a fresh 256 KiB bytes object, ``SSL_read`` fills a
few hundred bytes of it and the object is shrunk with ``realloc``. Once glibc has freed
one mmapped 256 KiB block its dynamic mmap threshold rises above that size, so the later
blocks come from the heap, between the small objects allocated around them. (Measured
with the benchmark's mTLS pair, avoiding them is neutral on resident memory within the
run-to-run noise, with and without connection churn, and saves an allocation and a
``realloc`` per read: docs/internals.md, "Memory".)

When the application protocol is an :class:`asyncio.BufferedProtocol` uvloop reads
straight into the buffer the protocol hands out (``_do_read__buffered``: it calls
``get_buffer(pending + 256)``, reads at most ``len(buffer)`` bytes, and schedules another
read if the buffer came back full). :class:`TlsBuffered` is that protocol, in front of the
existing one: every TLS connection of the process reads into one shared
:data:`READ_SIZE` buffer (a read is synchronous: ``get_buffer``, ``SSL_read`` and
``buffer_updated`` run back to back, with no other read in between), and
``buffer_updated(n)`` hands the inner protocol ``bytes`` of exactly ``n`` bytes, which it
may keep (llhttp, early data, tunnels). Everything else is forwarded as is.

Used only where a connection is TLS (:mod:`plait.proxy.inbound` for mTLS accepts,
``UpstreamPool._connect_tls``); plaintext connections keep their plain protocol, and the
callers keep the inner protocol as their connection object. Code that reaches a
protocol through ``transport.get_protocol()`` finds this wrapper: what it calls there is
forwarded explicitly (``tunnel_eof``, for upgrade tunnels); :attr:`TlsBuffered.inner` is
the wrapped protocol until the connection is lost. Then the wrapper lets go of it: uvloop
keeps the wrapper's bound ``get_buffer``/``buffer_updated`` after the loss, and the
wrapper holding the protocol, which holds the transport, would make a reference cycle
that only the (rare, see ``main.settle_gc``) full collection frees: about 40 KB per
closed TLS connection, 2 MB each time the benchmark's 50 pooled connections are
replaced. Late calls (``tunnel_eof`` from the other side of a tunnel) are dropped.
"""

from __future__ import annotations

import asyncio
from typing import Any

READ_SIZE = 64 * 1024  # bytes decrypted per buffer_updated at most (uvloop reads again)

_BUFFER = bytearray(READ_SIZE)
_VIEW = memoryview(_BUFFER)


class _Lost:
    """The inner protocol once the connection is lost: late calls are dropped."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def tunnel_eof(self, upstream: bool) -> None:
        pass


_LOST = _Lost()


class TlsBuffered(asyncio.BufferedProtocol):
    """Reads a TLS connection into the shared buffer; forwards everything to ``inner``."""

    __slots__ = ("inner",)

    def __init__(self, inner: Any) -> None:
        self.inner = inner  # an asyncio.Protocol (Http1Server, UpstreamConnection)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _VIEW

    def buffer_updated(self, nbytes: int) -> None:
        self.inner.data_received(_VIEW[:nbytes].tobytes())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        # uvloop's SSLProtocol keeps our bound get_buffer/buffer_updated after the loss
        # (it clears only its app protocol): a cycle through the inner protocol and its
        # transport that only a full collection would free (see main.settle_gc). Drop it.
        inner = self.inner
        self.inner = _LOST
        inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # -- reached through transport.get_protocol() -----------------------------------------

    def tunnel_eof(self, upstream: bool) -> None:
        """The other side of an upgrade tunnel half-closed (``UpstreamConnection``)."""
        self.inner.tunnel_eof(upstream)
