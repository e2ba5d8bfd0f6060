"""Whole-read memos (plait.proxy.http1 and plait.proxy.upstream): a read that repeats,
byte for byte, a bodiless request or a response head seen whole before skips llhttp's
callbacks. Whatever the bytes, the proxy must write the same bytes, log the same
records and keep or close the same connections as when every read goes through llhttp.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_rig import Outcome, WireRig

from plait.proxy import http1, upstream

PLAIN = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
BODY = b"x" * 1024
NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 26 Nov 2026 19:40:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Connection: keep-alive\r\n\r\n" + BODY
)


@pytest.fixture(autouse=True)
def _fresh_memos() -> Iterator[None]:
    http1._whole_requests.clear()
    upstream._whole_responses.clear()
    yield
    http1._whole_requests.clear()
    upstream._whole_responses.clear()


def run(steps: list[tuple[bytes, list[bytes]]], remember: bool) -> list[Outcome]:
    """Each step's outcome on one rig, with the memos on or off (nothing remembered)."""
    http1._whole_requests.clear()
    upstream._whole_responses.clear()
    saved = http1.MAX_WHOLE_REQUEST, upstream.MAX_WHOLE_HEAD
    if not remember:
        http1.MAX_WHOLE_REQUEST = upstream.MAX_WHOLE_HEAD = -1
    rig = WireRig()
    try:
        return [rig.exchange(request, response) for request, response in steps]
    finally:
        http1.MAX_WHOLE_REQUEST, upstream.MAX_WHOLE_HEAD = saved
        rig.close()


class Spy:
    """Counts calls of the whole-read paths."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.requests = self.responses = 0
        whole_request = http1.Http1Server._whole
        whole_response = upstream.UpstreamConnection._whole

        def request(server: Any, head: Any) -> None:
            self.requests += 1
            whole_request(server, head)

        def response(conn: Any, *args: Any) -> None:
            self.responses += 1
            whole_response(conn, *args)

        monkeypatch.setattr(http1.Http1Server, "_whole", request)
        monkeypatch.setattr(upstream.UpstreamConnection, "_whole", response)


def test_a_repeated_request_and_response_skip_llhttp_and_write_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = [(PLAIN, [NGINX])] * 4
    reference = run(steps, remember=False)
    spy = Spy(monkeypatch)
    got = run(steps, remember=True)
    assert got == reference
    assert (spy.requests, spy.responses) == (3, 3)  # the first of each went through llhttp
    first = reference[0]
    assert first.upstream.startswith(b"GET / HTTP/1.1\r\nhost: bench\r\n")
    assert first.downstream.startswith(b"HTTP/1.1 200 OK\r\n") and first.downstream.endswith(BODY)
    assert first.upstream_kept and not first.client_closed
    assert [o.log[0]["request_id"] for o in got] == [f"{i:032x}" for i in range(1, 5)]


def test_what_is_never_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    with_id = b"GET / HTTP/1.1\r\nHost: bench\r\nx-request-id: abc\r\n\r\n"
    with_body = b"POST / HTTP/1.1\r\nHost: bench\r\nContent-Length: 2\r\n\r\nhi"
    closing = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    for request in (with_id, with_body, with_id, with_body):
        run([(request, [chunked]), (request, [chunked])], remember=True)
    assert http1._whole_requests == {} and upstream._whole_responses == {}
    run([(PLAIN, [NGINX[:40], NGINX[40:]])] * 2, remember=True)  # a head over two reads
    assert http1._whole_requests and upstream._whole_responses == {}
    run([(closing, [NGINX])], remember=True)
    assert closing not in http1._whole_requests
    assert (spy.requests, spy.responses) == (1, 0)


def test_a_response_of_another_length_goes_through_llhttp(monkeypatch: pytest.MonkeyPatch) -> None:
    short = NGINX[: -len(BODY)] + BODY[:10]  # the same head, the body cut short
    longer = NGINX + b"HTTP/1.1 200 OK\r\n"  # the same response, then more bytes
    steps = [(PLAIN, [NGINX]), (PLAIN, [short, BODY[10:]]), (PLAIN, [longer])]
    reference = run(steps, remember=False)
    spy = Spy(monkeypatch)
    assert run(steps, remember=True) == reference
    assert spy.responses == 0
    assert not reference[2].upstream_kept  # a second response with no request: closed


def test_the_memos_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "MAX_WHOLE_REQUESTS", 4)
    monkeypatch.setattr(upstream, "MAX_WHOLE_RESPONSES", 4)
    steps = [
        (b"GET /%d HTTP/1.1\r\nHost: bench\r\n\r\n" % i, [NGINX.replace(b"nginx", b"n%d" % i)])
        for i in range(10)
    ]
    run(steps, remember=True)
    assert 0 < len(http1._whole_requests) <= 4 and 0 < len(upstream._whole_responses) <= 4


# -- any bytes: the same outcome with and without the memos ---------------------------------

_REQUEST_FIELDS = [
    b"Host: bench",
    b"host: bench:80",
    b"Host: elsewhere",
    b"Host: bench",  # twice is possible: a duplicate Host
    b"x-request-id: r1",
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
