"""The proxy's xDS transport without grpcio: one gRPC bidi stream over h2c, on asyncio.

A thin shell around :class:`~plait.proxy.ads_h2_frames.GrpcCall` (the pure core: HTTP/2
framing, HPACK, flow control, gRPC messages): this module owns the TCP connection, a
reader task that feeds the core, and the keepalive timer. It replaces
``grpc.aio.insecure_channel`` + ``StreamAggregatedResources`` in the proxy, which saves
the proxy grpcio's memory (about 14 MB, docs/internals.md "Memory"); the control plane
stays a grpcio server. Plaintext only (HTTP/2 with prior knowledge), like the channel it
replaces.

Use::

    stream = await open_stream("127.0.0.1:18000", ADS_METHOD, connect_timeout=5.0)
    await stream.write(request.SerializeToString())
    data = await stream.read()   # one message's bytes; None when the server ends with OK
    stream.cancel(); await stream.close()

Every failure is a :class:`StreamError` with a grpc status name as ``code``: a refused or
timed-out connection and a lost one are ``UNAVAILABLE``, a non-zero ``grpc-status`` gives
its own name and (percent-decoded) ``grpc-message``.

Keepalive: every ``keepalive_interval`` seconds (30 by default; None turns it off) the
client sends an HTTP/2 PING; without its ACK within ``keepalive_timeout`` (10 s) the
stream fails with ``UNAVAILABLE``, so a control plane that vanished without closing the
connection is noticed. The plait control plane accepts client pings every 5 s or more
(``grpc.http2.min_ping_interval_without_data_ms`` in plait.control.server); a grpc
server with default settings counts pings closer than 5 minutes apart on a stream without
data as abuse and sends GOAWAY ``too_many_pings`` after three strikes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from plait import __version__
from plait.proxy.ads_h2_frames import MAX_MESSAGE_SIZE, Ended, Failed, GrpcCall, Message

ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
READ_SIZE = 256 * 1024


class StreamError(Exception):
    """The stream failed; ``code`` is a grpc status name, ``details`` says why."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


def split_target(target: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``dns:///host:port`` -> (host, port)."""
    for prefix in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        target = target.removeprefix(prefix)
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise StreamError("UNAVAILABLE", f"control plane address {target!r} is not host:port")
    return host.strip("[]"), int(port)


async def open_stream(
    target: str,
    method_path: str = ADS_METHOD,
    *,
    connect_timeout: float = 10.0,
    keepalive_interval: float | None = 30.0,
    keepalive_timeout: float = 10.0,
    max_message_size: int = MAX_MESSAGE_SIZE,
) -> AdsStream:
    """Connect to ``target`` and start the call; StreamError ``UNAVAILABLE`` if it can't."""
    host, port = split_target(target)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), connect_timeout
        )
    except TimeoutError:
        raise StreamError("UNAVAILABLE", f"connecting to {target} timed out") from None
    except OSError as exc:
        raise StreamError("UNAVAILABLE", f"failed to connect to {target}: {exc}") from None
    call = GrpcCall(
        authority=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        path=method_path,
        user_agent=f"plait-proxy/{__version__}",
        max_message_size=max_message_size,
    )
    return AdsStream(call, reader, writer, keepalive_interval, keepalive_timeout)


class AdsStream:
    """One open call: :meth:`write` and :meth:`read` messages, then :meth:`close`."""

    def __init__(
        self,
        call: GrpcCall,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        keepalive_interval: float | None,
        keepalive_timeout: float,
    ) -> None:
        self._call = call
        self._reader = reader
        self._writer = writer
        self._changed = asyncio.Event()  # set whenever the core may have news
        self._flush()
        self._tasks = [asyncio.create_task(self._read_loop(), name="ads-h2-reader")]
        if keepalive_interval is not None:
            keepalive = self._keepalive(keepalive_interval, keepalive_timeout)
            self._tasks.append(asyncio.create_task(keepalive, name="ads-h2-keepalive"))

    async def write(self, message: bytes) -> None:
        """Send one message; returns once the peer's flow-control window has taken it."""
        self._raise_if_failed()
        self._call.send_message(message)
        self._flush()
        while self._call.pending_send and not self._call.finished:
            await self._wait()
        self._raise_if_failed()
        try:
            await self._writer.drain()
        except OSError as exc:
            self._call.fail("UNAVAILABLE", f"writing to the control plane failed: {exc}")
            self._raise_if_failed()

    async def read(self) -> bytes | None:
        """The next message, or None when the server ended the stream with OK."""
        while True:
            event = self._call.next_event()
            self._flush()  # window updates the read gave back
            if isinstance(event, Message):
                return event.data
            if isinstance(event, Ended):
                return None
            if isinstance(event, Failed):
                raise StreamError(event.code, event.details)
            await self._wait()

    def cancel(self) -> None:
        """End the call (RST_STREAM CANCEL); pending and later reads raise CANCELLED."""
        self._call.cancel()
        self._flush()
        self._changed.set()

    async def close(self) -> None:
        """Cancel if still open, stop the tasks and close the connection."""
        self.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    # -- the shell -------------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        final = self._call.final
        if isinstance(final, Failed):
            raise StreamError(final.code, final.details)
        if final is not None:
            raise StreamError("INTERNAL", "the stream has already ended")

    async def _wait(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    def _flush(self) -> None:
        out = self._call.data_to_send()
        if out and not self._writer.is_closing():
            self._writer.write(out)

    async def _read_loop(self) -> None:
        try:
            while not self._call.finished:
                data = await self._reader.read(READ_SIZE)
                if not data:
                    self._call.connection_lost()
                    break
                self._call.receive_data(data)
                self._flush()
                self._changed.set()
        except OSError as exc:
            self._call.fail("UNAVAILABLE", f"the connection to the control plane failed: {exc}")
        finally:
            self._changed.set()
            if self._call.finished:
                self._flush()  # a final GOAWAY or RST_STREAM
                self._writer.close()

    async def _keepalive(self, interval: float, timeout: float) -> None:
        while not self._call.finished:
            await asyncio.sleep(interval)
            opaque = os.urandom(8)
            self._call.send_ping(opaque)
            self._flush()
            deadline = asyncio.get_running_loop().time() + timeout
            while self._call.ping_outstanding == opaque and not self._call.finished:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    detail = f"the control plane did not answer a keepalive ping in {timeout:g}s"
                    self._call.fail("UNAVAILABLE", detail)
                    self._writer.close()
                    self._changed.set()
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait(), left)
