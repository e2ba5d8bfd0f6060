"""TLS connections as asyncio transports over non-blocking ``ssl.SSLSocket``s.

Theory of operation. asyncio's (and uvloop's) TLS runs OpenSSL over memory BIOs: every
read copies the ciphertext into a BIO, decrypts through Python's ``SSLObject`` wrapper
and then tries again until OpenSSL raises ``SSLWantReadError`` -- an exception per
read; every write encrypts into another BIO, copies the records out into a new bytes
object and writes that. Measured here, that machinery cost each mTLS proxy about 14 µs
of user time per request, where HAProxy's TLS costs it about 1.5 µs.

:class:`TlsTransport` lets OpenSSL read and write the socket itself: one ``read``
(``SSL_read``) per readable event, which reads exactly one record from the kernel and
decrypts it into a shared buffer, and one ``send`` (``SSL_write``) per write, which
encrypts and sends. When the kernel takes less than a write, the rest (plaintext) waits
in a buffer and goes when the socket is writable; ``SSL_write`` is retried with the same
bytes first, as OpenSSL requires (Python sets ``SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER``).
Past :data:`HIGH_WATER` buffered bytes the protocol is told to pause writing.

The handshake (:func:`handshake`) is driven the same way, with readiness callbacks and a
timeout, before the transport exists: its errors (``ssl.SSLError``,
``ssl.SSLCertVerificationError``, ``OSError``, ``TimeoutError``) reach the caller as
they did from ``loop.create_connection``.

Endings, as in asyncio's transports: :meth:`~TlsTransport.close` stops reading, sends
what is buffered, then a ``close_notify`` and closes the socket; :meth:`~TlsTransport.
abort` closes at once. ``connection_lost`` is called once, on the next loop iteration;
after it the transport drops its protocol (no reference cycle between the two). The
peer's end -- a ``close_notify`` or a TCP FIN -- is ``eof_received``: as on a plain TCP
transport, a protocol that returns True may still write (TLS 1.3 closes each direction
on its own), else the transport closes. ``write_eof`` is not offered
(``can_write_eof()`` is False), as on asyncio's TLS transports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import Any

log = logging.getLogger("plait.proxy.tls")

HIGH_WATER = 64 * 1024  # buffered plaintext that pauses the protocol's writing
LOW_WATER = 16 * 1024  # ... and that resumes it
READ_SIZE = 64 * 1024  # the largest read handed to data_received (a record is <= 16 KiB)

_BUFFER = bytearray(READ_SIZE)  # every read decrypts here; data_received gets a copy
_VIEW = memoryview(_BUFFER)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, write: bool) -> None:
    """Wait until ``fd`` is readable (or writable)."""
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, ready)
    try:
        await fut
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def handshake(sock: ssl.SSLSocket, timeout: float) -> None:
    """Complete the TLS handshake of non-blocking ``sock``, within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()

    async def run() -> None:
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                want_write = False
            except ssl.SSLWantWriteError:
                want_write = True
            # Awaited outside the except clauses: compiled (mypyc), an await inside one
            # kept the exception alive, and with its traceback the socket: one leaked
            # SSLSocket per handshake, about 2 KiB (test_tls_transport checks).
            await _ready(loop, sock.fileno(), write=want_write)

    await asyncio.wait_for(run(), timeout)


def wrap(ctx: ssl.SSLContext, sock: socket.socket, server_side: bool) -> ssl.SSLSocket:
    """``sock`` (connected, non-blocking) as an SSLSocket whose handshake is not done."""
    return ctx.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False)


async def accept(
    ctx: ssl.SSLContext, sock: socket.socket, protocol: asyncio.Protocol, timeout: float
) -> TlsTransport:
    """The server side: handshake on accepted ``sock``, then ``protocol`` on it."""
    return await _established(wrap(ctx, sock, server_side=True), protocol, timeout)


