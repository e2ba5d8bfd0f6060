"""Inbound listeners that may speak mTLS: accept, sniff, handshake, check the peer.

An inbound listener's TLS mode comes with the config (``plaintext`` / ``permissive`` /
``strict``, docs/mtls.md) and may change while connections are open, so the proxy owns
the listening socket and decides per accepted connection, from the slot's current mode:

- ``plaintext``: hand the socket to an :class:`~plait.proxy.http1.Http1Server` at once;
- ``strict``: TLS handshake with the service's *current* server context (so a renewal
  or bundle change applies to the next accept and never to open connections);
- ``permissive``: peek at the first byte without consuming it (``MSG_PEEK``): 0x16, a
  TLS handshake record, means TLS as above, anything else plaintext. The peek costs one
  readiness wait and one ``recv`` per connection, nothing per request.

After a handshake, :class:`MtlsHttp1Server` checks the peer
(:func:`~plait.proxy.peer_identity.check_peer`) in ``connection_made``, before the HTTP
engine sees the connection: a failing peer is aborted with nothing read or written, and
counted (``plait_tls_handshakes_total``). With TLS 1.3 the client may believe the
handshake done and send a request; it gets no byte back. TLS connections are
:class:`~plait.proxy.tls_transport.TlsTransport`s (OpenSSL reads and writes the socket
itself, without asyncio's memory BIOs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any

from plait.proxy import tls_transport
from plait.proxy.http1 import Http1Server
from plait.proxy.peer_identity import PeerRejected, check_peer

if TYPE_CHECKING:
    from plait.proxy.dataplane import DataPlane, ListenerSlot

log = logging.getLogger("plait.proxy.inbound")

TLS_HANDSHAKE = 0x16
HANDSHAKE_TIMEOUT = 10.0
ACCEPT_BATCH = 64


class MtlsHttp1Server(Http1Server):
    """An Http1Server on a TLS connection: the peer is checked before any HTTP."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        slot = self.listener
        sslobj = transport.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        verdict = check_peer(der, slot.peer_trust_domain)
        if isinstance(verdict, PeerRejected):
            self.closing = True  # nothing is parsed, nothing is answered
            transport.abort()  # type: ignore[attr-defined]
            self.dp.tls_event(slot, "rejected", verdict.reason)
            return
        self.peer = verdict
        self.dp.tls_event(slot, "ok")
        super().connection_made(transport)


class InboundAcceptor:
    """Accepts on one inbound listening socket; quacks like ``asyncio.Server`` (``close``,
    ``is_serving``, ``start_serving``)."""

    def __init__(self, dp: DataPlane, slot: ListenerSlot, sock: socket.socket) -> None:
        self.dp = dp
        self.slot = slot
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.sockets = [sock]
        self._sniffing: dict[int, tuple[socket.socket, asyncio.TimerHandle]] = {}
        self._closed = False
        self._serving = False

    @classmethod
    async def bind(
        cls, dp: DataPlane, slot: ListenerSlot, address: str, port: int, *, listen: bool = True
    ) -> InboundAcceptor:
        """Bind ``address:port``; listen and accept now, or (``listen=False``) once
        :meth:`start_serving` is called."""
        info = await asyncio.get_running_loop().getaddrinfo(
            address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, sockaddr = info[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if port and dp.reuse_port:  # a worker of `plait proxy --workers N`
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(sockaddr)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        acceptor = cls(dp, slot, sock)
        if listen:
            try:
                await acceptor.start_serving()
            except OSError:
                sock.close()
                raise
        return acceptor

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        """Listen and accept (as ``asyncio.Server.start_serving``)."""
        if self._serving or self._closed:
            return
        self.sock.listen(1024)
        self.loop.add_reader(self.sock.fileno(), self._accept)
        self._serving = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._serving = False
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for fd, (conn, timer) in list(self._sniffing.items()):
            timer.cancel()
            with contextlib.suppress(Exception):
                self.loop.remove_reader(fd)
            conn.close()
        self._sniffing.clear()

    # -- accepting ---------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, try again on the next wakeup
                log.warning("accept on %s failed: %s", self.slot.name, exc)
                return
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mode = self.slot.tls_mode
            if mode == "strict":
                self._spawn(self._tls(conn))
            elif mode == "permissive":
                self._sniff(conn)
            else:
                self._spawn(self._plain(conn))

    def _spawn(self, coro: Any) -> None:
        self.loop.create_task(coro)

    def _sniff(self, conn: socket.socket) -> None:
        fd = conn.fileno()
        timer = self.loop.call_later(self.dp.request_head_timeout, self._sniff_timeout, fd)
        self._sniffing[fd] = (conn, timer)
        self.loop.add_reader(fd, self._sniffed, fd)

    def _sniff_timeout(self, fd: int) -> None:
        entry = self._sniffing.pop(fd, None)
        if entry is not None:
            self.loop.remove_reader(fd)
            entry[0].close()

    def _sniffed(self, fd: int) -> None:
        conn, timer = self._sniffing[fd]
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            first = b""
        del self._sniffing[fd]
        timer.cancel()
        self.loop.remove_reader(fd)
        if not first:
            conn.close()
        elif first[0] == TLS_HANDSHAKE:
            self._spawn(self._tls(conn))
        else:
            self._spawn(self._plain(conn))

    async def _plain(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: Http1Server(self.dp, self.slot), conn)
        except OSError:
            conn.close()

    async def _tls(self, conn: socket.socket) -> None:
        slot = self.slot
        ctx = self.dp.tls.server(slot.service)
        if ctx is None:
            conn.close()
            self.dp.tls_event(slot, "no_identity", f"no certificate for {slot.service} yet")
            return
        try:
            await tls_transport.accept(ctx, conn, MtlsHttp1Server(self.dp, slot), HANDSHAKE_TIMEOUT)
        except (ssl.SSLError, OSError, TimeoutError, EOFError) as exc:
            with contextlib.suppress(OSError):
                conn.close()
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            self.dp.tls_event(slot, "failed", f"handshake: {reason}")
