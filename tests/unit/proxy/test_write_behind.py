"""plait.proxy.write_behind: writes to clients held to the loop iteration's end.

Recording transports on a real event loop: held pieces leave together at the iteration's
end, in order, one ``writelines`` per connection, and only on a loop that writes fast
enough (below that, at once); ``close`` and ``write_eof`` send them
first, ``abort`` drops them, a closing transport drops them; a transport that fails
does not keep the others' data; and the proxy's client connections hold their writes
only on a bound DataPlane. A property test checks the bytes and their order for any
sequence of writes and iterations.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_rig import CLUSTER, WireRig
from wire_rig import config as wire_config

from plait.proxy.dataplane import DataPlane
from plait.proxy.http1 import Http1Server
from plait.proxy.write_behind import (
    HOLD_FROM_RATE,
    HOLD_LIMIT,
    RATE_EVERY,
    HeldWrites,
    WriteBehind,
)


class Recording:
    """A transport that records each call."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False
        self.fail = fail

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("the handler is closed")
        self.calls.append(("write", bytes(data)))

    def writelines(self, pieces: Any) -> None:
        self.calls.append(("writelines", [bytes(p) for p in pieces]))

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close", None))

    def abort(self) -> None:
        self.closing = True
        self.calls.append(("abort", None))

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 7

    @property
    def sent(self) -> bytes:
        out = b""
        for name, arg in self.calls:
            if name == "write":
                out += arg
            elif name == "writelines":
                out += b"".join(arg)
        return out


@pytest.fixture
def loop() -> Any:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _iteration(loop: asyncio.AbstractEventLoop) -> None:
    """Let the loop run what is ready (the held writes' callback among it)."""
    loop.run_until_complete(asyncio.sleep(0))


def test_writes_wait_for_the_iteration_and_leave_together(loop: Any) -> None:
    behind = WriteBehind(loop, hold_from_rate=0.0)
    a, b = Recording(), Recording()
    ha, hb = HeldWrites(a, behind), HeldWrites(b, behind)
    ha.write(b"HTTP/1.1 200 OK\r\n\r\n")
    hb.write(b"one")
    ha.writelines([b"body", memoryview(b"-more")])
    assert a.calls == [] and b.calls == []
    assert ha.get_write_buffer_size() == 19 + 4 + 5 + 7  # held, plus the transport's
    _iteration(loop)
    assert a.calls == [("writelines", [b"HTTP/1.1 200 OK\r\n\r\n", b"body", b"-more"])]
    assert b.calls == [("write", b"one")]  # a single piece: no iovec
    assert ha.held == 0
    hb.write(b"two")  # held again in a later iteration
    _iteration(loop)
    assert b.sent == b"onetwo"


class Clock:
    """A stand-in loop: a clock the test sets, and the callbacks scheduled with it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.ready: list[Any] = []

    def time(self) -> float:
        return self.now

    def call_soon(self, callback: Any) -> None:
        self.ready.append(callback)

    def iteration(self) -> None:
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()


def test_a_quiet_loop_writes_at_once_and_a_busy_one_holds() -> None:
    """Below HOLD_FROM_RATE writes per second a write goes out at once and schedules
    nothing; from it on, writes wait for the iteration's end; the rate is read from the
    loop's clock every RATE_EVERY writes."""
    clock = Clock()
    behind = WriteBehind(clock)  # type: ignore[arg-type]
    t = Recording()
    held = HeldWrites(t, behind)
    assert not behind.holding  # a new loop is quiet
    for i in range(RATE_EVERY - 1):
        held.write(b"%d," % i)
        clock.now += 1.0 / HOLD_FROM_RATE / 2  # twice the rate
    assert len(t.calls) == RATE_EVERY - 1 and clock.ready == []  # at once, no callback
    held.writelines([b"x", b"y"])  # the RATE_EVERY-th write: the rate is read
    assert behind.holding and t.calls[-1] == ("write", b"62,")
    held.write(b"z")
    assert held.held == 3 and len(clock.ready) == 1
    clock.iteration()
    assert t.calls[-1] == ("writelines", [b"x", b"y", b"z"])
    for _ in range(RATE_EVERY):  # then slower than the rate, an iteration each
        clock.now += 2.0 / HOLD_FROM_RATE
        held.write(b".")
        clock.iteration()
    assert not behind.holding
    held.write(b"!")  # at once again
    assert t.sent.endswith(b"xyz" + b"." * RATE_EVERY + b"!") and clock.ready == []


