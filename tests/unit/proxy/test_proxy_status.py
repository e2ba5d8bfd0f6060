"""Proxy-Status (RFC 9209 over RFC 8941 structured fields) and local responses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.proxy import proxy_status as ps

# --- constants -------------------------------------------------------------------------


def test_error_types_are_tokens_and_have_statuses() -> None:
    for error in ps.ERROR_TYPES:
        assert ps._is_token(error), error
        ps.entry("h", error)  # accepted
    assert set(ps.STATUS_FOR) == ps.ERROR_TYPES - {ps.PROXY_INTERNAL_RESPONSE}


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ps.DESTINATION_NOT_FOUND, 404),  # no route: 404, as Envoy (the RFC says 500)
        (ps.DESTINATION_UNAVAILABLE, 503),
        (ps.CONNECTION_REFUSED, 502),
        (ps.CONNECTION_TERMINATED, 502),
        (ps.CONNECTION_TIMEOUT, 504),
        (ps.CONNECTION_READ_TIMEOUT, 504),
        (ps.CONNECTION_LIMIT_REACHED, 503),
        (ps.HTTP_RESPONSE_TIMEOUT, 504),
        (ps.HTTP_REQUEST_ERROR, 400),
        (ps.HTTP_REQUEST_DENIED, 403),
        (ps.HTTP_PROTOCOL_ERROR, 502),
        (ps.HTTP_RESPONSE_INCOMPLETE, 502),
        (ps.PROXY_INTERNAL_ERROR, 500),
        (ps.PROXY_LOOP_DETECTED, 502),
        (ps.DNS_ERROR, 502),
        (ps.DNS_TIMEOUT, 504),
    ],
)
def test_status_for(error: str, status: int) -> None:
    assert ps.STATUS_FOR[error] == status


def test_rfc_status_keeps_the_rfc_recommendation() -> None:
    assert ps.RFC_STATUS[ps.DESTINATION_NOT_FOUND] == 500


# --- formatting ------------------------------------------------------------------------


def test_hop_name() -> None:
    assert ps.hop_name("host-a", "outbound") == "host-a/outbound"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, '"host-a/outbound"'),
        ({"error": "connection_refused"}, '"host-a/outbound"; error=connection_refused'),
        (
            {
                "error": "connection_refused",
                "details": "connect: Connection refused",
                "received_status": 503,
                "next_hop": "10.0.0.2:8080",
            },
            '"host-a/outbound"; error=connection_refused; next-hop="10.0.0.2:8080"; '
            'received-status=503; details="connect: Connection refused"',
        ),
        ({"received_status": 200}, '"host-a/outbound"; received-status=200'),
        ({"details": ""}, '"host-a/outbound"'),  # empty details are left out
        ({"details": 'say "hi" \\ bye'}, '"host-a/outbound"; details="say \\"hi\\" \\\\ bye"'),
        ({"details": "line1\nline2\ttab\r"}, '"host-a/outbound"; details="line1 line2 tab "'),
        ({"details": "caf\u00e9 \u2603 \x00\x7f"}, '"host-a/outbound"; details="caf? ? ??"'),
    ],
)
def test_entry(kwargs: dict[str, object], expected: str) -> None:
    assert ps.entry("host-a/outbound", **kwargs) == expected  # type: ignore[arg-type]


def test_entry_escapes_the_hop() -> None:
    assert ps.entry('we"ird\\hop\n') == '"we\\"ird\\\\hop "'


def test_entry_cuts_long_details() -> None:
    value = ps.entry("h", details="x" * 10_000)
    assert len(value) < ps.MAX_DETAILS + 20
    assert ps.parse(value)[0][1]["details"] == "x" * ps.MAX_DETAILS


@pytest.mark.parametrize("error", ["", "Not A Token", "1abc", "a,b", "\u00e9"])
def test_entry_refuses_a_non_token_error(error: str) -> None:
    with pytest.raises(ValueError, match="not an sf-token"):
        ps.entry("h", error)


def test_entry_accepts_an_unregistered_token() -> None:
    assert ps.entry("h", "x_vendor_error") == '"h"; error=x_vendor_error'


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (None, '"b"'),
        ("", '"b"'),
        ("  ", '"b"'),
        ('"a"; error=dns_error', '"a"; error=dns_error, "b"'),
        ("FooProxy, ExampleCDN", 'FooProxy, ExampleCDN, "b"'),
        ("a, ", 'a, "b"'),
    ],
)
def test_append(existing: str | None, expected: str) -> None:
    assert ps.append(existing, '"b"') == expected


def test_append_bytes() -> None:
    assert ps.append(b"a", b'"b"') == b'a, "b"'
    assert ps.append(None, b'"b"') == b'"b"'
    with pytest.raises(TypeError):
        ps.append(b"a", '"b"')  # type: ignore[call-overload]


# --- parsing: the examples of RFC 9209 --------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("FooProxy, ExampleCDN", [("FooProxy", {}), ("ExampleCDN", {})]),
        ("SomeOtherProxy, ThisProxy", [("SomeOtherProxy", {}), ("ThisProxy", {})]),
        ("ThisProxy; error=read_timeout", [("ThisProxy", {"error": "read_timeout"})]),
        ("SomeCDN; error=connection_timeout", [("SomeCDN", {"error": "connection_timeout"})]),
        (
            "SomeReverseProxy; error=http_request_error, SomeCDN",
            [("SomeReverseProxy", {"error": "http_request_error"}), ("SomeCDN", {})],
        ),
        (
            "cdn.example.org; next-hop=backend.example.org:8001",
            [("cdn.example.org", {"next-hop": "backend.example.org:8001"})],
        ),
        ('"proxy.example.org"; next-protocol=h2', [("proxy.example.org", {"next-protocol": "h2"})]),
        ("ExampleProxy; received-status=200", [("ExampleProxy", {"received-status": 200})]),
        (
            'ExampleProxy; error="http_protocol_error";\n'
            '              details="Malformed response header - space before colon"',
            [
                (
                    "ExampleProxy",
                    {
                        "error": "http_protocol_error",
                        "details": "Malformed response header - space before colon",
                    },
                )
            ],
        ),
    ],
)
def test_parse_rfc9209_examples(value: str, expected: list[object]) -> None:
    assert ps.parse(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # RFC 8941 canonical serialization: no space after ";"
        ('"a";error=dns_error;details="x"', [("a", {"error": "dns_error", "details": "x"})]),
        # every bare item type as a parameter value
        (
            'a;i=-12;d=1.5;t=tok/en:x;s="q\\"\\\\";b=:aGk=:;y=?1;n=?0;flag',
            [
                (
                    "a",
                    {
                        "i": -12,
                        "d": "1.5",
                        "t": "tok/en:x",
                        "s": 'q"\\',
                        "b": "aGk=",
                        "y": True,
                        "n": False,
                        "flag": True,
                    },
                )
            ],
        ),
        ('a;d=%"caf%c3%a9"', [("a", {"d": "caf\u00e9"})]),
        # tolerance: bad members are skipped, good ones kept
        ("b@d; x, good", [("good", {})]),
        ('stray"quote, "x, y"', []),  # an open string swallows the rest
        ('(inner list), "b"', [("b", {})]),
        ("a;;, b", [("b", {})]),
        ('a; d="unterminated, b', []),
        ('a; d="x, y", b', [("a", {"d": "x, y"}), ("b", {})]),
        ("a b, c", [("c", {})]),
        ("a;=1, c", [("c", {})]),
        ("a;k=, c", [("c", {})]),
        ("a;k=?, c", [("c", {})]),
        ("a;k=-, c", [("c", {})]),
        ("a;k=:abc, c", [("c", {})]),
        ('a;k="\\', []),
        ("a;K=1", [("a", {"k": 1})]),
        (", , a,,", [("a", {})]),
        ("", []),
        (None, []),
        (b'"h"; error=dns_error', [("h", {"error": "dns_error"})]),
        ("12;x=1", [("12", {"x": 1})]),
    ],
)
def test_parse_is_tolerant(value: str | bytes | None, expected: list[object]) -> None:
    assert ps.parse(value) == expected


# --- properties ------------------------------------------------------------------------


def expected_text(text: str, limit: int) -> str:
    out = []
    for c in text:
        if c in "\t\r\n":
            out.append(" ")
        elif " " <= c <= "~":
            out.append(c)
        else:
            out.append("?")
    return "".join(out)[:limit]


@settings(max_examples=300, deadline=None)
@given(
    hop=st.text(min_size=0, max_size=200),
    error=st.one_of(st.none(), st.sampled_from(sorted(ps.ERROR_TYPES))),
    details=st.one_of(st.none(), st.text(max_size=400)),
    received_status=st.one_of(st.none(), st.integers(min_value=100, max_value=599)),
    next_hop=st.one_of(st.none(), st.text(max_size=50)),
)
def test_parse_entry_round_trip(
    hop: str,
    error: str | None,
    details: str | None,
    received_status: int | None,
    next_hop: str | None,
) -> None:
    value = ps.entry(hop, error, details, received_status, next_hop)
    assert value.isascii() and value.isprintable()  # one valid header line
    params: dict[str, str | int] = {}
    if error is not None:
        params["error"] = error
    if next_hop is not None:
        params["next-hop"] = expected_text(next_hop, ps.MAX_NAME)
    if received_status is not None:
        params["received-status"] = received_status
    if details:
        params["details"] = expected_text(details, ps.MAX_DETAILS)
    assert ps.parse(value) == [(expected_text(hop, ps.MAX_NAME), params)]
    assert ps.sanitize(hop, ps.MAX_NAME) == expected_text(hop, ps.MAX_NAME)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_parse_never_raises(value: str) -> None:
    result = ps.parse(value)
    assert isinstance(result, list)


@settings(max_examples=200, deadline=None)
@given(
    hops=st.lists(st.text(max_size=20), min_size=1, max_size=4),
    details=st.lists(st.text(max_size=40), min_size=4, max_size=4),
)
def test_append_keeps_the_chain_in_order(hops: list[str], details: list[str]) -> None:
    value: str | None = None
    for hop, detail in zip(hops, details, strict=False):
        value = ps.append(value, ps.entry(hop, ps.CONNECTION_REFUSED, detail))
    assert [h for h, _ in ps.parse(value)] == [expected_text(h, ps.MAX_NAME) for h in hops]


# --- local responses -------------------------------------------------------------------


def split_response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        assert name not in headers, f"duplicate {name}"
        headers[name] = value
    return lines[0], headers, body


def test_local_response() -> None:
    raw = ps.local_response(
        503,
        "",
        "host-a/outbound",
        ps.DESTINATION_UNAVAILABLE,
        "no healthy endpoint in cluster outbound|orders",
        "1.1 host-a",
        "req-1",
        True,
    )
    body = (
        b"host-a/outbound: destination_unavailable: "
        b"no healthy endpoint in cluster outbound|orders\n"
    )
    assert raw == (
        b"HTTP/1.1 503 Service Unavailable\r\n"
        b"content-type: text/plain\r\n"
        + f"content-length: {len(body)}\r\n".encode()
        + b'proxy-status: "host-a/outbound"; error=destination_unavailable; '
        b'details="no healthy endpoint in cluster outbound|orders"\r\n'
        b"via: 1.1 host-a\r\n"
        b"x-request-id: req-1\r\n"
        b"connection: close\r\n"
        b"\r\n" + body
    )


def test_local_response_without_optional_headers() -> None:
    raw = ps.local_response(
        404, "Not Found", "h/inbound", ps.DESTINATION_NOT_FOUND, "", "", None, False
    )
    status, headers, body = split_response(raw)
    assert status == "HTTP/1.1 404 Not Found"
    assert set(headers) == {"content-type", "content-length", "proxy-status"}
    assert body == b"h/inbound: destination_not_found\n"
    assert int(headers["content-length"]) == len(body)


def test_local_response_head_and_next_hop() -> None:
    raw = ps.local_response(
        502,
        "",
        "h/outbound",
        ps.CONNECTION_REFUSED,
        "refused",
        "1.1 h",
        None,
        False,
        next_hop="10.0.0.2:8080",
        head=True,
    )
    status, headers, body = split_response(raw)
    assert status == "HTTP/1.1 502 Bad Gateway"
    assert body == b""
    assert int(headers["content-length"]) == len(b"h/outbound: connection_refused: refused\n")
    assert ps.parse(headers["proxy-status"]) == [
        (
            "h/outbound",
            {"error": "connection_refused", "next-hop": "10.0.0.2:8080", "details": "refused"},
        )
    ]


def test_local_response_cannot_be_split_by_its_inputs() -> None:
    raw = ps.local_response(
        400,
        "Bad\r\nX: 1",
        "h\r\nset-cookie: a=b",
        ps.HTTP_REQUEST_ERROR,
        "bad \u00e9\r\n\r\nHTTP/1.1 200 OK",
        "1.1 h\r\nx: y",
        "id\r\nx-injected: 1",
        False,
    )
    status, headers, body = split_response(raw)
    assert status == "HTTP/1.1 400 Bad  X: 1"
    assert set(headers) == {"content-type", "content-length", "proxy-status", "via", "x-request-id"}
    assert body.count(b"\n") == 1
    assert int(headers["content-length"]) == len(body)


def test_local_response_unknown_status_phrase_and_bad_status() -> None:
    assert ps.local_response(
        599, "", "h", ps.PROXY_INTERNAL_ERROR, "x", "", None, False
    ).startswith(b"HTTP/1.1 599 Unknown\r\n")
    with pytest.raises(ValueError, match="three-digit"):
        ps.local_response(42, "", "h", ps.PROXY_INTERNAL_ERROR, "x", "", None, False)
    with pytest.raises(ValueError, match="sf-token"):
        ps.local_response(500, "", "h", "not a token", "x", "", None, False)
