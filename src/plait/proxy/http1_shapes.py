"""Head checks memoized on the *shape* of a head: the tuple of its field names.

Theory of operation. A client or upstream sends the same field names in the same order
on every message (wrk: ``Host``; nginx: ``Server, Date, Content-Type, Content-Length,
Connection``), and everything :func:`~plait.proxy.http1_checks.parse_request_head` and
:func:`~plait.proxy.http1_checks.parse_response_head` decide per *name* -- is it a token,
is it a framing or hop-by-hop field, does it read as one with ``_`` for ``-``, is it
forwarded -- depends on the names alone. :func:`request_shape` / :func:`response_shape`
work that out once per name tuple (a bounded cache); per message only the value checks
remain: one ``translate`` over all values, the Content-Length digits, the Host
characters, a plain ``Connection`` value.

Only *common* shapes take this path: at most one of each of Host, Content-Length,
x-request-id and Connection (and, in responses, only Content-Length and Connection among
the framing fields); any other framing or hop-relevant field (Transfer-Encoding, Upgrade,
TE, Via, Expect, Proxy-Status, a second Host...) and any value the fast checks do not
accept as plain sends the message through the full functions, which then decide -- and
word the error -- exactly as before. The results are the same objects either way (a
property test compares both paths on random heads).
"""

from __future__ import annotations

from typing import Final

from plait.proxy.http1_checks_common import (
    _CONNECTION,
    _CONNECTION_PLAIN,
    _CONTENT_LENGTH,
    _DROP,
    _EXPECT,
    _FIELD_VALUE_OK,
    _HOST,
    _OWS,
    _REQUEST_ID,
    _SPECIAL,
    _TCHAR,
    _TE,
    MAX_CONTENT_LENGTH_DIGITS,
    HeadRejected,
    _is_alias,
)
from plait.proxy.http1_checks_request import (
    _HOST_OK,
    RequestHead,
    _split_target,
    parse_request_head,
    path_of,
)
from plait.proxy.http1_checks_response import (
    _NO_BODY_STATUS,
    BODY_CHUNKED,
    BODY_CLOSE,
    BODY_LENGTH,
    BODY_NONE,
    ResponseHead,
    parse_response_head,
)

MAX_SHAPES: Final = 512  # distinct name tuples remembered per direction; then start over

# A shape: (index of Host or Content-Length... or -1, ..., indices of forwarded fields)
_ReqShape = tuple[int, int, int, int, tuple[int, ...]]  # host, cl, request_id, conn, fwd
_RespShape = tuple[int, int, tuple[int, ...]]  # cl, conn, forwarded

_request_shapes: dict[tuple[bytes, ...], _ReqShape | None] = {}
_response_shapes: dict[tuple[bytes, ...], _RespShape | None] = {}


def _token(name: bytes) -> bool:
    return bool(name) and not name.translate(None, _TCHAR)


def request_shape(names: tuple[bytes, ...]) -> _ReqShape | None:
    """What the request checks decide from the names alone; None: use the full path."""
    host = cl = rid = conn = -1
    forward: list[int] = []
    for i, name in enumerate(names):
        if not _token(name):
            return None
        lname = name.lower()
        kind = _SPECIAL.get(lname)
        if kind is None:
            if b"_" in lname and _is_alias(lname):
                return None
            forward.append(i)
        elif kind == _HOST and host < 0:
            host = i
        elif kind == _CONTENT_LENGTH and cl < 0:
            cl = i
        elif kind == _REQUEST_ID and rid < 0:
            rid = i
            forward.append(i)
        elif kind == _CONNECTION and conn < 0:
            conn = i
        elif kind != _DROP:
            return None
    if host < 0:
        return None
    return host, cl, rid, conn, tuple(forward)


def response_shape(names: tuple[bytes, ...]) -> _RespShape | None:
    """What the response checks decide from the names alone; None: use the full path."""
    cl = conn = -1
    forward: list[int] = []
    for i, name in enumerate(names):
        if not _token(name):
            return None
        kind = _SPECIAL.get(name.lower())
        if kind is None or kind in (_HOST, _REQUEST_ID, _EXPECT):
            forward.append(i)
        elif kind == _CONTENT_LENGTH and cl < 0:
            cl = i
        elif kind == _CONNECTION and conn < 0:
            conn = i
        elif kind != _DROP and kind != _TE:
            return None
    return cl, conn, tuple(forward)


