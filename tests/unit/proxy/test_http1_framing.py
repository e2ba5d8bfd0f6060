"""plait.proxy.http1_checks: HTTP/1.1 head validation and normalization, no sockets."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.proxy.http1_checks import (
    BODY_CHUNKED,
    BODY_CLOSE,
    BODY_LENGTH,
    BODY_NONE,
    LAST_CHUNK,
    HeadRejected,
    check_transfer_encoding,
    chunk_prefix,
    field_name_error,
    field_value_error,
    parse_content_length,
    parse_request_head,
    parse_request_transfer_encoding,
    parse_response_head,
    path_of,
    render_interim,
    render_last_chunk,
    render_request_head,
    render_response_head,
    transfer_codings,
)

H = list[tuple[bytes, bytes]]


def req(headers: H, method: bytes = b"GET", target: bytes = b"/p", version: str = "1.1"):
    return parse_request_head(method, target, version, headers, keep_alive=True)


def rejected(headers: H, **kw: object) -> HeadRejected:
    with pytest.raises(HeadRejected) as info:
        req(headers, **kw)  # type: ignore[arg-type]
    return info.value


HOST = (b"Host", b"orders")

# -- single fields --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"0", b"42", b" 42 ", b"\t7", b"123456789012345678"])
def test_content_length_accepts_digits_with_ows(value: bytes) -> None:
    assert parse_content_length([value]) == int(value.strip())


@pytest.mark.parametrize(
    "values",
    [
        [b"5", b"5"],  # identical duplicates are refused too (documented choice)
        [b"5", b"6"],
        [b"5,5"],
        [b"1000 1000"],
        [b"1000.1000"],
        [b"+5"],
        [b"-5"],
        [b""],
        [b"0x10"],
        [b"1234567890123456789"],  # 19 digits: beyond what we accept
        [b"18446744073709551616"],
        ["٣".encode()],  # a non-ASCII digit
    ],
)
def test_content_length_rejects_anything_else(values: list[bytes]) -> None:
    with pytest.raises(HeadRejected) as info:
        parse_content_length(values)
    assert info.value.status == 400
    assert info.value.error == "http_request_error"


@pytest.mark.parametrize(
    ("values", "forwarded"),
    [
        ([b"chunked"], b"chunked"),
        ([b"\t CHUNKED "], b"chunked"),
        ([b"gzip, chunked"], b"gzip, chunked"),
        ([b" deflate, identity, chunked"], b"deflate, identity, chunked"),
        ([b"gzip", b"deflate", b"identity", b"compress", b"chunked"],
         b"gzip, deflate, identity, compress, chunked"),
        ([b"gzip , deflate , \tidentity\t, compress\t, chunked"],
         b"gzip, deflate, identity, compress, chunked"),
        ([b"GZip ; Level = 9 ;x=\"a, \\\"chunked\"", b"Chunked"],
         b'gzip;level=9;x="a, \\"chunked", chunked'),
        ([b"x-custom;p=v, chunked "], b"x-custom;p=v, chunked"),
        ([b"gzip\t,\tchunked"], b"gzip, chunked"),
    ],
)  # fmt: skip
def test_request_transfer_encoding_chunked_last_is_accepted(
    values: list[bytes], forwarded: bytes
) -> None:
    assert parse_request_transfer_encoding(values) == forwarded


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ([b"chunked, gzip"], "does not end with chunked"),
        ([b"chunked", b"gzip"], "does not end with chunked"),
        ([b"gzip"], "does not end with chunked"),
        ([b"identity"], "does not end with chunked"),
        ([b"xchunked"], "does not end with chunked"),
        ([b"chunked, chunked"], "more than once"),
        ([b"chunked", b"chunked"], "more than once"),
        ([b"chunked, gzip, chunked"], "more than once"),
        ([b"chunked;ext=1"], "chunked takes no parameters"),
        ([b"gzip, chunked;q=1"], "chunked takes no parameters"),
        ([b"\t\t\t\tchunked;custom_param;\t\t\t\t"], "malformed"),  # corpus "Compliant"
        ([b"   gzip   ;   ", b"deflate\t\t;\t\t", b"chunked"], "malformed"),
        ([b"gzip;a", b"chunked"], "malformed"),
        ([b"gzip;a=", b"chunked"], "malformed"),
        ([b'gzip;a="open, chunked'], "malformed"),
        ([b"gzip;=b, chunked"], "malformed"),
        ([b""], "malformed"),
        ([b"gzip", b"", b"chunked"], "malformed"),
        ([b"gzip,,chunked"], "malformed"),
        ([b", chunked"], "malformed"),
        ([b"gzip, chunked,"], "malformed"),
        ([b"gz ip, chunked"], "malformed"),
        ([b"gzip\x80, chunked"], "malformed"),
        ([b"g(z)ip, chunked"], "malformed"),
        ([b"gzip chunked"], "malformed"),
        ([b"chunked\x0b"], "malformed"),
        ([b"chunked\t"], "ends with a tab"),  # llhttp: not chunked
        ([b"gzip, chunked \t "], "ends with a tab"),
    ],
)
def test_request_transfer_encoding_anything_else_is_refused(values: list[bytes], why: str) -> None:
    with pytest.raises(HeadRejected, match=why) as info:
        parse_request_transfer_encoding(values)
    assert info.value.status == 400 and info.value.error == "http_request_error"


def test_request_with_coding_list_is_forwarded_with_one_normalized_field() -> None:
    head = req(
        [HOST, (b"Transfer-Encoding", b"GZIP"), (b"X-A", b"1"), (b"Transfer-Encoding", b"chunked")],
        method=b"POST",
    )
    assert head.chunked and head.content_length is None
    assert head.transfer_encoding == b"gzip, chunked"
    wire = render_request_head(head, b"1.1 n", None)
    assert wire == (
        b"POST /p HTTP/1.1\r\nhost: orders\r\nX-A: 1\r\nvia: 1.1 n\r\n"
        b"transfer-encoding: gzip, chunked\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("headers", "version", "why"),
    [
        ([(b"Transfer-Encoding", b"gzip, chunked")], "1.0", "HTTP/1.0"),
        ([(b"Transfer-Encoding", b"gzip"), (b"Transfer-Encoding", b"chunked")], "1.0", "HTTP/1.0"),
        ([(b"Transfer-Encoding", b"gzip, chunked"), (b"Content-Length", b"4")], "1.1", "both"),
        ([(b"Content-Length", b"4"), (b"Transfer-Encoding", b"gzip, chunked")], "1.1", "both"),
        ([(b"Transfer-Encoding", b"chunked, gzip")], "1.1", "does not end with chunked"),
    ],
)
def test_coding_lists_keep_the_other_framing_rules(headers: H, version: str, why: str) -> None:
    err = rejected([HOST, *headers], method=b"POST", version=version)
    assert why in err.details


def test_response_transfer_encoding_stays_exactly_chunked() -> None:
    # Response bodies are re-framed downstream as plain chunked: a coding would be lost.
    with pytest.raises(HeadRejected) as info:
        resp(200, [(b"Transfer-Encoding", b"gzip, chunked")])
    assert info.value.status == 502


# Responses (check_transfer_encoding): exactly chunked.
@pytest.mark.parametrize("values", [[b"chunked"], [b"Chunked"], [b" CHUNKED "]])
def test_transfer_encoding_exactly_chunked(values: list[bytes]) -> None:
    check_transfer_encoding(values)


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ([b"gzip, chunked"], "unsupported transfer coding"),
        ([b"gzip", b"chunked"], "unsupported transfer coding"),
        ([b"chunked, chunked"], "more than once"),
        ([b"chunked", b"chunked"], "more than once"),
        ([b"chunked, gzip"], "not chunked"),
        ([b"xchunked"], "not chunked"),
        ([b"chunked;ext"], "not chunked"),
        ([b"identity"], "not chunked"),
        ([b""], "not chunked"),
        ([b"chunked\t"], "tab"),
        ([b"\tchunked"], "tab"),
    ],
)
def test_transfer_encoding_anything_else_is_refused(values: list[bytes], why: str) -> None:
    with pytest.raises(HeadRejected, match=why):
        check_transfer_encoding(values)


@pytest.mark.parametrize(
    "name", [b"x-ok", b"My-Custom-Header.!#$%&'*+^_`|~0123456789", b"My_Header", b"Transfer---X"]
)
def test_field_names_that_are_tokens_pass(name: bytes) -> None:
    assert field_name_error(name) is None


@pytest.mark.parametrize(
    "name",
    [
        b"",
        b"Transfer-Encoding ",
        b" Content-Length",
        b"Transfer- Encoding",
        b"\x01Content-Length",
        b"Some-Header\x00",
        b"a:b",
        b"X\r",
        "Tran\u017ffer-Encoding".encode(),
        b"Transfer_Encoding",
        b"content__length",
        b"Content_Length",
        b"Proxy_Connection",
        b"Keep_Alive",
    ],
)
def test_field_names_that_are_not_tokens_or_alias_framing_fail(name: bytes) -> None:
    assert field_name_error(name) is not None


@pytest.mark.parametrize("value", [b"", b"plain", b"\t\tows\t", b"obs-text \x80\xff", b"a\tb"])
def test_field_values_allowed(value: bytes) -> None:
    assert field_value_error(b"x", value) is None


@pytest.mark.parametrize("value", [b"a\rb", b"a\nb", b"a\x00", b"\x01", b"\x7f", b"a\r\n b"])
def test_field_values_with_ctl_fail(value: bytes) -> None:
    assert field_value_error(b"x", value) is not None


# -- request heads ---------------------------------------------------------------------------


def test_a_plain_request_is_normalized() -> None:
    head = req([HOST, (b"Accept", b"*/*"), (b"Content-Length", b" 5 ")], method=b"POST")
    assert head.host == b"orders"
    assert head.content_length == 5 and not head.chunked
    assert head.headers == [(b"Accept", b"*/*")]
    assert head.path == "/p" and head.target == b"/p"
    assert head.has_body


@pytest.mark.parametrize(
    ("headers", "kw", "why"),
    [
        ([HOST, (b"Content-Length", b"1"), (b"Transfer-Encoding", b"chunked")], {}, "both"),
        ([HOST, (b"Transfer-Encoding", b"chunked")], {"version": "1.0"}, "HTTP/1.0"),
        ([HOST], {"version": "0.9"}, "version"),
        ([HOST], {"version": "1.2"}, "version"),
        ([HOST], {"version": "2.0"}, "version"),
        ([], {}, "missing Host"),
        ([(b"Host", b"")], {}, "empty Host"),
        ([HOST, HOST], {}, "multiple Host"),
        ([(b"Host", b"a b")], {}, "invalid host"),
        ([(b"Host", b"a,b")], {}, "invalid host"),
        ([HOST, (b"Transfer_Encoding", b"chunked")], {}, "framing"),
        ([HOST, (b"X-A", b"a\r\n b")], {}, "invalid character"),
        ([HOST, (b"X A", b"1")], {}, "invalid character"),
        ([HOST], {"target": b"http://user@orders/"}, "userinfo"),
        ([HOST], {"target": b"https://orders/"}, "https"),
        ([HOST], {"target": b"orders:80"}, "origin-form"),
        ([HOST], {"target": b"*"}, "origin-form"),
        ([HOST], {"target": b"http:///x"}, "without a host"),
        (
            [
                HOST,
                (b"Connection", b"upgrade"),
                (b"Upgrade", b"websocket"),
                (b"Content-Length", b"3"),
            ],
            {},
            "Upgrade request must not carry a body",
        ),
    ],
)
def test_ambiguous_or_malformed_requests_are_refused(headers: H, kw: dict, why: str) -> None:
    err = rejected(headers, **kw)
    assert why in err.details
    assert err.status == 400 and err.error == "http_request_error"


def test_connect_is_not_implemented() -> None:
    err = rejected([HOST], method=b"CONNECT", target=b"orders:443")
    assert err.status == 501


def test_http10_needs_no_host() -> None:
    head = req([], version="1.0")
    assert head.host == b""


def test_options_asterisk_is_accepted() -> None:
    assert req([HOST], method=b"OPTIONS", target=b"*").target == b"*"


@pytest.mark.parametrize(
    ("target", "origin", "host"),
    [
        (b"http://orders/a/b?c=d", b"/a/b?c=d", b"orders"),
        (b"HTTP://Orders:8080/x", b"/x", b"Orders:8080"),
        (b"http://orders", b"/", b"orders"),
        (b"http://orders?q=1", b"/?q=1", b"orders"),
        (b"http://[::1]:80/v", b"/v", b"[::1]:80"),
    ],
)
def test_absolute_form_is_rewritten_and_wins_over_host(
    target: bytes, origin: bytes, host: bytes
) -> None:
    head = req([(b"Host", b"ignored")], target=target)
    assert head.target == origin and head.host == host and head.absolute_form


def test_hop_by_hop_fields_are_dropped_and_end_to_end_kept() -> None:
    head = req(
        [
            HOST,
            (b"Connection", b"keep-alive, X-Secret, TE"),
            (b"X-Secret", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"TE", b"trailers"),
            (b"Trailer", b"x-t"),
            (b"Upgrade", b"websocket"),
            (b"traceparent", b"00-abc-def-01"),
            (b"x-request-id", b"rid-1"),
            (b"Via", b"1.0 a"),
            (b"Via", b"1.1 b"),
            (b"Expect", b"100-Continue"),
        ]
    )
    assert head.headers == [
        (b"traceparent", b"00-abc-def-01"),
        (b"x-request-id", b"rid-1"),
        (b"Expect", b"100-Continue"),
    ]
    assert head.upgrade is None  # no "upgrade" in Connection
    assert head.te_trailers is False  # Connection named TE
    assert head.request_id == b"rid-1"
    assert head.via == b"1.0 a, 1.1 b"
    assert head.expect_continue


def test_te_trailers_is_kept() -> None:
    assert req([HOST, (b"TE", b"trailers")]).te_trailers


def test_websocket_upgrade_is_kept_h2c_is_not() -> None:
    ws = req([HOST, (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")])
    assert ws.upgrade == b"websocket"
    h2c = req([HOST, (b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", b"h2c")])
    assert h2c.upgrade is None


@pytest.mark.parametrize(
    ("target", "path"),
    [(b"/a?b#c", "/a"), (b"/a#c?d", "/a"), (b"/", "/"), (b"*", "*"), (b"/%20x", "/%20x")],
)
def test_path_of(target: bytes, path: str) -> None:
    assert path_of(target) == path


def test_render_request_head() -> None:
    head = req(
        [HOST, (b"Transfer-Encoding", b"chunked"), (b"Via", b"1.0 a"), (b"X-A", b"1")],
        method=b"POST",
        target=b"http://orders:80/x?y",
    )
    assert render_request_head(head, b"1.1 n", b"rid") == (
        b"POST /x?y HTTP/1.1\r\nhost: orders:80\r\nX-A: 1\r\nvia: 1.0 a, 1.1 n\r\n"
        b"x-request-id: rid\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    ws = req([HOST, (b"Connection", b"upgrade"), (b"Upgrade", b"websocket"), (b"TE", b"trailers")])
    assert render_request_head(ws, b"1.1 n", None) == (
        b"GET /p HTTP/1.1\r\nhost: orders\r\nvia: 1.1 n\r\nte: trailers\r\n"
        b"connection: upgrade\r\nupgrade: websocket\r\n\r\n"
    )


# -- response heads --------------------------------------------------------------------------


def resp(
    status: int,
    headers: H,
    method: bytes = b"GET",
    version: str = "1.1",
    keep_alive: bool = True,
):
    return parse_response_head(
        status,
        b"R",
        headers,
        request_method=method,
        downstream_version=version,
        downstream_keep_alive=keep_alive,
    )


CL5 = [(b"Content-Length", b"5")]
TE = [(b"Transfer-Encoding", b"chunked")]


@pytest.mark.parametrize(
    ("status", "headers", "method", "version", "body", "close"),
    [
        (200, CL5, b"GET", "1.1", BODY_LENGTH, False),
        (200, TE, b"GET", "1.1", BODY_CHUNKED, False),
        (200, [], b"GET", "1.1", BODY_CHUNKED, False),  # close-delimited upstream
        (200, TE, b"GET", "1.0", BODY_CLOSE, True),
        (200, [], b"GET", "1.0", BODY_CLOSE, True),
        (200, CL5, b"GET", "1.0", BODY_LENGTH, False),
        (200, CL5, b"HEAD", "1.1", BODY_NONE, False),
        (204, [], b"GET", "1.1", BODY_NONE, False),
        (304, CL5, b"GET", "1.1", BODY_NONE, False),
        (101, [], b"GET", "1.1", BODY_NONE, False),
    ],
)
def test_response_framing_table(
    status: int, headers: H, method: bytes, version: str, body: int, close: bool
) -> None:
    head = resp(status, headers, method, version)
    assert (head.downstream_body, head.close_downstream) == (body, close)


@pytest.mark.parametrize(
    "headers",
    [
        [*CL5, *TE],
        [(b"Content-Length", b"5"), (b"Content-Length", b"5")],
        [(b"Content-Length", b"x")],
        [(b"Transfer-Encoding", b"gzip")],
        [(b"X-A", b"a\nb")],
    ],
)
def test_bad_upstream_responses_are_a_502(headers: H) -> None:
    with pytest.raises(HeadRejected) as info:
        resp(200, headers)
    assert info.value.status == 502 and info.value.error == "http_protocol_error"


def test_render_response_head_keeps_end_to_end_and_appends_via() -> None:
    head = resp(
        200,
        [
            (b"Content-Length", b"5"),
            (b"Connection", b"keep-alive, X-Hop"),
            (b"X-Hop", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Via", b"1.1 app"),
            (b"Proxy-Status", b'"a"; error=dns_error'),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ],
    )
    assert head.proxy_status == b'"a"; error=dns_error'
    out = render_response_head(head, b"1.1 n", b"X", downstream_version="1.1")
    assert out == (
        b"HTTP/1.1 200 R\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nvia: 1.1 app, 1.1 n\r\n"
        b"proxy-status: X\r\ncontent-length: 5\r\n\r\n"
    )


def test_render_response_head_connection_fields() -> None:
    assert b"connection: close\r\n" in render_response_head(
        resp(200, CL5, keep_alive=False), b"v", None, downstream_version="1.1"
    )
    assert b"connection: keep-alive\r\n" in render_response_head(
        resp(200, CL5, version="1.0"), b"v", None, downstream_version="1.0"
    )
    switched = resp(101, [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")])
    out = render_response_head(switched, b"v", None, downstream_version="1.1")
    assert b"connection: upgrade\r\nupgrade: websocket\r\n" in out
    assert b"content-length" not in out


def test_interim_and_trailers() -> None:
    assert render_interim(100, b"Continue", [(b"Connection", b"x")]) == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    assert render_last_chunk([]) == LAST_CHUNK
    assert render_last_chunk(
        [(b"x-checksum", b"1"), (b"Content-Length", b"9"), (b"Transfer-Encoding", b"x")]
    ) == (b"0\r\nx-checksum: 1\r\n\r\n")


# -- properties ------------------------------------------------------------------------------

_names = st.one_of(
    st.sampled_from(
        [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade", b"TE",
         b"Via", b"X-A", b"Keep-Alive", b"Transfer_Encoding", b"Trailer", b"Expect"]
    ),
    st.binary(max_size=12),
)  # fmt: skip
_values = st.one_of(
    st.sampled_from([b"chunked", b"5", b" 7 ", b"orders", b"upgrade", b"websocket", b"x, y"]),
    st.binary(max_size=12),
)
_heads = st.lists(st.tuples(_names, _values), max_size=8)


class _Collect:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.body = b""
        self.complete = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1


@settings(max_examples=400, deadline=None)
@given(
    headers=_heads,
    method=st.sampled_from([b"GET", b"POST", b"HEAD", b"CONNECT"]),
    target=st.sampled_from([b"/a?b", b"http://h:1/x", b"*", b"https://h/", b"h:1"]),
    version=st.sampled_from(["1.1", "1.0", "0.9"]),
)
def test_any_head_parses_or_is_rejected_and_renders_unambiguously(
    headers: H, method: bytes, target: bytes, version: str
) -> None:
    try:
        head = parse_request_head(method, target, version, headers, keep_alive=True)
    except HeadRejected as err:
        assert err.status in (400, 501)
        return
    wire = render_request_head(head, b"1.1 node", b"rid")
    collect = _Collect()
    parser = httptools.HttpRequestParser(collect)
    try:
        parser.feed_data(wire)
    except httptools.HttpParserUpgrade:
        assert head.upgrade is not None
    names = [n.lower() for n, _ in collect.headers]
    assert names[0] == b"host" and names.count(b"host") == 1
    assert names.count(b"content-length") + names.count(b"transfer-encoding") <= 1
    assert b"keep-alive" not in names and b"trailer" not in names
    assert collect.url == head.target
    for _, value in collect.headers:
        assert b"\r" not in value and b"\n" not in value and b"\x00" not in value


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.binary(min_size=1, max_size=300), max_size=8), bytewise=st.booleans())
def test_rechunked_bodies_parse_back_identically(pieces: list[bytes], bytewise: bool) -> None:
    wire = b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
    wire += b"".join(chunk_prefix(len(p)) + p + b"\r\n" for p in pieces) + LAST_CHUNK
    collect = _Collect()
    parser = httptools.HttpRequestParser(collect)
    if bytewise:
        for i in range(len(wire)):
            parser.feed_data(wire[i : i + 1])
    else:
        parser.feed_data(wire)
    assert collect.body == b"".join(pieces)
    assert collect.complete == 1


_te_token = st.one_of(
    st.sampled_from([b"chunked", b"Chunked", b"CHUNKED", b"gzip", b"deflate", b"identity",
                     b"compress", b"xchunked", b"chunk", b"x-y"]),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~", min_size=1, max_size=6).map(
        str.encode
    ),
)  # fmt: skip
_te_ows = st.sampled_from([b"", b" ", b"\t", b" \t "])
_te_param_value = st.one_of(
    _te_token,
    st.sampled_from([b'""', b'"a, chunked"', b'"x\\"y"', b'"\xe9;,"', b'"open', b"a b"]),
)
_te_param = st.builds(
    lambda o1, name, o2, o3, value: o1 + b";" + o2 + name + o3 + b"=" + value,
    _te_ows, _te_token, _te_ows, _te_ows, _te_param_value,
)  # fmt: skip
_te_element = st.one_of(
    st.builds(
        lambda o1, tok, params, o2: o1 + tok + b"".join(params) + o2,
        _te_ows, _te_token, st.lists(_te_param, max_size=2), _te_ows,
    ),
    st.sampled_from([b"", b" ", b";", b"chunked;", b"a;b", b"\x80", b"chun ked"]),
)  # fmt: skip
_te_field = st.lists(_te_element, min_size=1, max_size=4).map(b",".join)


def _chunked_last(elements: list[bytes], last: bytes, split: int) -> list[bytes]:
    items = [*elements, last]  # mostly well-formed, ending in chunked: often accepted
    if 0 < split < len(items):
        return [b",".join(items[:split]), b",".join(items[split:])]
    return [b",".join(items)]


_te_values = st.one_of(
    st.lists(_te_field, min_size=1, max_size=3),
    st.builds(
        _chunked_last,
        st.lists(_te_element, max_size=4),
        st.sampled_from([b"chunked", b" Chunked ", b"\tCHUNKED", b"chunked\t", b"chunked;a=b"]),
        st.integers(0, 4),
    ),
)


def _llhttp_body(te_lines: list[bytes], body: bytes) -> tuple[bytes, int] | None:
    """What llhttp makes of a POST with these Transfer-Encoding lines and a chunked body,
    followed by a GET: (body, messages completed), or None if it refuses the request."""
    wire = b"POST / HTTP/1.1\r\nhost: h\r\n"
    wire += b"".join(b"transfer-encoding: " + v + b"\r\n" for v in te_lines)
    wire += b"\r\n" + chunk_prefix(len(body)) + body + b"\r\n" + LAST_CHUNK
    wire += b"GET /next HTTP/1.1\r\nhost: h\r\n\r\n"
    collect = _Collect()
    try:
        httptools.HttpRequestParser(collect).feed_data(wire)
    except httptools.HttpParserError:
        return None
    return collect.body, collect.complete


@settings(max_examples=600, deadline=None)
@given(values=_te_values)
def test_accepted_transfer_encoding_ends_with_one_chunked_and_llhttp_agrees(
    values: list[bytes],
) -> None:
    try:
        forwarded = parse_request_transfer_encoding(values)
    except HeadRejected as err:
        assert err.status == 400
        return
    names = [name for name, _ in transfer_codings(values)]
    assert names[-1] == b"chunked" and names.count(b"chunked") == 1
    # The normalized value says the same, and normalizing it again changes nothing.
    assert [n for n, _ in transfer_codings([forwarded])] == names
    assert parse_request_transfer_encoding([forwarded]) == forwarded
    # llhttp (downstream, as received) and the upstream (as forwarded) both read the body
    # as chunked: the proxy and either parser agree on where the request ends.
    assert _llhttp_body(values, b"hello") == (b"hello", 2)
    assert _llhttp_body([forwarded], b"hello") == (b"hello", 2)


@settings(max_examples=300, deadline=None)
@given(values=_te_values)
def test_when_llhttp_does_not_read_chunked_we_refuse(values: list[bytes]) -> None:
    # The other direction: whatever llhttp does not frame as chunked, we never accept.
    if _llhttp_body(values, b"hello") != (b"hello", 2):
        with pytest.raises(HeadRejected):
            parse_request_transfer_encoding(values)
