"""RFC 9209 ``Proxy-Status``: which hop made a response, and why.

Every response a plait proxy makes itself (no route, no healthy endpoint, connect
failure, timeout, denied) carries a ``Proxy-Status`` entry naming the hop
(``"<node id>/<direction>"``) with an error type from the RFC's registry and free-text
details; a proxy passing such a response on keeps the existing members and appends its
own (the last member is the hop closest to the client), so the caller sees the chain.

The field is an RFC 8941 structured-field List. We serialize each member as an
sf-string with parameters in the RFC's order, one space after each ``;`` as in the
RFC's examples (a valid serialization)::

    "host-a/outbound"; error=connection_refused; next-hop="10.0.0.2:8080"; details="..."

Text that goes into an sf-string (hop, details, next-hop) is made representable first
(:func:`sanitize`): tab, CR and LF become a space, other control and non-ASCII
characters become ``?``, and it is cut to a bounded length; then ``\\`` and ``"`` are
escaped. So whatever an exception message holds, the header stays one valid line.

:func:`parse` is a tolerant reader for tests, the CLI and logs: it never raises, skips a
member it cannot read and keeps the others.

``STATUS_FOR`` is the status plait answers with for each error type: the RFC's
recommended code, except ``destination_not_found`` (no route), answered with 404 as
Envoy does; ``http_request_error`` has no single recommended code, we use 400.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import overload
from urllib.parse import unquote

__all__ = [
    "CONNECTION_LIMIT_REACHED",
    "CONNECTION_READ_TIMEOUT",
    "CONNECTION_REFUSED",
    "CONNECTION_TERMINATED",
    "CONNECTION_TIMEOUT",
    "CONNECTION_WRITE_TIMEOUT",
    "DESTINATION_IP_PROHIBITED",
    "DESTINATION_IP_UNROUTABLE",
    "DESTINATION_NOT_FOUND",
    "DESTINATION_UNAVAILABLE",
    "DNS_ERROR",
    "DNS_TIMEOUT",
    "ERROR_TYPES",
    "HTTP_PROTOCOL_ERROR",
    "HTTP_REQUEST_DENIED",
    "HTTP_REQUEST_ERROR",
    "HTTP_RESPONSE_BODY_SIZE",
    "HTTP_RESPONSE_HEADER_SECTION_SIZE",
    "HTTP_RESPONSE_HEADER_SIZE",
    "HTTP_RESPONSE_INCOMPLETE",
    "HTTP_RESPONSE_TIMEOUT",
    "HTTP_UPGRADE_FAILED",
    "MAX_DETAILS",
    "PROXY_CONFIGURATION_ERROR",
    "PROXY_INTERNAL_ERROR",
    "PROXY_INTERNAL_RESPONSE",
    "PROXY_LOOP_DETECTED",
    "RFC_STATUS",
    "STATUS_FOR",
    "TLS_ALERT_RECEIVED",
    "TLS_CERTIFICATE_ERROR",
    "TLS_PROTOCOL_ERROR",
    "append",
    "entry",
    "hop_name",
    "local_response",
    "parse",
    "sanitize",
]

# Error types (RFC 9209 section 2.3) with the RFC's recommended status codes.
DNS_TIMEOUT = "dns_timeout"
DNS_ERROR = "dns_error"
DESTINATION_NOT_FOUND = "destination_not_found"
DESTINATION_UNAVAILABLE = "destination_unavailable"
DESTINATION_IP_PROHIBITED = "destination_ip_prohibited"
DESTINATION_IP_UNROUTABLE = "destination_ip_unroutable"
CONNECTION_REFUSED = "connection_refused"
CONNECTION_TERMINATED = "connection_terminated"
CONNECTION_TIMEOUT = "connection_timeout"
CONNECTION_READ_TIMEOUT = "connection_read_timeout"
CONNECTION_WRITE_TIMEOUT = "connection_write_timeout"
CONNECTION_LIMIT_REACHED = "connection_limit_reached"
TLS_PROTOCOL_ERROR = "tls_protocol_error"
TLS_CERTIFICATE_ERROR = "tls_certificate_error"
TLS_ALERT_RECEIVED = "tls_alert_received"
HTTP_REQUEST_ERROR = "http_request_error"
HTTP_REQUEST_DENIED = "http_request_denied"
HTTP_RESPONSE_INCOMPLETE = "http_response_incomplete"
HTTP_RESPONSE_HEADER_SECTION_SIZE = "http_response_header_section_size"
HTTP_RESPONSE_HEADER_SIZE = "http_response_header_size"
HTTP_RESPONSE_BODY_SIZE = "http_response_body_size"
HTTP_RESPONSE_TIMEOUT = "http_response_timeout"
HTTP_UPGRADE_FAILED = "http_upgrade_failed"
HTTP_PROTOCOL_ERROR = "http_protocol_error"
PROXY_INTERNAL_RESPONSE = "proxy_internal_response"
PROXY_INTERNAL_ERROR = "proxy_internal_error"
PROXY_CONFIGURATION_ERROR = "proxy_configuration_error"
PROXY_LOOP_DETECTED = "proxy_loop_detected"

# The RFC's "Recommended HTTP status code" (proxy_internal_response has none).
RFC_STATUS: dict[str, int] = {
    DNS_TIMEOUT: 504,
    DNS_ERROR: 502,
    DESTINATION_NOT_FOUND: 500,
    DESTINATION_UNAVAILABLE: 503,
    DESTINATION_IP_PROHIBITED: 502,
    DESTINATION_IP_UNROUTABLE: 502,
    CONNECTION_REFUSED: 502,
    CONNECTION_TERMINATED: 502,
    CONNECTION_TIMEOUT: 504,
    CONNECTION_READ_TIMEOUT: 504,
    CONNECTION_WRITE_TIMEOUT: 504,
    CONNECTION_LIMIT_REACHED: 503,
    TLS_PROTOCOL_ERROR: 502,
    TLS_CERTIFICATE_ERROR: 502,
    TLS_ALERT_RECEIVED: 502,
    HTTP_REQUEST_ERROR: 400,  # RFC: "the applicable 4xx status code"
    HTTP_REQUEST_DENIED: 403,
    HTTP_RESPONSE_INCOMPLETE: 502,
    HTTP_RESPONSE_HEADER_SECTION_SIZE: 502,
    HTTP_RESPONSE_HEADER_SIZE: 502,
    HTTP_RESPONSE_BODY_SIZE: 502,
    HTTP_RESPONSE_TIMEOUT: 504,
    HTTP_UPGRADE_FAILED: 502,
    HTTP_PROTOCOL_ERROR: 502,
    PROXY_INTERNAL_ERROR: 500,
    PROXY_CONFIGURATION_ERROR: 500,
    PROXY_LOOP_DETECTED: 502,
}

# What plait answers with: the RFC's code, but "no route" is a 404 (as in Envoy).
STATUS_FOR: dict[str, int] = {**RFC_STATUS, DESTINATION_NOT_FOUND: 404}

ERROR_TYPES: frozenset[str] = frozenset(RFC_STATUS) | {PROXY_INTERNAL_RESPONSE}

MAX_DETAILS = 256  # characters of details kept (after sanitizing)
MAX_NAME = 128  # characters of a hop or next-hop kept

# --- sanitizing and sf-string serialization ------------------------------------------

_SPACE_CHARS = "\t\r\n"
_TRANSLATE = {ord(c): " " for c in _SPACE_CHARS}
_TRANSLATE.update({c: "?" for c in [*range(0x20), 0x7F] if chr(c) not in _SPACE_CHARS})


def sanitize(text: str, limit: int = MAX_DETAILS) -> str:
    """``text`` made representable as an sf-string (before escaping), cut to ``limit``.

    Tab, CR and LF become a space; other control and non-ASCII characters become ``?``.
    """
    if not (text.isascii() and text.isprintable()):
        text = text.encode("ascii", "replace").decode("ascii").translate(_TRANSLATE)
    return text if len(text) <= limit else text[:limit]


def _sf_string(text: str, limit: int) -> str:
    text = sanitize(text, limit)
    if "\\" in text or '"' in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN_REST = _TCHAR | {":", "/"}


def _is_token(text: str) -> bool:
    return (
        bool(text)
        and (text[0].isascii() and (text[0].isalpha() or text[0] == "*"))
        and all(c in _TOKEN_REST for c in text)
    )


def hop_name(node_id: str, direction: str) -> str:
    """The hop name plait uses: ``"<node id>/<direction>"`` (``host-a/outbound``)."""
    return f"{node_id}/{direction}"


def entry(
    hop: str,
    error: str | None = None,
    details: str | None = None,
    received_status: int | None = None,
    next_hop: str | None = None,
) -> str:
    """One Proxy-Status list member: ``hop`` as an sf-string with its parameters.

    ``error`` must be an sf-token (every registered type is); empty ``details`` are
    left out.
    """
    parts = [_sf_string(hop, MAX_NAME)]
    if error is not None:
        if error not in ERROR_TYPES and not _is_token(error):
            raise ValueError(f"Proxy-Status error type {error!r} is not an sf-token")
        parts.append(f"error={error}")
    if next_hop is not None:
        parts.append(f"next-hop={_sf_string(next_hop, MAX_NAME)}")
    if received_status is not None:
        parts.append(f"received-status={int(received_status)}")
    if details:
        parts.append(f"details={_sf_string(details, MAX_DETAILS)}")
    return "; ".join(parts)


@overload
def append(existing: str | None, new_entry: str) -> str: ...
@overload
def append(existing: bytes | None, new_entry: bytes) -> bytes: ...
def append(existing: str | bytes | None, new_entry: str | bytes) -> str | bytes:
    """The field value with ``new_entry`` appended after the existing members."""
    if not existing:
        return new_entry
    if isinstance(existing, bytes) and isinstance(new_entry, bytes):
        kept_bytes = existing.strip(b" \t,")
        return kept_bytes + b", " + new_entry if kept_bytes else new_entry
    if isinstance(existing, str) and isinstance(new_entry, str):
        kept = existing.strip(" \t,")
        return f"{kept}, {new_entry}" if kept else new_entry
    raise TypeError("append(): existing and new_entry must both be str or both be bytes")


# --- local responses ------------------------------------------------------------------

_PHRASES = {s.value: s.phrase for s in HTTPStatus}


def local_response(
    status: int,
    reason: str,
    hop: str,
    error: str,
    details: str,
    via: str,
    request_id: str | None,
    close: bool,
    *,
    next_hop: str | None = None,
    head: bool = False,
) -> bytes:
    """A complete HTTP/1.1 response made by the proxy itself.

    ``reason`` may be empty (the standard phrase is used). The body is one line,
    ``"<hop>: <error>: <details>\\n"``; for a HEAD request (``head``) it is left out but
    ``content-length`` still gives its length. Every value is sanitized, so nothing a
    client sent (a request id) can split the header section.
    """
    if not 100 <= status <= 999:
        raise ValueError(f"status {status} is not a three-digit HTTP status code")
    proxy_status = entry(hop, error, details, next_hop=next_hop)  # validates ``error``
    clean_hop = sanitize(hop, MAX_NAME)
    clean_details = sanitize(details)
    body = (
        f"{clean_hop}: {error}: {clean_details}\n" if clean_details else f"{clean_hop}: {error}\n"
    ).encode("ascii")
    lines = [
        f"HTTP/1.1 {status} {sanitize(reason or _PHRASES.get(status, 'Unknown'), 64)}",
        "content-type: text/plain",
        f"content-length: {len(body)}",
        f"proxy-status: {proxy_status}",
    ]
    if via:
        lines.append(f"via: {sanitize(via, 1024)}")
    if request_id:
        lines.append(f"x-request-id: {sanitize(request_id, 256)}")
    if close:
        lines.append("connection: close")
    lines.append("\r\n")
    head_bytes = "\r\n".join(lines).encode("ascii")
    return head_bytes if head else head_bytes + body


# --- tolerant parsing -----------------------------------------------------------------

ParamValue = str | int  # tokens, strings, byte sequences and decimals as text; ints; bools


class _Bad(Exception):
    """Internal: this member cannot be read; skip to the next one."""


_KEY_START = frozenset("abcdefghijklmnopqrstuvwxyz*")
_KEY_CHARS = _KEY_START | frozenset("0123456789_-.")


def _skip_ows(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in " \t\r\n":
        i += 1
    return i


def _parse_string(s: str, i: int) -> tuple[str, int]:
    # s[i] == '"'
    out: list[str] = []
    i += 1
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            if i + 1 >= n:
                raise _Bad
            out.append(s[i + 1])
            i += 2
        elif c == '"':
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    raise _Bad


def _parse_bare_item(s: str, i: int) -> tuple[ParamValue, int]:
    n = len(s)
    if i >= n:
        raise _Bad
    c = s[i]
    if c == '"':
        return _parse_string(s, i)
    if c == "%" and i + 1 < n and s[i + 1] == '"':  # RFC 9651 display string
        raw, j = _parse_string(s, i + 1)
        return unquote(raw, errors="replace"), j
    if c == "-" or c.isdigit():
        j = i + 1
        while j < n and (s[j].isdigit() or s[j] == "."):
            j += 1
        text = s[i:j]
        if "." in text:
            return text, j
        try:
            return int(text), j
        except ValueError as exc:
            raise _Bad from exc
    if c == ":":
        j = s.find(":", i + 1)
        if j < 0:
            raise _Bad
        return s[i + 1 : j], j + 1
    if c == "?":
        if i + 1 < n and s[i + 1] in "01":
            return s[i + 1] == "1", i + 2
        raise _Bad
    if c.isascii() and (c.isalpha() or c == "*"):
        j = i + 1
        while j < n and s[j] in _TOKEN_REST:
            j += 1
        return s[i:j], j
    raise _Bad


def _parse_params(s: str, i: int) -> tuple[dict[str, ParamValue], int]:
    params: dict[str, ParamValue] = {}
    n = len(s)
    while True:
        i = _skip_ows(s, i)  # tolerant: RFC 8941 allows no space before ";"
        if i >= n or s[i] != ";":
            return params, i
        i = _skip_ows(s, i + 1)
        j = i
        while j < n and s[j].lower() in _KEY_CHARS:
            j += 1
        key = s[i:j].lower()
        if not key or key[0] not in _KEY_START:
            raise _Bad
        i = _skip_ows(s, j)
        if i < n and s[i] == "=":
            value, i = _parse_bare_item(s, _skip_ows(s, i + 1))
            params[key] = value
        else:
            params[key] = True


def _skip_member(s: str, i: int) -> int:
    """Index just after the next ``,`` outside a string (or the end)."""
    n = len(s)
    in_string = False
    while i < n:
        c = s[i]
        if in_string:
            if c == "\\":
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == ",":
            return i + 1
        i += 1
    return n


def parse(value: str | bytes | None) -> list[tuple[str, dict[str, ParamValue]]]:
    """The members of a Proxy-Status value: ``[(hop, {param: value})]``; never raises.

    Members that cannot be read (or are inner lists) are skipped; booleans are
    ``True``/``False``; decimals, tokens and byte sequences are returned as text.
    """
    if not value:
        return []
    s = value.decode("latin-1") if isinstance(value, bytes) else value
    members: list[tuple[str, dict[str, ParamValue]]] = []
    i = 0
    n = len(s)
    while i < n:
        i = _skip_ows(s, i)
        if i >= n:
            break
        start = i
        try:
            if s[i] == "(":
                raise _Bad
            item, i = _parse_bare_item(s, i)
            params, i = _parse_params(s, i)
            i = _skip_ows(s, i)
            if i < n and s[i] != ",":
                raise _Bad
            members.append((str(item), params))
            i += 1
        except _Bad:
            i = _skip_member(s, start)
    return members