def test_a_connection_that_holds_keeps_holding_when_the_loop_goes_quiet(loop: Any) -> None:
    """No write overtakes a held one: the rate may drop within an iteration."""
    behind = WriteBehind(loop, hold_from_rate=0.0)
    t = Recording()
    held = HeldWrites(t, behind)
    held.write(b"first")
    behind.holding = False  # as when the rate is read between two writes
    held.write(b"second")
    held.writelines([b"third"])
    assert t.calls == []
    _iteration(loop)
    assert t.calls == [("writelines", [b"first", b"second", b"third"])]
    held.write(b"fourth")  # nothing held any more: at once
    assert t.calls[-1] == ("write", b"fourth")


def test_close_and_write_eof_send_what_is_held_first(loop: Any) -> None:
    behind = WriteBehind(loop, hold_from_rate=0.0)
    t, u = Recording(), Recording()
    held, other = HeldWrites(t, behind), HeldWrites(u, behind)
    held.write(b"last response")
    held.close()
    assert t.calls == [("write", b"last response"), ("close", None)]
    held.write(b"after close")  # as the transport does after close: straight to it
    assert t.calls[-1] == ("write", b"after close")
    other.write(b"x")
    other.write_eof()
    assert u.calls == [("write", b"x"), ("write_eof", None)]
    _iteration(loop)  # nothing held any more: nothing sent twice
    assert u.calls == [("write", b"x"), ("write_eof", None)]
    assert t.calls[-1] == ("write", b"after close")


def test_abort_drops_what_is_held(loop: Any) -> None:
    behind = WriteBehind(loop, hold_from_rate=0.0)
    t = Recording()
    held = HeldWrites(t, behind)
    held.write(b"never sent")
    held.abort()
    _iteration(loop)
    assert t.calls == [("abort", None)]


def test_a_closing_transport_drops_what_is_held(loop: Any) -> None:
    """The peer went away within the iteration: the transport would drop the bytes."""
    behind = WriteBehind(loop, hold_from_rate=0.0)
    t = Recording()
    held = HeldWrites(t, behind)
    held.write(b"too late")
    t.closing = True
    _iteration(loop)
    assert t.calls == []


def test_a_failing_transport_does_not_keep_the_others_data(
    loop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    behind = WriteBehind(loop, hold_from_rate=0.0)
    broken, fine = Recording(fail=True), Recording()
    hb, hf = HeldWrites(broken, behind), HeldWrites(fine, behind)
    hb.write(b"x")
    hf.write(b"y")
    with caplog.at_level(logging.ERROR, logger="plait.proxy"):
        _iteration(loop)
    assert fine.calls == [("write", b"y")]
    assert broken.calls == [("abort", None)]
    assert "sending held writes failed" in caplog.text


def test_the_transports_own_calls_pass_through(loop: Any) -> None:
    class Full(Recording):
        def can_write_eof(self) -> bool:
            return True

        def pause_reading(self) -> None:
            self.calls.append(("pause", None))

        def resume_reading(self) -> None:
            self.calls.append(("resume", None))

        def is_reading(self) -> bool:
            return False

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"peername": ("127.0.0.1", 9)}.get(name, default)

        def get_protocol(self) -> Any:
            return "protocol"

        def set_protocol(self, protocol: Any) -> None:
            self.calls.append(("set_protocol", protocol))

    t = Full()
    held = HeldWrites(t, WriteBehind(loop, hold_from_rate=0.0))
    held.pause_reading()
    held.resume_reading()
    held.set_protocol("p")
    assert t.calls == [("pause", None), ("resume", None), ("set_protocol", "p")]
    assert held.can_write_eof() and not held.is_reading() and not held.is_closing()
    assert held.get_extra_info("peername") == ("127.0.0.1", 9)
    assert held.get_extra_info("nothing", 5) == 5
    assert held.get_protocol() == "protocol"


ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.binary(max_size=8)),
        st.tuples(st.just("writelines"), st.lists(st.binary(max_size=8), max_size=3)),
        st.tuples(st.just("iteration"), st.none()),
        st.tuples(st.just("holding"), st.booleans()),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(ops, min_size=1, max_size=3))
