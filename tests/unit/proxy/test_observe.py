"""DataPlane.observe: its fast access log line and metrics sample against the reference.

The reference is observe() as it was before its fast path: ``AccessLog.request`` of
``round``-ed times (the bytes of ``format_record`` of the same record for finite
numbers, tested in test_accesslog.py) and ``Metrics.request``. The fast path must give
the same bytes and the same exposition for any exchange.
"""

from __future__ import annotations

import json
import math
import os
import random
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from plait.proxy.accesslog import (
    FAST3_MAX,
    AccessLog,
    decimal3,
    format_record,
    request_prefix,
    request_suffix,
)
from plait.proxy.dataplane import ClusterState, DataPlane, ListenerSlot
from plait.proxy.http1 import Http1Server
from plait.proxy.http1_checks import HeadRejected, RequestHead
from plait.proxy.http1_exchange import Exchange
from plait.proxy.lb import RoundRobin
from plait.proxy.metrics import Metrics
from plait.proxy.runtime import Cluster
from plait.proxy.upstream import UpstreamPool

NODE = "host-a"


def reference_record(ex: Any, duration: float, wall: float) -> tuple[dict[str, Any], tuple]:
    """The record and the Metrics.request arguments of the original observe()."""
    slot = ex.server.listener
    cluster = ex.cluster
    head = ex.head
    rejected = ex.rejection if head is None else None
    destination = (
        cluster.service
        if cluster is not None
        else slot.service or (rejected and rejected.destination) or "unknown"
    )
    if head is not None:
        method = head.method.decode("latin-1")
        path = head.path
    else:
        method = rejected.method.decode("latin-1") if rejected and rejected.method else None
        path = rejected.path if rejected is not None else None
    upstream = ex.upstream_addr
    record = {
        "time": round(wall, 3),
        "request_id": ex.request_id.decode("latin-1"),
        "direction": slot.direction,
        "source": slot.source,
        "destination": destination,
        "method": method,
        "path": path,
        "upstream": f"{upstream[0]}:{upstream[1]}" if upstream else None,
        "status": ex.status,
        "duration_ms": round(duration * 1000.0, 3),
        "bytes_in": ex.bytes_in,
        "bytes_out": ex.bytes_out,
        "error": ex.error,
        "details": ex.details,
        "node": NODE,
        "peer": ex.server.peer,
        "rbac": ex.rbac,
    }
    sample = (slot.direction, slot.source, destination, ex.status, ex.error or "", duration)
    return record, sample


def real_exchange(dp: DataPlane, ns: SimpleNamespace) -> Exchange:
    """The Exchange that has the fields of ``ns`` (what observe() reads of one): observe
    takes Exchanges only (compiled, it checks; plait.proxy.native)."""
    server = Http1Server(dp, ns.server.listener)
    server.peer = ns.server.peer
    head = None
    if ns.head is not None:
        head = RequestHead(ns.head.method, b"/", ns.head.path, b"", "1.1", [], True)
    rejection = None
    if ns.rejection is not None:
        rejection = HeadRejected("rejected")
        rejection.destination = ns.rejection.destination
        rejection.method = ns.rejection.method
        rejection.path = ns.rejection.path
    ex = Exchange(server, head, rejection)
    if ns.cluster is not None:
        config = Cluster(f"outbound|{ns.cluster.service}")
        balancer = RoundRobin([], random.Random(0))
        ex.cluster = ClusterState(config, balancer, UpstreamPool(config.name))
    for name in _COPIED:
        setattr(ex, name, getattr(ns, name))
    return ex


# The fields of an exchange that observe() reads as they are.
_COPIED = (
    "started_at",
    "error",
    "status",
    "upstream_addr",
    "request_id",
    "bytes_in",
    "bytes_out",
    "details",
    "rbac",
)


SLOTS = [
    ListenerSlot("outbound", "outbound", None, f"{NODE}/outbound", "web"),
    ListenerSlot("inbound|orders", "inbound", "orders", f"{NODE}/inbound", "unknown"),
    ListenerSlot('outbound|we"ird', "outbound", 'we"ird\\', f"{NODE}/outbound", 'we"ird\\%s'),
]
CLUSTERS = [None, SimpleNamespace(service="orders"), SimpleNamespace(service='caf\u00e9 "x"')]

texts = st.one_of(
    st.sampled_from(["", "/", "/orders", 'a"b\\c', "caf\u00e9", "\n\t\x00"]), st.text()
)
maybe_texts = st.one_of(st.none(), texts)
request_ids = st.one_of(
    st.sampled_from([b"3f2a9c0e3f2a9c0e3f2a9c0e3f2a9c0e", b"", b"abc-1", b'x"y\\', b"\xff\xe9"]),
    st.binary(max_size=40),
)
methods = st.one_of(st.sampled_from([b"GET", b"POST", b'M"\\', b"\xe9"]), st.binary(max_size=8))
times = st.one_of(
    st.floats(min_value=1.6e9, max_value=1.9e9),
    st.integers(min_value=1_600_000_000_000, max_value=1_900_000_000_000).map(
        lambda k: (k + 0.5) / 1000  # the ties of round(t, 3), and their neighbours below
    ),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.0004, -0.0004, 0.0005, 5e-324, 4e9, 3.999999e9]),
)
durations = st.one_of(
    st.floats(min_value=0.0, max_value=0.2),
    st.floats(min_value=-1.0, max_value=20.0),
    st.integers(min_value=0, max_value=10**7).map(lambda k: (k + 0.5) / 1e6),
    st.floats(min_value=9e8, max_value=2e9),  # duration_ms around DECIMAL3_MAX
    st.floats(allow_nan=False, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.0000005, -0.0000005]),
)


