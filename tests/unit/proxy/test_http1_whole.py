"""Whole-read memos (plait.proxy.http1_whole, used by http1 and upstream): a read that repeats,
byte for byte, a bodiless request or a response head seen whole before skips llhttp's
callbacks. Whatever the bytes, the proxy must write the same bytes, log the same
records and keep or close the same connections as when every read goes through llhttp.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import wire_rig
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_rig import Outcome, WireRig

from plait.proxy import http1_whole
from plait.proxy.http1_checks import render_request_head
from plait.proxy.http1_shapes import fast_request_head
from plait.proxy.runtime import HeaderMatcher

PLAIN = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
BODY = b"x" * 1024
NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 26 Nov 2026 19:40:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Connection: keep-alive\r\n\r\n" + BODY
)


@pytest.fixture(autouse=True)
def _fresh_memos() -> Iterator[None]:
    http1_whole.clear()
    yield
    http1_whole.clear()


def run(steps: list[tuple[bytes, list[bytes]]], remember: bool) -> list[Outcome]:
    """Each step's outcome on one rig, with the memos on or off (nothing remembered)."""
    http1_whole.clear()
    saved = http1_whole.MAX_WHOLE_REQUEST, http1_whole.MAX_WHOLE_HEAD
    if not remember:
        http1_whole.MAX_WHOLE_REQUEST = http1_whole.MAX_WHOLE_HEAD = -1  # type: ignore[misc]
    rig = WireRig()
    try:
        return [rig.exchange(request, response) for request, response in steps]
    finally:
        http1_whole.MAX_WHOLE_REQUEST, http1_whole.MAX_WHOLE_HEAD = saved  # type: ignore[misc]
        rig.close()


class Spy:
    """Counts the reads handled by the whole-read paths from now on (http1_whole.hits:
    a spy that wraps methods would not see calls made inside compiled code)."""

    def __init__(self) -> None:
        self._at = list(http1_whole.hits)

    @property
    def requests(self) -> int:
        return http1_whole.hits[0] - self._at[0]

    @property
    def responses(self) -> int:
        return http1_whole.hits[1] - self._at[1]


def test_a_repeated_request_and_response_skip_llhttp_and_write_the_same() -> None:
    steps = [(PLAIN, [NGINX])] * 4
    reference = run(steps, remember=False)
    spy = Spy()
    got = run(steps, remember=True)
    assert got == reference
    assert (spy.requests, spy.responses) == (3, 3)  # the first of each went through llhttp
    first = reference[0]
    assert first.upstream.startswith(b"GET / HTTP/1.1\r\nhost: bench\r\n")
    assert first.downstream.startswith(b"HTTP/1.1 200 OK\r\n") and first.downstream.endswith(BODY)
    assert first.upstream_kept and not first.client_closed
    assert [o.log[0]["request_id"] for o in got] == [f"{i:032x}" for i in range(1, 5)]


def test_what_is_never_remembered() -> None:
    spy = Spy()
    odd_id = b"GET / HTTP/1.1\r\nHost: bench\r\nx-request-id: a-b\r\n\r\n"
    other_spelling = b"GET / HTTP/1.1\r\nHost: bench\r\nX-Request-Id: ab\r\n\r\n"
    two_ids = b"GET / HTTP/1.1\r\nHost: bench\r\nx-request-id: ab\r\nx-request-id: ab\r\n\r\n"
    with_body = b"POST / HTTP/1.1\r\nHost: bench\r\nContent-Length: 2\r\n\r\nhi"
    closing = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    for request in (odd_id, other_spelling, two_ids, with_body):
        run([(request, [chunked]), (request, [chunked])], remember=True)
    assert http1_whole.requests == {} and http1_whole._id_requests == {}
    assert http1_whole.responses == {}
    run([(PLAIN, [NGINX[:40], NGINX[40:]])] * 2, remember=True)  # a head over two reads
    assert http1_whole.requests and http1_whole.responses == {}
    run([(closing, [NGINX])], remember=True)
    assert closing not in http1_whole.requests
    assert (spy.requests, spy.responses) == (1, 0)


