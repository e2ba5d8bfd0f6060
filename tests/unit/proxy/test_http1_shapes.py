"""The memoized head checks decide exactly as the full ones, on any head."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.proxy import http1_shapes
from plait.proxy.http1_checks import (
    HeadRejected,
    RequestHead,
    parse_request_head,
    parse_response_head,
    render_request_head,
    render_response_head,
)
from plait.proxy.http1_shapes import (
    MAX_SHAPES,
    fast_request_head,
    fast_response_head,
    request_shape,
    response_shape,
)

NAMES = [
    b"Host",
    b"host",
    b"HOST",
    b"Content-Length",
    b"content-length",
    b"Transfer-Encoding",
    b"Connection",
    b"connection",
    b"Keep-Alive",
    b"Proxy-Connection",
    b"TE",
    b"Trailer",
    b"Upgrade",
    b"Via",
    b"X-Request-Id",
    b"Expect",
    b"Proxy-Status",
    b"Accept",
    b"User-Agent",
    b"X-Custom",
    b"Transfer_Encoding",
    b"Content__Length",
    b"X_Ok_Name",
    b"Bad Name",
    b"",
    b"Server",
    b"Date",
    b"X-%s%%",  # "%" is a token character: the rendering format must escape it
]
VALUES = [
    b"bench",
    b"bench:80",
    b"",
    b" ",
    b"0",
    b"12",
    b" 12 ",
    b"1x",
    b"1" * 19,
    b"chunked",
    b"gzip, chunked",
    b"keep-alive",
    b"Keep-Alive",
    b"close",
    b"upgrade",
    b"X-Custom",
    b"keep-alive, X-Custom",
    b"trailers",
    b"100-continue",
    b"websocket",
    b"h2c",
    b"1.1 a",
    b'err; error=x; details="y"',
    b"a\x00b",
    b"a\rb",
    b"caf\xe9",
    b"bad host!",
    b"[::1]:80",
    b"a\x7fb",
    b"a\tb",
    b"\x80\xff",
    b"%s %d",
]

# Anything, and heads of the common shapes (one Host, plain fields), so both paths are hit.
COMMON_NAMES = [
    b"Accept",
    b"User-Agent",
    b"X-Request-Id",
    b"Content-Length",
    b"Connection",
    b"Keep-Alive",
    b"X-%d",
    b"Via",  # one Via is a common shape (what a plait hop sends the next one)
    b"via",
]
COMMON_VALUES = [
    b"bench",
    b"12",
    b"0",
    b"keep-alive",
    b"Keep-Alive",
    b"close",
    b"abc-123",
    b" 7 ",
    b"%s",
    b"a\x00b",
    b"1.1 bench-out",
    b"",
    b"a\rb",
]
headers_st = st.one_of(
    st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=10),
    st.builds(
        lambda rest, host, at: [*rest[:at], host, *rest[at:]],
        st.lists(
            st.tuples(st.sampled_from(COMMON_NAMES), st.sampled_from(COMMON_VALUES)), max_size=10
        ),
        st.tuples(st.sampled_from([b"Host", b"host"]), st.sampled_from([b"bench", b" a:1 "])),
        st.integers(0, 10),
    ),
)


def outcome(fn: Any, *args: Any, **kw: Any) -> Any:
    """What a check decides, and for an accepted head how it is rendered."""
    try:
        head = fn(*args, **kw)
    except HeadRejected as exc:
        return ("rejected", exc.status, exc.error, exc.details)
    if isinstance(head, RequestHead):
        wires = [render_request_head(head, b"1.1 n", rid) for rid in (None, b"r-1")]
    else:
        wires = [
            render_response_head(head, b"1.1 n", ps, downstream_version=v)
            for ps in (None, b"p")
            for v in ("1.1", "1.0")
        ]
    return ("ok", head, wires)


def _checked_get_200(response: list[tuple[bytes, bytes]]) -> Any:
    """What the full check makes of a 200 with these fields, answering a kept-alive
    HTTP/1.1 GET."""
    return parse_response_head(
        200,
        b"OK",
        response,
        request_method=b"GET",
        downstream_version="1.1",
        downstream_keep_alive=True,
    )


@settings(max_examples=600, deadline=None)
@given(
    headers=headers_st,
    method=st.sampled_from([b"GET", b"POST", b"HEAD", b"CONNECT", b"OPTIONS"]),
    target=st.sampled_from(
        [b"/", b"/a?b", b"/p#f", b"/%20", b"*", b"http://bench/x", b"https://a/", b"x", b""]
    ),
    version=st.sampled_from(["1.1", "1.0", "2.0"]),
    keep_alive=st.booleans(),
)
def test_fast_request_head_decides_as_the_full_check(
    headers: list[tuple[bytes, bytes]], method: bytes, target: bytes, version: str, keep_alive: bool
) -> None:
    for _ in range(2):  # the first call fills the shape cache, the second uses it
        assert outcome(fast_request_head, method, target, version, headers, keep_alive) == outcome(
            parse_request_head, method, target, version, headers, keep_alive
        )


@settings(max_examples=600, deadline=None)
@given(
    headers=headers_st,
    status=st.sampled_from([100, 101, 200, 204, 304, 404, 503]),
    method=st.sampled_from([b"GET", b"HEAD"]),
    version=st.sampled_from(["1.1", "1.0"]),
    keep_alive=st.booleans(),
)
def test_fast_response_head_decides_as_the_full_check(
    headers: list[tuple[bytes, bytes]], status: int, method: bytes, version: str, keep_alive: bool
) -> None:
    full = outcome(
        parse_response_head,
        status,
        b"OK",
        headers,
        request_method=method,
        downstream_version=version,
        downstream_keep_alive=keep_alive,
    )
    for _ in range(2):
        fast = outcome(fast_response_head, status, b"OK", headers, method, version, keep_alive)
        assert fast == full


def test_common_shapes_take_the_fast_path() -> None:
    assert request_shape((b"Host",)) == (0, -1, -1, -1, -1, ())
    assert request_shape((b"Host", b"User-Agent", b"X-Request-Id", b"Content-Length")) == (
        0,
        3,
        2,
        -1,
        -1,
        (1, 2),
    )
    # what a plait outbound proxy sends the inbound one
    assert request_shape((b"host", b"via", b"x-request-id")) == (0, -1, 2, -1, 1, (2,))
    nginx = (b"Server", b"Date", b"Content-Type", b"Content-Length", b"Connection")
    assert response_shape(nginx) == (3, 4, -1, (0, 1, 2))
    # what a plait inbound proxy answers the outbound one
    relayed = (b"Server", b"Date", b"Content-Type", b"via", b"content-length")
    assert response_shape(relayed) == (4, -1, 3, (0, 1, 2))


def test_one_via_is_kept_and_checked_on_the_fast_path() -> None:
    fields = [(b"host", b"bench"), (b"via", b"1.1 bench-out"), (b"x-request-id", b"ab12")]
    head = fast_request_head(b"GET", b"/", "1.1", fields, True)
    assert head == parse_request_head(b"GET", b"/", "1.1", fields, True)
    assert head.via == b"1.1 bench-out" and head.request_id == b"ab12"
    assert render_request_head(head, b"1.1 bench-in", None) == (
        b"GET / HTTP/1.1\r\nhost: bench\r\nx-request-id: ab12"
        b"\r\nvia: 1.1 bench-out, 1.1 bench-in\r\n\r\n"
    )
    for bad in (b"1.1 a\x00", b"1.1 a\rb", b"\x7f"):  # the Via value is checked too
        with pytest.raises(HeadRejected):
            fast_request_head(b"GET", b"/", "1.1", [(b"host", b"a"), (b"via", bad)], True)
        with pytest.raises(HeadRejected):
            fast_response_head(200, b"OK", [(b"via", bad)], b"GET", "1.1", True)
    response = [(b"Server", b"nginx"), (b"via", b"1.1 bench-in"), (b"content-length", b"3")]
    resp = fast_response_head(200, b"OK", response, b"GET", "1.1", True)
    assert resp.via == b"1.1 bench-in"
    assert resp == _checked_get_200(response)


@pytest.mark.parametrize(
    "names",
    [
        (b"Host", b"Host"),  # a second Host: the full check words the error
        (b"Transfer-Encoding", b"Host"),
        (b"Host", b"Upgrade"),
        (b"Host", b"Transfer_Encoding"),
        (b"Host", b"Bad Name"),
        (b"User-Agent",),  # no Host
        (b"Host", b"Via", b"via"),  # a second Via: the full check joins them
    ],
)
def test_uncommon_request_shapes_take_the_full_path(names: tuple[bytes, ...]) -> None:
    assert request_shape(names) is None


def test_shape_cache_is_bounded() -> None:
    http1_shapes._request_plans.clear()
    for i in range(MAX_SHAPES + 10):
        fast_request_head(b"GET", b"/", "1.1", [(b"Host", b"a"), (b"X-%d" % i, b"v")], True)
    assert len(http1_shapes._request_plans) <= MAX_SHAPES


def test_memos_are_bounded_and_skip_long_keys() -> None:
    http1_shapes._hosts.clear()
    http1_shapes._paths.clear()
    http1_shapes._lengths.clear()
    for i in range(2000):
        fast_request_head(
            b"POST",
            b"/%d" % i,
            "1.1",
            [(b"Host", b"h%d" % i), (b"Content-Length", b"%d" % i)],
            True,
        )
    assert len(http1_shapes._hosts) <= http1_shapes.MAX_HOSTS
    assert len(http1_shapes._paths) <= http1_shapes.MAX_PATHS
    assert len(http1_shapes._lengths) <= http1_shapes.MAX_LENGTHS
    http1_shapes._hosts.clear()
    http1_shapes._paths.clear()
    long_host, long_target = b"h" * 300, b"/" + b"p" * 300
    head = fast_request_head(b"GET", long_target, "1.1", [(b"Host", long_host)], True)
    assert (head.host, head.path) == (long_host, long_target.decode())
    assert long_host not in http1_shapes._hosts and long_target not in http1_shapes._paths
    long_names = [(b"Host", b"a"), (b"X-" + b"n" * 3000, b"v")]
    fast_request_head(b"GET", b"/", "1.1", long_names, True)
    assert tuple(n for n, _ in long_names) not in http1_shapes._request_plans


def test_rendering_follows_a_replaced_header_list() -> None:
    nginx = [(b"Server", b"nginx"), (b"Content-Length", b"3")]
    head = fast_response_head(200, b"OK", nginx, b"GET", "1.1", True)
    assert b"\r\nServer: nginx\r\n" in render_response_head(
        head, b"v", None, downstream_version="1.1"
    )
    head.headers = [(b"X-Other", b"1")]
    out = render_response_head(head, b"v", None, downstream_version="1.1")
    assert b"X-Other: 1" in out and b"Server" not in out
    req = fast_request_head(b"GET", b"/", "1.1", [(b"Host", b"a"), (b"Accept", b"*/*")], True)
    req.headers = []
    assert render_request_head(req, b"v", None) == b"GET / HTTP/1.1\r\nhost: a\r\nvia: v\r\n\r\n"


@pytest.mark.parametrize("count", range(0, 12))
def test_every_field_count_takes_the_same_decision(count: int) -> None:
    """The fast path unpacks up to 8 fields by hand; more go through map()."""
    fields = [(b"Host", b"bench")] + [(b"X-%d" % i, b"v%d" % i) for i in range(count)]
    args = (b"GET", b"/x?y", "1.1", fields, True)
    assert outcome(fast_request_head, *args) == outcome(parse_request_head, *args)
    head = fast_request_head(*args)
    assert head.headers == fields[1:] and head.headers is not fields
    response = [(b"X-%d" % i, b"v%d" % i) for i in range(count)] + [(b"Content-Length", b"1")]
    full = outcome(_checked_get_200, response)
    assert outcome(fast_response_head, 200, b"OK", response, b"GET", "1.1", True) == full


def test_the_last_shape_is_reused_only_for_the_same_names() -> None:
    """The last names and plan are looked at before the dict: alternating shapes (and a
    cleared dict) decide as the full check every time."""
    heads = [
        [(b"Host", b"a")],
        [(b"host", b"a"), (b"via", b"1.1 x"), (b"x-request-id", b"r1")],
        [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")],  # no plan: the full path
        [(b"Host", b"a"), (b"Via", b"1.1 y"), (b"Via", b"1.1 z")],  # two Via: the full path
        [(b"Host", b"a"), (b"Content-Length", b"5")],
    ]
    for i in range(3 * len(heads)):
        fields = heads[(i * 3) % len(heads)] if i % 2 else heads[i % len(heads)]
        if i == 7:
            http1_shapes._request_plans.clear()
            http1_shapes._response_plans.clear()
        args = (b"POST", b"/", "1.1", fields, True)
        assert outcome(fast_request_head, *args) == outcome(parse_request_head, *args)
        resp = (200, b"OK", fields, b"GET", "1.1", True)
        full = outcome(
            parse_response_head,
            200,
            b"OK",
            fields,
            request_method=b"GET",
            downstream_version="1.1",
            downstream_keep_alive=True,
        )
        assert outcome(fast_response_head, *resp) == full