@st.composite
def exchanges(draw: Any) -> SimpleNamespace:
    slot = draw(st.sampled_from(SLOTS))
    has_head = draw(st.booleans())
    head = SimpleNamespace(method=draw(methods), path=draw(texts)) if has_head else None
    rejection = None
    if not has_head and draw(st.booleans()):
        rejection = SimpleNamespace(
            destination=draw(st.one_of(st.none(), st.sampled_from(["", "pay"]))),
            method=draw(st.one_of(st.none(), methods)),
            path=draw(maybe_texts),
        )
    return SimpleNamespace(
        started_at=100.0,
        server=SimpleNamespace(
            listener=slot, peer=draw(st.one_of(st.none(), st.sampled_from(["spiffe://a/b"]), texts))
        ),
        cluster=draw(st.sampled_from(CLUSTERS)),
        head=head,
        rejection=rejection,
        error=draw(st.one_of(st.none(), st.sampled_from(["", "connection_refused"]), texts)),
        status=draw(st.sampled_from([200, 404, 499, 503])),
        upstream_addr=draw(
            st.one_of(st.none(), st.sampled_from([("10.0.0.2", 80), ("::1", 8080), ('a"', 1)]))
        ),
        request_id=draw(request_ids),
        bytes_in=draw(st.integers(min_value=0, max_value=2**40)),
        bytes_out=draw(st.integers(min_value=0, max_value=2**40)),
        details=draw(maybe_texts),
        rbac=draw(st.one_of(st.none(), st.sampled_from(["allowed", "would_deny"]), texts)),
    )