def test_a_request_id_is_put_back_into_its_template() -> None:
    def with_id(rid: bytes) -> bytes:
        return b"GET /p HTTP/1.1\r\nHost: bench\r\nx-request-id: %s\r\nVia: 1.1 a\r\n\r\n" % rid

    ids = [b"0" * 32, b"f" * 32, b"abc", b"Z" * 128, b"a-b", b"Z" * 129, b"1"]
    steps = [(with_id(rid), [NGINX]) for rid in ids]
    reference = run(steps, remember=False)
    spy = Spy()
    got = run(steps, remember=True)
    assert got == reference
    assert spy.requests == 4  # all but the first, the one with a dash and the long one
    for rid, outcome in zip(ids, got, strict=True):
        assert b"\r\nx-request-id: %s\r\n" % rid in outcome.upstream
        assert outcome.log[0]["request_id"] == rid.decode()


def test_a_response_of_another_length_goes_through_llhttp() -> None:
    short = NGINX[: -len(BODY)] + BODY[:10]  # the same head, the body cut short
    longer = NGINX + b"HTTP/1.1 200 OK\r\n"  # the same response, then more bytes
    steps = [(PLAIN, [NGINX]), (PLAIN, [short, BODY[10:]]), (PLAIN, [longer])]
    reference = run(steps, remember=False)
    spy = Spy()
    assert run(steps, remember=True) == reference
    assert spy.responses == 0
    assert not reference[2].upstream_kept  # a second response with no request: closed


def test_a_remembered_heads_target_follows_the_config() -> None:
    rig = WireRig()
    try:
        first = [rig.exchange(PLAIN, [NGINX]) for _ in range(3)]
        snap = rig.dp.snapshot
        assert snap is not None and len(snap.targets) == 1  # kept by the second request
        assert all(o.upstream.startswith(b"GET / HTTP/1.1\r\nhost: bench\r\n") for o in first)
        assert len({o.upstream for o in first}) == 3  # each with its own request id
        rig.dp.apply(wire_rig.config(domains=("elsewhere",)))  # bench is no longer routed
        gone = rig.exchange(PLAIN, [NGINX])
        assert gone.upstream == b"" and gone.downstream.startswith(b"HTTP/1.1 404 ")
        assert b"destination_not_found" in gone.downstream
        rig.dp.apply(wire_rig.config())
        again = rig.exchange(PLAIN, [NGINX])
        assert again.upstream.startswith(b"GET / HTTP/1.1\r\nhost: bench\r\n")
        # a weighted split is drawn per request: its target is never kept
        rig.dp.apply(wire_rig.config(clusters=(wire_rig.CLUSTER, "outbound|bench-b")))
        rig.exchange(PLAIN, [NGINX])
        snap = rig.dp.snapshot
        assert snap is not None and snap.targets == {}
    finally:
        rig.close()


def test_routes_on_the_request_id_are_decided_per_request() -> None:
    """A route that matches on x-request-id: every head from one template differs in
    just that field, so no target is kept for them."""
    rig = WireRig()
    try:
        only_a1 = (HeaderMatcher("x-request-id", exact="a1"),)
        rig.dp.apply(wire_rig.config(headers=only_a1))
        template = b"GET /p HTTP/1.1\r\nHost: bench\r\nx-request-id: %s\r\n\r\n"
        statuses = [
            rig.exchange(template % rid, [NGINX]).downstream[9:12]
            for rid in (b"a1", b"a1", b"a1", b"b2", b"a1", b"c3")
        ]
        assert statuses == [b"200", b"200", b"200", b"404", b"200", b"404"]
        snap = rig.dp.snapshot
        assert snap is not None and snap.targets == {}
    finally:
        rig.close()


def test_the_memos_are_bounded() -> None:
    n = max(http1_whole.MAX_WHOLE_REQUESTS, http1_whole.MAX_WHOLE_RESPONSES) + 10
    steps = [
        (b"GET /%d HTTP/1.1\r\nHost: bench\r\n\r\n" % i, [NGINX.replace(b"nginx", b"n%d" % i)])
        for i in range(n)
    ]
    run(steps, remember=True)
    assert 0 < len(http1_whole.requests) <= http1_whole.MAX_WHOLE_REQUESTS
    assert 0 < len(http1_whole.responses) <= http1_whole.MAX_WHOLE_RESPONSES


# -- any bytes: the same outcome with and without the memos ---------------------------------