def _content_length(value: bytes) -> int | None:
    """The digits of a plain Content-Length value, else None (the full path decides)."""
    value = value.strip(_OWS)
    if value.isdigit() and len(value) <= MAX_CONTENT_LENGTH_DIGITS:
        return int(value)
    return None


def fast_request_head(
    method: bytes,
    target: bytes,
    version: str,
    headers: list[tuple[bytes, bytes]],
    keep_alive: bool,
) -> RequestHead:
    """:func:`~plait.proxy.http1_checks.parse_request_head`, memoized on the names."""
    if not headers:  # no Host: the full check decides (HTTP/1.0) or words the error
        return parse_request_head(method, target, version, headers, keep_alive)
    names, values = zip(*headers, strict=True)
    try:
        shape = _request_shapes[names]
    except KeyError:
        if len(_request_shapes) >= MAX_SHAPES:
            _request_shapes.clear()
        shape = _request_shapes[names] = request_shape(names)
    if shape is None or (version != "1.1" and version != "1.0") or method == b"CONNECT":
        return parse_request_head(method, target, version, headers, keep_alive)
    host_i, cl_i, rid_i, conn_i, forward = shape
    if b"\t".join(values).translate(None, _FIELD_VALUE_OK):
        return parse_request_head(method, target, version, headers, keep_alive)
    content_length = None
    if cl_i >= 0:
        content_length = _content_length(values[cl_i])
        if content_length is None:
            return parse_request_head(method, target, version, headers, keep_alive)
    if conn_i >= 0 and values[conn_i].lower() not in _CONNECTION_PLAIN:
        return parse_request_head(method, target, version, headers, keep_alive)
    if target[:1] == b"/":  # origin-form, by far the most common: no split needed
        origin, authority = target, None
    else:
        origin, authority = _split_target(target, method)
    if authority is None:
        authority = values[host_i].strip(_OWS)
        if not authority and version == "1.1":
            raise HeadRejected("empty Host header")
    if authority.translate(None, _HOST_OK):
        raise HeadRejected(f"invalid host {authority[:64]!r}")
    return RequestHead(
        method,
        origin,
        path_of(origin),
        authority,
        version,
        [headers[i] for i in forward],
        keep_alive,
        content_length,
        False,
        None,
        False,
        values[rid_i] if rid_i >= 0 else None,
        None,
        False,
        target[:1] != b"/" and target != b"*",
    )


def fast_response_head(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    request_method: bytes,
    downstream_version: str,
    downstream_keep_alive: bool,
) -> ResponseHead:
    """:func:`~plait.proxy.http1_checks.parse_response_head`, memoized on the names."""
    names, values = zip(*headers, strict=True) if headers else ((), ())
    try:
        shape = _response_shapes[names]
    except KeyError:
        if len(_response_shapes) >= MAX_SHAPES:
            _response_shapes.clear()
        shape = _response_shapes[names] = response_shape(names)
    content_length = None
    if shape is not None and not b"\t".join(values).translate(None, _FIELD_VALUE_OK):
        cl_i, conn_i, forward = shape
        plain = conn_i < 0 or values[conn_i].lower() in _CONNECTION_PLAIN
        if cl_i >= 0:
            content_length = _content_length(values[cl_i])
            plain = plain and content_length is not None
    else:
        plain = False
    if not plain:
        return parse_response_head(
            status,
            reason,
            headers,
            request_method=request_method,
            downstream_version=downstream_version,
            downstream_keep_alive=downstream_keep_alive,
        )
    close = not downstream_keep_alive
    if request_method == b"HEAD" or status in _NO_BODY_STATUS or status < 200:
        body = BODY_NONE
    elif content_length is not None:
        body = BODY_LENGTH
    elif downstream_version == "1.0":
        body = BODY_CLOSE
        close = True
    else:
        body = BODY_CHUNKED
    return ResponseHead(
        status,
        reason,
        [headers[i] for i in forward] if len(forward) != len(headers) else list(headers),
        content_length,
        False,
        body,
        close,
    )