def test_every_byte_arrives_once_and_in_order(per_connection: list[list[Any]]) -> None:
    loop = asyncio.new_event_loop()
    try:
        behind = WriteBehind(loop, hold_from_rate=0.0)
        transports = [Recording() for _ in per_connection]
        held = [HeldWrites(t, behind) for t in transports]
        expected = [b""] * len(per_connection)
        longest = max(len(o) for o in per_connection)
        for step in range(longest):  # the connections' operations interleaved
            for i, conn_ops in enumerate(per_connection):
                if step >= len(conn_ops):
                    continue
                name, arg = conn_ops[step]
                if name == "write":
                    held[i].write(arg)
                    expected[i] += arg
                elif name == "writelines":
                    held[i].writelines(arg)
                    expected[i] += b"".join(arg)
                elif name == "holding":
                    behind.holding = arg  # the rate read as above or below the mark
                else:
                    _iteration(loop)
        _iteration(loop)
        assert [t.sent for t in transports] == expected
        assert all(h.held == 0 for h in held)
    finally:
        loop.close()


def test_client_connections_hold_their_writes_only_on_a_bound_data_plane() -> None:
    async def main() -> list[Any]:
        bound = DataPlane("n")
        await bound.bind("outbound", "127.0.0.1", 0, "outbound")
        unbound = DataPlane("n")
        off = DataPlane("n", hold_writes=False)
        await off.bind("outbound", "127.0.0.1", 0, "outbound")
        kinds = []
        for dp in (bound, unbound, off):
            server = Http1Server(dp, bound.listeners["outbound"])
            raw = Recording()
            server.connection_made(raw)  # type: ignore[arg-type]
            kinds.append(type(server.transport))
            server.connection_lost(None)
        await bound.close(grace=0.0)
        await off.close(grace=0.0)
        return kinds

    loop = asyncio.new_event_loop()
    try:
        kinds = loop.run_until_complete(main())
    finally:
        loop.close()
    assert kinds == [HeldWrites, Recording, Recording]


def test_past_the_hold_limit_writes_go_out_at_once(loop: Any) -> None:
    """Flow control as without holding: a big body reaches the transport at the write
    that passes the limit (whose buffer may then tell the protocol to pause)."""
    behind = WriteBehind(loop, hold_from_rate=0.0)
    t = Recording()
    held = HeldWrites(t, behind)
    piece = b"x" * (HOLD_LIMIT // 4)
    for _ in range(3):
        held.write(piece)
    assert t.calls == [] and held.held == 3 * len(piece)
    held.writelines([piece, b"tail"])  # past the limit: everything held goes now
    assert t.sent == piece * 4 + b"tail" and held.held == 0
    held.write(b"small")  # held again
    assert t.sent.endswith(b"tail")
    _iteration(loop)
    assert t.sent.endswith(b"tailsmall")


def test_requests_to_upstreams_are_held_too() -> None:
    """A bound DataPlane's pools hand their connections the same WriteBehind: the
    request leaves at the iteration's end, then the response flows back."""
    rig = WireRig()
    try:
        assert isinstance(rig.conn.transport, HeldWrites)
        assert rig.pool.write_behind is rig.dp.write_behind is not None
        assert rig.dp.write_behind is not None
        rig.dp.write_behind.holding = True  # as on a busy loop
        rig.server.data_received(b"GET /held HTTP/1.1\r\nHost: bench\r\n\r\n")
        assert rig.up.take() == b""  # held
        rig.loop.run_until_complete(asyncio.sleep(0))
        assert rig.up.take().startswith(b"GET /held HTTP/1.1\r\n")
    finally:
        rig.close()


def test_a_config_applied_before_the_first_bind_gets_held_writes_at_the_bind() -> None:
    async def main() -> tuple[Any, Any]:
        dp = DataPlane("n")
        dp.apply(wire_config())  # as from a last-known-good file, before the listeners
        pool = dp.snapshot.clusters[CLUSTER].pool  # type: ignore[union-attr]
        before = pool.write_behind
        await dp.bind("outbound", "127.0.0.1", 0, "outbound")
        after = pool.write_behind
        assert after is dp.write_behind
        await dp.close(grace=0.0)
        return before, after

    loop = asyncio.new_event_loop()
    try:
        before, after = loop.run_until_complete(main())
    finally:
        loop.close()
    assert before is None and isinstance(after, WriteBehind)