async def connect(
    ctx: ssl.SSLContext, address: tuple[str, int], protocol: asyncio.Protocol, timeout: float
) -> TlsTransport:
    """The client side: connect, handshake, then ``protocol`` on the connection."""
    loop = asyncio.get_running_loop()
    raw = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    try:
        raw.setblocking(False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.wait_for(loop.sock_connect(raw, address), timeout)
        tls = wrap(ctx, raw, server_side=False)
    except BaseException:
        raw.close()
        raise
    return await _established(tls, protocol, timeout)


async def _established(
    tls: ssl.SSLSocket, protocol: asyncio.Protocol, timeout: float
) -> TlsTransport:
    """The handshake, then ``protocol`` on the connection; the socket is closed when
    the handshake fails or times out."""
    try:
        await handshake(tls, timeout)
    except BaseException:
        tls.close()
        raise
    return TlsTransport(tls, protocol)


class TlsTransport(asyncio.Transport):
    """One TLS connection whose handshake is done, for ``protocol``."""

    def __init__(self, sock: ssl.SSLSocket, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        # The socket's OpenSSL connection (_ssl._SSLSocket), read and written directly:
        # SSLSocket.read and .send are Python frames around it (a closed-check each,
        # and read's ragged-EOF case, which _read_ready handles itself).
        self._ssl: Any = sock._sslobj  # type: ignore[attr-defined]
        self._fd = sock.fileno()
        self._protocol: Any = protocol
        self._pending = bytearray()  # plaintext the socket did not take yet
        self._closing = False  # close() or abort() was called, or the connection failed
        self._lost = False  # connection_lost is scheduled
        self._reading = True
        self._at_eof = False  # the peer's close_notify or FIN was read
        self._write_paused = False  # the protocol was told to pause writing
        self._read_wants_write = False  # SSL_read needs the socket writable first
        self._extra: dict[str, Any] = {
            "socket": sock,
            "ssl_object": sock,
            "sslcontext": sock.context,
        }
        with contextlib.suppress(OSError):
            self._extra["peername"] = sock.getpeername()
            self._extra["sockname"] = sock.getsockname()
        self._loop.add_reader(self._fd, self._read_ready)
        protocol.connection_made(self)

    # -- reading -------------------------------------------------------------------------

    def _read_ready(self) -> None:
        try:
            # One record (at most 16 KiB): the next one stays in the kernel, and the
            # socket is reported readable again for it.
            # With a buffer, read() returns the count.
            n: int = self._ssl.read(READ_SIZE, _VIEW)
        except ssl.SSLWantReadError:  # part of a record, or a post-handshake message
            return
        except ssl.SSLWantWriteError:
            self._read_wants_write = True
            self._loop.add_writer(self._fd, self._write_ready)
            return
        except ssl.SSLEOFError:  # the TCP connection ended without close_notify
            n = 0  # as SSLSocket.read's suppress_ragged_eofs: the end of the stream
        except (OSError, ssl.SSLError) as exc:
            self._fail(exc)
            return
        try:
            if n:
                self._protocol.data_received(_VIEW[:n].tobytes())
            else:  # close_notify, or the TCP connection's end without one
                self._eof()
        except Exception as bug:  # as asyncio's transports: the protocol failed, close
            log.exception("error in a TLS protocol's callback")
            self._fail(bug)

    def _eof(self) -> None:
        self._loop.remove_reader(self._fd)
        self._reading = False
        self._at_eof = True  # nothing more to read: resume_reading() will not read again
        if not self._protocol.eof_received():
            self.close()

    def pause_reading(self) -> None:
        if self._reading and not self._closing:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing and not self._at_eof:
            self._reading = True
            self._loop.add_reader(self._fd, self._read_ready)

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # -- writing -------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        if not self._pending and not self._read_wants_write:
            try:
                sent = self._ssl.write(data)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent = 0
            except (OSError, ssl.SSLError) as exc:
                self._fail(exc)
                return
            if sent == len(data):
                return
            data = data[sent:]
            self._loop.add_writer(self._fd, self._write_ready)
        self._pending += data
        if not self._write_paused and len(self._pending) > HIGH_WATER:
            self._write_paused = True
            self._protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))  # one record, one send

    def _write_ready(self) -> None:
        if self._read_wants_write:  # SSL_read waited for this: read again first
            self._read_wants_write = False
            if self._reading and not self._closing:
                self._read_ready()
        pending = self._pending
        if pending and not self._lost:
            try:
                sent = self._ssl.write(pending)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return
            except (OSError, ssl.SSLError) as exc:
                self._fail(exc)
                return
            del pending[:sent]
            if self._write_paused and len(pending) <= LOW_WATER:
                self._write_paused = False
                self._protocol.resume_writing()
        if pending or self._read_wants_write or self._lost:
            return
        self._loop.remove_writer(self._fd)
        if self._closing:
            self._shut_down(None)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS transports do not half-close")

    def get_write_buffer_size(self) -> int:
        return len(self._pending)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return LOW_WATER, HIGH_WATER

    # -- endings -------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is buffered, then ``close_notify``, then close."""
        if self._closing:
            return
        self._closing = True
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)
        if not self._pending:
            self._shut_down(None)

    def abort(self) -> None:
        """Close now; what is buffered is dropped."""
        self._closing = True
        self._end(None)

    def _fail(self, exc: BaseException) -> None:
        self._closing = True
        self._end(exc)

    def _shut_down(self, exc: BaseException | None) -> None:
        with contextlib.suppress(OSError, ValueError, ssl.SSLError):
            self._sock.unwrap()  # sends close_notify; does not wait for the peer's
        self._end(exc)

    def _end(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._reading = False
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._pending.clear()
        self._sock.close()
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        protocol = self._protocol
        self._protocol = None  # the protocol holds this transport: no cycle left
        if protocol is not None:
            protocol.connection_lost(exc)

    # -- the rest of asyncio's Transport -------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        protocol: asyncio.BaseProtocol = self._protocol
        return protocol

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        raise NotImplementedError("TlsTransport's limits are fixed (HIGH_WATER, LOW_WATER)")