class Pair:
    """A DataPlane observing into a Metrics and a line list, and the reference's."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.metrics = Metrics()
        self.ref_lines: list[str] = []
        self.ref_metrics = Metrics()
        self.now = 0.0
        self.wall = 0.0
        self.dp = DataPlane(NODE, metrics=self.metrics, access_log=AccessLog(self.lines.append))
        self.dp.clock = lambda: self.now
        self.dp.wall_clock = lambda: self.wall

    def observe(self, ns: SimpleNamespace, duration: float, wall: float) -> None:
        ex = real_exchange(self.dp, ns)
        self.now = ex.started_at + duration
        self.wall = wall
        self.dp.observe(ex)
        record, sample = reference_record(ex, self.now - ex.started_at, wall)
        AccessLog(self.ref_lines.append).request(
            record["time"],
            record["request_id"],
            request_prefix(record["direction"], record["source"], record["destination"]),
            record["method"],
            record["path"],
            record["upstream"],
            record["status"],
            record["duration_ms"],
            record["bytes_in"],
            record["bytes_out"],
            record["error"],
            record["details"],
            request_suffix(NODE, record["peer"], record["rbac"]),
        )
        if all(map(math.isfinite, (record["time"], record["duration_ms"]))):
            assert self.ref_lines[-1] == format_record(record)
        self.ref_metrics.request(*sample)
        assert self.lines[-1] == self.ref_lines[-1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(exchanges(), durations, times), min_size=1, max_size=6))
def test_observe_gives_the_reference_line_and_metrics(
    cases: list[tuple[SimpleNamespace, float, float]],
) -> None:
    pair = Pair()
    for ex, duration, wall in cases:
        pair.observe(ex, duration, wall)
        # the same exchange again, a moment later: the cached pieces and time text
        pair.observe(ex, duration / 3, math.nextafter(wall, math.inf))
        pair.observe(ex, duration, -wall)
    assert pair.lines == pair.ref_lines
    for line in pair.lines:
        if "nan," not in line and "inf," not in line:  # as before: repr of such times
            assert list(json.loads(line))[:3] == ["time", "request_id", "direction"]
    assert pair.metrics.render() == pair.ref_metrics.render()


def test_many_requests_in_a_row_stay_identical() -> None:
    """Clock readings a few microseconds apart (the time text is reused within a
    millisecond) and a mix of series: lines and exposition equal the reference."""
    rnd = random.Random(7)
    pair = Pair()
    wall = 1_764_000_000.0
    cluster = SimpleNamespace(service="orders")
    for i in range(20_000):
        wall += rnd.choice([0.000001, 0.000013, 0.0002, 0.00049, 0.0005, 0.0011])
        ex = SimpleNamespace(
            started_at=5.0,
            server=SimpleNamespace(listener=SLOTS[i % 2], peer=None),
            cluster=cluster,
            head=SimpleNamespace(method=b"GET", path=f"/o/{i % 7}"),
            rejection=None,
            error=rnd.choice([None, None, "connection_refused"]),
            status=rnd.choice([200, 200, 200, 503]),
            upstream_addr=("10.0.0.2", 80 + i % 3),
            request_id=b"%032x" % rnd.getrandbits(128),
            bytes_in=0,
            bytes_out=1024,
            details=None,
            rbac=None,
        )
        pair.observe(ex, rnd.uniform(0.0, 0.03), wall)
    assert pair.lines == pair.ref_lines
    assert pair.metrics.render() == pair.ref_metrics.render()
    assert json.loads(pair.lines[-1])["destination"] == "orders"


def test_a_custom_logger_and_custom_metrics_still_get_theirs() -> None:
    records: list[dict[str, Any]] = []
    samples: list[tuple[Any, ...]] = []
    logger = SimpleNamespace(log=records.append)
    metrics = SimpleNamespace(request=lambda *args: samples.append(args))
    dp = DataPlane(NODE, metrics=metrics, access_log=logger)
    dp.clock = lambda: 100.25
    dp.wall_clock = lambda: 1_700_000_000.1234
    ns = SimpleNamespace(
        started_at=100.0,
        server=SimpleNamespace(listener=SLOTS[0], peer=None),
        cluster=CLUSTERS[1],
        head=SimpleNamespace(method=b"GET", path="/"),
        rejection=None,
        error=None,
        status=200,
        upstream_addr=("10.0.0.2", 80),
        request_id=b"abc",
        bytes_in=1,
        bytes_out=2,
        details=None,
        rbac=None,
    )
    ex = real_exchange(dp, ns)
    dp.observe(ex)
    record, sample = reference_record(ex, 0.25, 1_700_000_000.1234)
    assert records == [record]
    assert samples == [sample]
    # swapping in an AccessLog and a Metrics takes effect at once
    lines: list[str] = []
    dp.access_log = AccessLog(lines.append)
    dp.metrics = Metrics()
    dp.observe(ex)
    assert lines == [format_record(record)]
    assert dp.metrics.requests_count("outbound", "web", "orders", 200, "") == 1
    dp.access_log = None
    dp.metrics = None
    dp.observe(ex)  # nothing to record to: no error
    assert len(lines) == 1


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(min_value=0.0, max_value=2e12),
        st.integers(min_value=0, max_value=2 * 10**15).map(lambda k: (k + 0.5) / 1000),
        st.integers(min_value=0, max_value=2 * 10**15).map(lambda k: k / 1000),
        # where decimal3 makes the text from integers (below FAST3_MAX), ties included
        st.floats(min_value=0.0, max_value=FAST3_MAX),
        st.integers(min_value=0, max_value=10**9).map(lambda k: (k + 0.5) / 1000),
        st.integers(min_value=0, max_value=10**9).map(lambda k: k / 1000),
    )
)
def test_decimal3_is_repr_of_round(x: float) -> None:
    for y in (x, math.nextafter(x, -math.inf), math.nextafter(x, math.inf)):
        assert decimal3(y) == repr(round(y, 3))


def test_decimal3_edges() -> None:
    edges = [0.0, -0.0, -1e-9, 5e-324, 0.0005, 0.0015, 0.0625, 1.0625, 2**-10, 1e12, 1e16]
    edges += [math.nextafter(1e12, 0.0), 2.0**42, math.inf, -math.inf, math.nan]
    edges += [FAST3_MAX, math.nextafter(FAST3_MAX, 0.0), 999.9995, 0.9995, 0.0004999]
    for x in edges:
        assert decimal3(x) == repr(round(x, 3))


def test_request_ids_are_uuid4_hex_bytes_and_a_custom_maker_is_used() -> None:
    ids = {DataPlane(NODE).new_request_id_bytes() for _ in range(200)}
    assert len(ids) == 200
    for rid in ids:
        assert len(rid) == 32 and int(rid, 16) >= 0
        assert rid[12:13] == b"4" and rid[16:17] in b"89ab"  # version 4, RFC 4122 variant
    custom = DataPlane(NODE, request_id=lambda: "req-1")
    assert custom.new_request_id_bytes() == b"req-1"


def test_a_forked_worker_makes_ids_of_its_own() -> None:
    """Ids come in batches: a child forked mid-batch (a --workers process) must not
    hand out what is left of its parent's batch, nor repeat the parent's draws."""
    dp = DataPlane(NODE)
    dp.new_request_id_bytes()  # a batch is drawn; most of it is left
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: ten ids to the pipe, then exit at once
        os.close(r)
        os.write(w, b"".join(dp.new_request_id_bytes() for _ in range(10)))
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        child = f.read()
    assert os.waitpid(pid, 0)[1] == 0
    parent = b"".join(dp.new_request_id_bytes() for _ in range(10))
    assert len(child) == len(parent) == 320
    ours = {parent[i : i + 32] for i in range(0, 320, 32)}
    assert not ours & {child[i : i + 32] for i in range(0, 320, 32)}