_REQUEST_FIELDS = [
    b"Host: bench",
    b"host: bench:80",
    b"Host: elsewhere",
    b"Host: bench",  # twice is possible: a duplicate Host
    b"x-request-id: r1",
    b"x-request-id: 7f",
    b"X-Request-ID: r1",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Content-Length: 0",
    b"Content-Length: 3",
    b"Transfer-Encoding: chunked",
    b"Upgrade: websocket",
    b"Via: 1.1 elsewhere",
    b"Accept: */*",
    b"X-Odd: a\x01b",
    b"Bad Name: x",
    b"Expect: 100-continue",
    b" folded",
]
_RESPONSE_FIELDS = [
    b"Server: nginx",
    b"Content-Length: 5",
    b"Content-Length: 3",
    b"Transfer-Encoding: chunked",
    b"Connection: close",
    b"Proxy-Status: up",
    b"Via: 1.0 up",
    b"X-Odd: a\x7fb",
]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Mostly requests the proxy forwards (so that the memos come into play), with odd
    methods, targets, fields, line ends and bodies mixed in."""
    method = draw(st.sampled_from([b"GET", b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"POST"]))
    target = draw(st.sampled_from([b"/", b"/", b"/a?b=1", b"*", b"http://bench/x", b"/%zz"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    fields = [b"Host: bench"] if draw(st.integers(0, 3)) else []
    fields += draw(st.lists(st.sampled_from(_REQUEST_FIELDS), max_size=2))
    eol = draw(st.sampled_from([b"\r\n"] * 5 + [b"\n"]))
    head = method + b" " + target + b" " + version + b"\r\n"
    head += b"".join(f + eol for f in draw(st.permutations(fields))) + b"\r\n"
    body = draw(st.sampled_from([b""] * 4 + [b"abc", b"0\r\n\r\n", b"3\r\nabc\r\n0\r\n\r\n"]))
    return head + body


@st.composite
def responses(draw: st.DrawFn) -> list[bytes]:
    """Mostly whole, well-framed responses, with odd ones mixed in; in one read or two."""
    status = draw(st.sampled_from([b"200 OK", b"200 OK", b"404 Not Found", b"204 NC", b"304 NM"]))
    interim = draw(st.sampled_from([b""] * 4 + [b"HTTP/1.1 100 Continue\r\n\r\n"]))
    body = draw(st.sampled_from([b"", b"hello", b"x" * 300, b"5\r\nhello\r\n0\r\n\r\n"]))
    fields = [b"Content-Length: %d" % len(body)] if draw(st.integers(0, 3)) else []
    fields += draw(st.lists(st.sampled_from(_RESPONSE_FIELDS), max_size=2))
    eol = draw(st.sampled_from([b"\r\n"] * 5 + [b"\n"]))
    head = interim + b"HTTP/1.1 " + status + b"\r\n"
    head += b"".join(f + eol for f in draw(st.permutations(fields)))
    after = draw(st.sampled_from([b""] * 8 + [b"HTTP/1.1 200 OK\r\n", b"\r\n"]))
    data = head + b"\r\n" + body + after
    cut = draw(st.sampled_from([0, 0, 0, 0, 0, 1, len(head), len(data) - 1]))
    return [data] if cut in (0, len(data)) else [data[:cut], data[cut:]]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(requests(), responses()), min_size=1, max_size=3), st.data())
def test_the_memos_never_change_an_outcome(
    pairs: list[tuple[bytes, list[bytes]]], data: st.DataObject
) -> None:
    # Each pair repeated, so that its second and third rounds may take the whole paths.
    steps = [pair for pair in pairs for _ in range(3)]
    if data.draw(st.booleans()):  # or interleaved: the memos outlive a pair
        steps = data.draw(st.permutations(steps))
    assert run(steps, remember=True) == run(steps, remember=False)


def test_a_template_head_is_the_template_with_the_new_value() -> None:
    data = b"GET /p HTTP/1.1\r\nHost: bench\r\nx-request-id: r0\r\nAccept: */*\r\n\r\n"
    fields = [(b"Host", b"bench"), (b"x-request-id", b"r0"), (b"Accept", b"*/*")]
    template = fast_request_head(b"GET", b"/p", "1.1", fields, True)
    http1_whole.remember_request(data, template)
    again = data.replace(b"r0", b"7f3a")
    found = http1_whole.template_of(again)
    assert found is not None
    head = found[1]
    fields[1] = (b"x-request-id", b"7f3a")
    checked = fast_request_head(b"GET", b"/p", "1.1", fields, True)
    # every field, the pre-rendered ones included, as the checks make them of `again`
    assert head == checked
    assert head.fields_wire == checked.fields_wire
    assert render_request_head(head, b"1.1 n", None) == render_request_head(checked, b"1.1 n", None)
    assert template.request_id == b"r0"  # the template itself is never changed
