"""HTTP/1.1 response heads: validation and downstream framing, as pure functions.

Part of :mod:`plait.proxy.http1_checks` (whose docstring states the rules and which
re-exports every name): :func:`parse_response_head` checks an upstream's response head and
decides how its body travels downstream (``BODY_*``), :func:`render_response_head` and
:func:`render_interim` build what is sent downstream. Shared pieces live in
:mod:`~plait.proxy.http1_checks_common`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from plait.proxy.http1_checks_common import (
    _CONNECTION,
    _CONNECTION_PLAIN,
    _CONTENT_LENGTH,
    _EXPECT,
    _FIELD_LINE,
    _HOST,
    _OWS,
    _PROXY_STATUS,
    _REQUEST_ID,
    _SPECIAL,
    _TRANSFER_ENCODING,
    _UPGRADE,
    _VIA,
    CRLF,
    HeadRejected,
    _comma_tokens,
    _upstream_fault,
    check_field_chars,
    parse_content_length,
)

_NO_BODY_STATUS: Final = frozenset([204, 304])

# How a response body travels downstream.
BODY_NONE: Final = 0  # no body (HEAD, 204, 304)
BODY_LENGTH: Final = 1  # Content-Length, bytes passed through
BODY_CHUNKED: Final = 2  # re-chunked by the proxy
BODY_CLOSE: Final = 3  # delimited by closing the downstream connection (HTTP/1.0 peer)


def check_transfer_encoding(values: list[bytes]) -> None:
    """A response's Transfer-Encoding: accept exactly ``chunked`` (one field, one coding);
    raise HeadRejected otherwise. Requests use :func:`parse_request_transfer_encoding`.

    A tab next to the coding is valid OWS for RFC 9112, but llhttp then reads the body as
    not chunked: the two would disagree on framing, so it is refused."""
    if any(b"\t" in v for v in values):
        raise HeadRejected("Transfer-Encoding contains a tab; parsers disagree on its framing")
    codings = [c.strip(_OWS).lower() for v in values for c in v.split(b",")]
    if codings == [b"chunked"]:
        return
    if codings.count(b"chunked") > 1:
        raise HeadRejected("Transfer-Encoding applies chunked more than once")
    if codings and codings[-1] == b"chunked":
        others = b", ".join(codings[:-1]).decode("latin-1")
        raise HeadRejected(f"unsupported transfer coding {others!r} (only chunked is accepted)")
    raise HeadRejected(f"Transfer-Encoding {b', '.join(values).decode('latin-1')!r} is not chunked")


@dataclass(slots=True)
class ResponseHead:
    """A validated upstream response head and how to frame it downstream.

    (The fast path in http1_shapes sets every field directly, without __init__: a new
    field must be set there too.)
    """

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # end-to-end fields, in order
    content_length: int | None
    upstream_chunked: bool
    downstream_body: int  # BODY_*
    close_downstream: bool  # close the downstream connection after this response
    proxy_status: bytes | None = None  # Proxy-Status as received (joined)
    via: bytes | None = None
    upgrade: bytes | None = None  # for 101
    # ``headers`` pre-rendered by the fast path, as in RequestHead.
    fields_wire: bytes = field(default=b"", compare=False, repr=False)
    fields_wire_of: list[tuple[bytes, bytes]] | None = field(
        default=None, compare=False, repr=False
    )


def parse_response_head(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    request_method: bytes,
    downstream_version: str,
    downstream_keep_alive: bool,
) -> ResponseHead:
    """Validate an upstream response head; decide downstream framing.

    Raises :class:`HeadRejected` with 502 / http_protocol_error for a response that must
    not be passed on (ambiguous framing, bad characters).
    """
    forward: list[tuple[bytes, bytes]] = []
    cl_values: list[bytes] = []
    te_values: list[bytes] = []
    connection: list[bytes] = []
    upgrade: list[bytes] = []
    via: list[bytes] = []
    proxy_status: list[bytes] = []
    special = _SPECIAL
    check_field_chars(headers, 502)
    for name, value in headers:
        lname = name.lower()
        kind = special.get(lname)
        if kind is None or kind in (_HOST, _REQUEST_ID, _EXPECT):
            forward.append((name, value))
        elif kind == _CONTENT_LENGTH:
            cl_values.append(value)
        elif kind == _TRANSFER_ENCODING:
            te_values.append(value)
        elif kind == _CONNECTION:
            connection.append(value)
        elif kind == _UPGRADE:
            upgrade.append(value)
        elif kind == _VIA:
            via.append(value)
        elif kind == _PROXY_STATUS:
            proxy_status.append(value)
        # _DROP, _TE: hop-by-hop

    content_length: int | None = None
    chunked = False
    try:
        if te_values:
            if cl_values:
                raise HeadRejected("both Content-Length and Transfer-Encoding")
            check_transfer_encoding(te_values)
            chunked = True
        elif cl_values:
            content_length = parse_content_length(cl_values)
    except HeadRejected as e:
        raise _upstream_fault(f"upstream response: {e.details}") from None

    if connection and not (len(connection) == 1 and connection[0].lower() in _CONNECTION_PLAIN):
        named = {
            t for t in _comma_tokens(connection) if t not in (b"close", b"keep-alive", b"upgrade")
        }
        if named:
            forward = [(n, v) for n, v in forward if n.lower() not in named]

    http10 = downstream_version == "1.0"
    close = not downstream_keep_alive
    if request_method == b"HEAD" or status in _NO_BODY_STATUS or status < 200:
        body = BODY_NONE
    elif content_length is not None:
        body = BODY_LENGTH
    elif http10:
        body = BODY_CLOSE
        close = True
    else:
        body = BODY_CHUNKED
    return ResponseHead(
        status=status,
        reason=reason,
        headers=forward,
        content_length=content_length,
        upstream_chunked=chunked,
        downstream_body=body,
        close_downstream=close,
        proxy_status=b", ".join(proxy_status) if proxy_status else None,
        via=b", ".join(via) if via else None,
        upgrade=b", ".join(upgrade) if upgrade else None,
    )


# "HTTP/1.1 200 ", by status (three digits, so at most 900 entries).
_STATUS_LINES: dict[int, bytes] = {}
# "\r\ncontent-length: 1024", by length (up to 1024 of them; then start over).
_LENGTH_LINES: dict[int, bytes] = {}


def render_response_head(
    head: ResponseHead,
    via: bytes,
    proxy_status: bytes | None,
    *,
    downstream_version: str,
) -> bytes:
    """The head to send downstream; ``proxy_status`` replaces the received value."""
    status = head.status
    try:
        first = _STATUS_LINES[status]
    except KeyError:
        first = b"HTTP/1.1 %d " % status
        if 100 <= status <= 999:
            _STATUS_LINES[status] = first
    # As in render_request_head: pieces start with the CRLF that ends the line before.
    fields = head.headers
    if head.fields_wire_of is fields:
        block = head.fields_wire
    elif fields:
        block = CRLF + CRLF.join(map(_FIELD_LINE, fields))
    else:
        block = b""
    if proxy_status is None:
        proxy_status = head.proxy_status
    body = head.downstream_body
    if body == BODY_LENGTH or (
        body == BODY_NONE and head.content_length is not None and status != 204 and status != 101
    ):
        length = head.content_length or 0
        framing = _LENGTH_LINES.get(length)
        if framing is None:
            framing = b"\r\ncontent-length: %d" % length
            if len(_LENGTH_LINES) >= 1024:
                _LENGTH_LINES.clear()
            _LENGTH_LINES[length] = framing
    elif body == BODY_CHUNKED:
        framing = b"\r\ntransfer-encoding: chunked"
    else:
        framing = b""
    if status == 101:
        connection = b"\r\nconnection: upgrade\r\nupgrade: " + (head.upgrade or b"")
    elif head.close_downstream:
        connection = b"\r\nconnection: close"
    elif downstream_version == "1.0":
        connection = b"\r\nconnection: keep-alive"
    else:
        connection = b""
    received_via = head.via
    return b"".join(
        (
            first,
            head.reason or b"-",
            block,
            b"\r\nvia: ",
            received_via + b", " + via if received_via else via,
            b"" if proxy_status is None else b"\r\nproxy-status: " + proxy_status,
            framing,
            connection,
            b"\r\n\r\n",
        )
    )


def render_interim(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A 1xx interim response (other than 101) relayed downstream, hop-by-hop removed."""
    parts = [b"HTTP/1.1 %d " % status, reason or b"-", CRLF]
    for name, value in headers:
        if name.lower() not in _SPECIAL or name.lower() in (b"x-request-id", b"proxy-status"):
            parts += (name, b": ", value, CRLF)
    parts.append(CRLF)
    return b"".join(parts)
