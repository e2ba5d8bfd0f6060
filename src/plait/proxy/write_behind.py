"""Writes held to the end of the event loop's iteration, then sent together.

Theory of operation. A proxy on an event loop reads what is ready, then for each read
runs its request path and writes. When every write goes to the kernel at once, the
writes of one loop iteration are spread over it, a request path apart; the program
reading them (the client, on the other CPU) has time to go back to sleep between two,
and each write then pays to wake it (the kernel's ``sock_def_readable`` and the
cross-CPU wake-up, in the writer's system time). HAProxy reads everything ready first
and sends afterwards. On one hop, waking readers was 13.6% of plait's CPU samples
against 8.8% of HAProxy's; holding the writes to the iteration's end brought plait's
system time per request below HAProxy's (benchmarks/RESULTS.md, "Seventh round").

:class:`WriteBehind` (one per event loop) keeps the connections that have writes held
and sends them from one ``call_soon`` callback, which the loop runs after the I/O
callbacks of the iteration. :class:`HeldWrites` stands in for the transport of a
client connection and of an upstream connection (requests wait the same way):
``write`` and ``writelines`` keep the pieces (several writes of one iteration leave in
one ``writelines``, one ``writev``); everything else goes to the transport, after what
is held where order matters -- ``close`` and ``write_eof`` send the held pieces first,
``abort`` drops them as a transport drops its buffer. Once the connection is closing,
a held piece is dropped, as the transport would drop it.

Only small writes wait: once a connection holds :data:`HOLD_LIMIT` bytes, they go to
the transport at once. So flow control is as before: a transport whose buffer fills
tells the protocol to pause at the write that filled it, and the upstream stops being
read (libuv reads a stream up to 32 times per readiness event: held without a limit, a
fast upstream's body piled up in memory until the iteration's end).

Only a busy loop holds. On a quiet loop there is nothing to gather (a reader is woken
once per write either way), and the iteration-end callback itself costs latency where
two proxies share a CPU: at 1000 req/s through two plait hops on one CPU the p50 was
about 0.1 ms longer held than not, and (measured interpreted) as long with the writes
passed through at once but the callback still scheduled (benchmarks/RESULTS.md,
"Eighth round"). So :meth:`WriteBehind.busy` counts the writes to connections with
nothing held (on a busy loop, about one per connection and iteration) and reads the
loop's clock every :data:`RATE_EVERY` of them: from :data:`HOLD_FROM_RATE` such writes
per second on, writes are held; below it, such a write goes to the transport at once
and schedules nothing. A proxy makes about two per request: at 1000 req/s about 2,000
a second, at the benchmark's saturation 13,000 or more. A connection that holds pieces
keeps holding until they are sent, so no write overtakes another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("plait.proxy")

Buffer = bytes | bytearray | memoryview

HOLD_LIMIT = 64 * 1024  # bytes held per connection before its writes go out at once
HOLD_FROM_RATE = 5_000.0  # writes per second from which a loop holds them
RATE_EVERY = 64  # writes between two readings of the loop's clock


class WriteBehind:
    """One event loop's held writes: sent by one callback at the iteration's end."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, hold_from_rate: float = HOLD_FROM_RATE
    ) -> None:
        self.loop = loop
        self._held: list[HeldWrites] = []
        self.hold_from_rate = hold_from_rate
        # Whether writes wait for the iteration's end: while the loop writes at
        # hold_from_rate or more (the module docstring, "Only a busy loop holds"); 0
        # holds always.
        self.holding = hold_from_rate <= 0.0
        self._writes = 0  # since _since
        self._since: float = loop.time()

    def busy(self) -> bool:
        """Count a write; whether the loop writes fast enough for writes to wait."""
        self._writes += 1
        if self._writes >= RATE_EVERY:
            now: float = self.loop.time()
            elapsed = now - self._since
            self.holding = self._writes >= self.hold_from_rate * elapsed
            self._writes = 0
            self._since = now
        return self.holding

    def hold(self, conn: HeldWrites) -> None:
        """``conn`` has its first held piece: send it with the others."""
        if not self._held:
            self.loop.call_soon(self.send)
        self._held.append(conn)

    def send(self) -> None:
        """Send what every connection holds, in the order they first held a piece."""
        held = self._held
        self._held = []
        for conn in held:
            try:
                conn.flush()
            except Exception:  # one broken connection must not keep the others' data
                log.exception("sending held writes failed")
                conn.abort()


class HeldWrites:
    """A client connection's transport whose writes wait for :class:`WriteBehind`."""

    def __init__(self, transport: Any, behind: WriteBehind) -> None:
        self.transport = transport
        # the transport's own writes, bound once: a pass-through write is then a call,
        # not a method lookup on the transport as well
        self._write: Callable[[Buffer], object] = transport.write
        self._writelines: Callable[[Iterable[Buffer]], object] = transport.writelines
        self._behind = behind
        self._pieces: list[Buffer] = []
        self._size = 0  # bytes in _pieces
        self._closed = False  # close() or abort() was called: write as the transport does

    # -- held ----------------------------------------------------------------------------

    def write(self, data: Buffer) -> None:
        if self._closed:
            self._write(data)  # what the transport does after close, unchanged
            return
        pieces = self._pieces
        if not pieces:
            behind = self._behind
            if not behind.busy():  # nothing held here to overtake: at once
                self._write(data)
                return
            behind.hold(self)
        pieces.append(data)
        self._size += len(data)
        if self._size >= HOLD_LIMIT:
            self.flush()

    def writelines(self, list_of_data: Iterable[Buffer]) -> None:
        if self._closed:
            self._writelines(list_of_data)
            return
        pieces = self._pieces
        if not pieces:
            behind = self._behind
            if not behind.busy():
                self._writelines(list_of_data)
                return
            behind.hold(self)
        for data in list_of_data:
            pieces.append(data)
            self._size += len(data)
        if self._size >= HOLD_LIMIT:
            self.flush()

    def flush(self) -> None:
        """Send the held pieces now: one ``write``, or one ``writelines`` for several."""
        pieces = self._pieces
        if not pieces:
            return
        self._pieces = []
        self._size = 0
        transport = self.transport
        if transport.is_closing():  # the peer went away: the transport would drop them
            return
        if len(pieces) == 1:
            self._write(pieces[0])
        else:
            self._writelines(pieces)

    @property
    def held(self) -> int:
        """Bytes held, not yet handed to the transport."""
        return self._size

    # -- after what is held ----------------------------------------------------------------

    def close(self) -> None:
        self.flush()
        self._closed = True
        self.transport.close()

    def abort(self) -> None:
        """Close now: what is held is dropped, as the transport drops its buffer (also
        when sending it failed)."""
        self._pieces = []
        self._size = 0
        self._closed = True
        self.transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self.held + int(self.transport.get_write_buffer_size())

    # -- the transport's own ---------------------------------------------------------------

    def can_write_eof(self) -> bool:
        return bool(self.transport.can_write_eof())

    def is_closing(self) -> bool:
        return bool(self.transport.is_closing())

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def is_reading(self) -> bool:
        return bool(self.transport.is_reading())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def get_protocol(self) -> Any:
        return self.transport.get_protocol()

    def set_protocol(self, protocol: Any) -> None:
        self.transport.set_protocol(protocol)
