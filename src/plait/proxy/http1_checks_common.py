"""HTTP/1.1 message heads: what request and response checks share, as pure functions.

Part of :mod:`plait.proxy.http1_checks` (whose docstring states the rules and which
re-exports every name): the token and field-value character sets, the field names with a
meaning for framing or hops (and their ``_`` aliases), :class:`HeadRejected` and its error
types, the single-field checks, Content-Length, Connection tokens, and chunk framing.
Requests are checked in :mod:`~plait.proxy.http1_checks_request`, responses in
:mod:`~plait.proxy.http1_checks_response`.
"""

from __future__ import annotations

from typing import Final

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_CONTENT_LENGTH_DIGITS: Final = 18

HTTP_REQUEST_ERROR: Final = "http_request_error"
HTTP_PROTOCOL_ERROR: Final = "http_protocol_error"

_TCHAR: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# VCHAR, obs-text, SP, HTAB: everything a field value may hold.
_FIELD_VALUE_OK: Final = bytes([0x09, 0x20]) + bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
_OWS: Final = b" \t"
CRLF: Final = b"\r\n"
# A (name, value) pair as a field line without its CRLF: ``map(_FIELD_LINE, fields)``.
_FIELD_LINE: Final = b": ".join
LAST_CHUNK: Final = b"0\r\n\r\n"

# Field names with a meaning for framing or hops. Value: how a request head treats them.
_CONTENT_LENGTH = 1
_TRANSFER_ENCODING = 2
_HOST = 3
_CONNECTION = 4
_DROP = 5  # hop-by-hop, always removed
_UPGRADE = 6
_TE = 7
_VIA = 8
# From here on: end-to-end fields that are forwarded, and also looked at.
_REQUEST_ID = 9
_EXPECT = 10
_PROXY_STATUS = 11

_SPECIAL: Final[dict[bytes, int]] = {
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"host": _HOST,
    b"connection": _CONNECTION,
    b"keep-alive": _DROP,
    b"proxy-connection": _DROP,
    b"trailer": _DROP,
    b"upgrade": _UPGRADE,
    b"te": _TE,
    b"via": _VIA,
    b"x-request-id": _REQUEST_ID,
    b"expect": _EXPECT,
    b"proxy-status": _PROXY_STATUS,
}
# Names refused when spelled with "_" for "-" (``Transfer_Encoding``,
# ``Content__Length``): CGI-style servers fold "_" and "-" together, so such a field could
# become a framing or hop-by-hop field behind the proxy.
_ALIASED: Final = frozenset(
    name
    for name, kind in _SPECIAL.items()
    if kind in (_CONTENT_LENGTH, _TRANSFER_ENCODING, _HOST, _CONNECTION, _DROP, _UPGRADE, _TE)
)


def _is_alias(lname: bytes) -> bool:
    """``lname`` (lowercase, containing "_") names a framing field once "_" is "-"."""
    folded = lname.replace(b"_", b"-")
    while b"--" in folded:
        folded = folded.replace(b"--", b"-")
    return folded in _ALIASED


# Fields a trailer section may not carry (framing, routing, hop-by-hop).
_TRAILER_FORBIDDEN: Final = frozenset(
    [*(n for n, k in _SPECIAL.items() if k not in (_VIA, _REQUEST_ID, _PROXY_STATUS)), b"te"]
)


class HeadRejected(Exception):
    """A message head that must not be forwarded.

    ``status`` is what to answer (400/431/501 for a downstream request; 502 for an upstream
    response), ``error`` the RFC 9209 error type, ``details`` a human-readable reason.
    """

    def __init__(self, details: str, status: int = 400, error: str = HTTP_REQUEST_ERROR) -> None:
        super().__init__(details)
        self.details = details
        self.status = status
        self.error = error
        # What is known of a rejected request, for its answer and access log line (set
        # by identify_rejected(); None when unknown or not safe to repeat).
        self.method: bytes | None = None
        self.path: str | None = None
        self.host: str | None = None
        self.request_id: bytes | None = None
        self.destination: str | None = None  # the service its Host names (set by the server)


def _upstream_fault(details: str) -> HeadRejected:
    return HeadRejected(details, 502, HTTP_PROTOCOL_ERROR)


# ---------------------------------------------------------------------------------------
# Single-field checks (exposed for tests and for the slow path of error messages)


def _name_chars_error(name: bytes) -> str | None:
    if not name:
        return "empty header name"
    if name.translate(None, _TCHAR):
        return f"invalid character in header name {name!r}"
    return None


def field_name_error(name: bytes) -> str | None:
    """Why ``name`` is not a valid field name, or None."""
    chars = _name_chars_error(name)
    if chars is not None:
        return chars
    if b"_" in name and _is_alias(name.lower()):
        return f"header name {name!r} reads as a framing header"
    return None


def field_value_error(name: bytes, value: bytes) -> str | None:
    """Why ``value`` is not a valid field value (CR, LF, NUL, other CTL), or None."""
    bad = value.translate(None, _FIELD_VALUE_OK)
    if bad:
        return f"invalid character {bad[:1]!r} in value of header {name!r}"
    return None


def parse_content_length(values: list[bytes]) -> int:
    """The body length from the Content-Length field values; raises HeadRejected."""
    if len(values) != 1:
        raise HeadRejected("multiple Content-Length headers")
    value = values[0].strip(_OWS)
    if not value or not value.isdigit() or len(value) > MAX_CONTENT_LENGTH_DIGITS:
        raise HeadRejected(f"invalid Content-Length {values[0]!r}")
    return int(value)


def check_field_chars(headers: list[tuple[bytes, bytes]], fault: int = 400) -> None:
    """Every name a token, every value free of CTLs (CR, LF, NUL...): one pass in C.

    Raises :class:`HeadRejected` naming the first bad field (``fault`` 502: upstream's).
    """
    if not headers:
        return
    names, values = zip(*headers, strict=True)
    if (
        b"".join(names).translate(None, _TCHAR)
        or b"\t".join(values).translate(None, _FIELD_VALUE_OK)
        or b"" in names
    ):
        for name, value in headers:
            problem = _name_chars_error(name) or field_value_error(name, value)
            if problem is not None:
                if fault == 502:
                    raise _upstream_fault(problem)
                raise HeadRejected(problem)


# Connection values that name no field to drop (the common case, checked without a split).
_CONNECTION_PLAIN: Final = frozenset([b"close", b"keep-alive", b"upgrade"])


def _comma_tokens(values: list[bytes]) -> list[bytes]:
    return [t for v in values for t in (p.strip(_OWS).lower() for p in v.split(b",")) if t]


# ---------------------------------------------------------------------------------------
# Bodies


def chunk_prefix(size: int) -> bytes:
    """The chunk-size line for a chunk of ``size`` bytes (data and CRLF follow)."""
    return b"%x\r\n" % size


def render_last_chunk(trailers: list[tuple[bytes, bytes]]) -> bytes:
    """The last chunk and the trailer section; framing and hop-by-hop fields dropped."""
    if not trailers:
        return LAST_CHUNK
    parts = [b"0\r\n"]
    for name, value in trailers:
        if name.lower() in _TRAILER_FORBIDDEN:
            continue
        if name.translate(None, _TCHAR) or value.translate(None, _FIELD_VALUE_OK):
            continue
        parts += (name, b": ", value, CRLF)
    parts.append(CRLF)
    return b"".join(parts)
