"""HTTP/1.1 message heads: validation and normalization, as pure functions.

Theory of operation. llhttp (through httptools) splits bytes into a request line, header
fields and body; it already refuses most malformed input (bad tokens, bare CR/LF, obs-fold,
bad chunk sizes, duplicate Content-Length, Content-Length with Transfer-Encoding). This
module takes what llhttp handed over -- method, target, version and a list of
``(name, value)`` byte pairs -- and decides, with no I/O, whether the message may cross the
proxy, and in what shape. It re-checks every rule that matters for request smuggling
instead of trusting the parser's flags, so a leniency switched on by mistake, or a parser
upgrade, cannot open a desync.

Rules (RFC 9110/9112; the conformance corpus in shared/conformance/http-desync):

- Versions: only HTTP/1.0 and HTTP/1.1 are accepted (0.9, 1.2, 2.0 -> 400).
- Field names are tokens; field values hold VCHAR, obs-text, SP and HTAB only: no CR, LF,
  NUL or other control character (so no obs-fold can survive either).
- Framing: at most one Content-Length field, whose value is 1-18 ASCII digits (OWS
  trimmed). *Identical duplicates are rejected too* -- RFC 9112 allows merging them, but
  a proxy that merges and a server that does not disagree on nothing, while one that
  rejects can never disagree.
- Request Transfer-Encoding (RFC 9112 6.1): the field lines, combined in order, must form
  a list of well-formed transfer-codings (token, each parameter ``token=token`` or
  ``token="quoted"``) whose last coding is ``chunked`` (case-insensitive) and the only
  ``chunked``; the body is then read as chunked -- exactly the case in which llhttp frames
  it so. Refused: ``chunked`` not last or twice, empty list elements, bad tokens or
  parameters, and parameters on ``chunked`` itself (none are defined, and llhttp does not
  treat ``chunked;x=y`` -- nor ``chunked<TAB>`` -- as chunked, so accepting either would
  make us and the parser disagree on the framing). Also refused: Transfer-Encoding
  together with Content-Length, and Transfer-Encoding in an HTTP/1.0 request. The
  request is forwarded with one ``transfer-encoding`` field listing the same codings in
  order (names lowercased, parameters re-spaced), the body re-chunked by the proxy.
- Response Transfer-Encoding must be exactly ``chunked``: the proxy re-frames response
  bodies downstream as plain ``chunked`` and would otherwise drop a coding.
- Field names that would read as a framing or hop-by-hop field once ``_`` becomes ``-``
  (``Transfer_Encoding``, CGI-style servers merge them) are refused.
- Exactly one Host field (HTTP/1.1 needs one); absolute-form targets (``http://a/b``)
  carry the authority and override Host; userinfo and ``https://`` targets are refused.
- Upgrade requests must not carry a body; ``h2c`` upgrades are not forwarded (the upgrade
  is dropped and the request proxied as plain HTTP/1.1), since a tunnel to an HTTP/2
  server would let the client bypass routing.

Forwarded heads are rebuilt, never copied: hop-by-hop fields (Connection and the fields it
names, Keep-Alive, Proxy-Connection, TE other than ``trailers``, Trailer,
Transfer-Encoding, Upgrade unless upgrading) are dropped, and framing is re-emitted from
the parsed values. Errors say whose fault they are: :class:`HeadRejected` carries the
status and RFC 9209 error type to answer with (4xx for the downstream's request, 502 for
an upstream's response).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_CONTENT_LENGTH_DIGITS: Final = 18

HTTP_REQUEST_ERROR: Final = "http_request_error"
HTTP_PROTOCOL_ERROR: Final = "http_protocol_error"

_TCHAR: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# VCHAR, obs-text, SP, HTAB: everything a field value may hold.
_FIELD_VALUE_OK: Final = bytes([0x09, 0x20]) + bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
_HOST_OK: Final = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+;=:[]%"
)
_OWS: Final = b" \t"
CRLF: Final = b"\r\n"
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
_NO_BODY_STATUS: Final = frozenset([204, 304])


class HeadRejected(Exception):
    """A message head that must not be forwarded.

    ``status`` is what to answer (400/431/501 for a downstream request; 502 for an upstream
    response), ``error`` the RFC 9209 error type, ``details`` a human-readable reason.
    """

    # What is known of a rejected request, for its answer and access log line (set by
    # identify_rejected(); None when unknown or not safe to repeat).
    method: bytes | None = None
    path: str | None = None
    host: str | None = None
    request_id: bytes | None = None
    destination: str | None = None  # the service its Host names (set by the server)

    def __init__(self, details: str, status: int = 400, error: str = HTTP_REQUEST_ERROR) -> None:
        super().__init__(details)
        self.details = details
        self.status = status
        self.error = error


_SANE_TOKEN: Final = re.compile(rb"[!-~]{1,200}")  # visible ASCII, no space
_SANE_TARGET: Final = re.compile(rb"[!-~]{1,8192}")
_SANE_HOST: Final = re.compile(
    rb"[A-Za-z0-9._\-]{1,253}(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?"
)


def identify_rejected(
    err: HeadRejected, method: bytes | None, url: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """Record on ``err`` the method, path, Host and x-request-id of the request it
    rejects, from what was parsed of its head, each only if syntactically sane (so the
    answer can echo the request id and the access log can name the request)."""
    if method and method.translate(None, _TCHAR) == b"":
        err.method = method
    host: bytes | None = None
    if url and _SANE_TARGET.fullmatch(url):
        origin, authority = url, None
        if url[:1] != b"/":
            scheme, sep, rest = url.partition(b"://")
            if sep and scheme.lower() in (b"http", b"https"):
                authority, slash, tail = rest.partition(b"/")
                origin = slash + tail or b"/"
                authority = authority.rpartition(b"@")[2]
        if origin[:1] == b"/":
            err.path = origin.split(b"?", 1)[0].split(b"#", 1)[0].decode("ascii")
        host = authority
    for name, value in headers:
        lname = name.lower()
        if lname == b"x-request-id" and err.request_id is None:
            if _SANE_TOKEN.fullmatch(value):
                err.request_id = value
        elif lname == b"host" and host is None:
            host = value.strip(b" \t")
    if host and _SANE_HOST.fullmatch(host):
        err.host = host.decode("ascii").lower()


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


# RFC 9112 6.1 / RFC 9110 5.6: transfer-coding = token *( OWS ";" OWS transfer-parameter ),
# transfer-parameter = token BWS "=" BWS ( token / quoted-string ). One list element, with
# its surrounding OWS, up to the "," that ends it (or the end of the field value).
_RE_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_RE_QUOTED: Final = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_RE_PARAM: Final = (
    rb"[ \t]*;[ \t]*(" + _RE_TOKEN + rb")[ \t]*=[ \t]*(" + _RE_TOKEN + rb"|" + _RE_QUOTED + rb")"
)
_CODING: Final = re.compile(
    rb"[ \t]*(?P<name>" + _RE_TOKEN + rb")(?P<params>(?:" + _RE_PARAM + rb")*)[ \t]*(?P<sep>,|\Z)"
)
_PARAM: Final = re.compile(_RE_PARAM)


def transfer_codings(values: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The transfer-codings of Transfer-Encoding field values, in order.

    Field lines are combined in order; each coding is ``(name, params)``, the name
    lowercased and ``params`` normalized (``;name=value`` each, no whitespace, names
    lowercased, values as sent). Raises :class:`HeadRejected` for an empty element, an
    invalid token or a malformed parameter.
    """
    codings: list[tuple[bytes, bytes]] = []
    for value in values:
        pos, end = 0, len(value)
        while True:
            m = _CODING.match(value, pos)
            if m is None:
                shown = value.decode("latin-1")
                raise HeadRejected(f"malformed Transfer-Encoding {shown!r}")
            params = m.group("params")
            if params:
                params = b"".join(
                    b";" + p.group(1).lower() + b"=" + p.group(2) for p in _PARAM.finditer(params)
                )
            codings.append((m.group("name").lower(), params))
            pos = m.end()
            if pos >= end:
                if m.group("sep"):  # a trailing ",": an empty list element
                    shown = value.decode("latin-1")
                    raise HeadRejected(f"malformed Transfer-Encoding {shown!r}")
                break
    return codings


def parse_request_transfer_encoding(values: list[bytes]) -> bytes:
    """A request's Transfer-Encoding (RFC 9112 6.1): the normalized value to forward.

    The codings must end with ``chunked``, without parameters (and with no tab after it),
    applied exactly once -- the shapes llhttp frames as chunked; anything else raises
    :class:`HeadRejected` (400).
    """
    last = values[-1]
    tab_after = b"\t" in last[len(last.rstrip(_OWS)) :]
    if len(values) == 1 and not tab_after and last.strip(_OWS).lower() == b"chunked":
        return b"chunked"  # the common case
    codings = transfer_codings(values)
    names = [name for name, _ in codings]
    if names.count(b"chunked") > 1:
        raise HeadRejected("Transfer-Encoding applies chunked more than once")
    if names[-1] != b"chunked":
        shown = b", ".join(values).decode("latin-1")
        raise HeadRejected(f"Transfer-Encoding {shown!r} does not end with chunked")
    if codings[-1][1]:
        raise HeadRejected("Transfer-Encoding: chunked takes no parameters")
    if tab_after:  # RFC-valid OWS, but llhttp reads "chunked" then a tab as not chunked
        raise HeadRejected("Transfer-Encoding ends with a tab")
    return b", ".join(name + params for name, params in codings)


# Connection values that name no field to drop (the common case, checked without a split).
_CONNECTION_PLAIN: Final = frozenset([b"close", b"keep-alive", b"upgrade"])


def _comma_tokens(values: list[bytes]) -> list[bytes]:
    return [t for v in values for t in (p.strip(_OWS).lower() for p in v.split(b",")) if t]


# ---------------------------------------------------------------------------------------
# Requests


@dataclass(slots=True)
class RequestHead:
    """A validated request head, ready to be routed and forwarded."""

    method: bytes
    target: bytes  # origin-form (or "*") as sent upstream
    path: str  # the target's path, without query or fragment: what routes match on
    host: bytes  # authority: from an absolute-form target, else the Host field
    version: str  # "1.1" or "1.0"
    headers: list[tuple[bytes, bytes]]  # end-to-end fields to forward, in order
    keep_alive: bool
    content_length: int | None = None
    chunked: bool = False
    upgrade: bytes | None = None  # Upgrade value when this is an upgrade request
    expect_continue: bool = False
    request_id: bytes | None = None  # x-request-id as received
    via: bytes | None = None  # Via as received (joined)
    te_trailers: bool = False
    absolute_form: bool = False
    # Transfer-Encoding to forward when ``chunked``: the codings, in order, chunked last.
    transfer_encoding: bytes = b"chunked"

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


def _split_target(target: bytes, method: bytes) -> tuple[bytes, bytes | None]:
    """(origin-form target, authority from an absolute-form target or None)."""
    if target[:1] == b"/":
        return target, None
    if target == b"*" and method == b"OPTIONS":
        return target, None
    lowered = target[:8].lower()
    if lowered.startswith(b"http://"):
        rest = target[7:]
        end = len(rest)
        for sep in (b"/", b"?", b"#"):
            i = rest.find(sep)
            if i != -1 and i < end:
                end = i
        authority, origin = rest[:end], rest[end:]
        if not authority:
            raise HeadRejected("absolute-form target without a host")
        if b"@" in authority:
            raise HeadRejected("userinfo in the request target is not allowed")
        if origin[:1] != b"/":
            origin = b"/" + origin
        return origin, authority
    if lowered.startswith(b"https://"):
        raise HeadRejected("https:// targets are not supported; send plain http:// to plait")
    raise HeadRejected(f"request target {target[:64]!r} is not origin-form or absolute-form")


def path_of(target: bytes) -> str:
    """The path a route matches on: the target up to '?' or '#'."""
    if b"?" not in target and b"#" not in target:
        return target.decode("latin-1")
    path = target.split(b"?", 1)[0]
    if b"#" in path:
        path = path.split(b"#", 1)[0]
    return path.decode("latin-1")


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


def parse_request_head(
    method: bytes,
    target: bytes,
    version: str,
    headers: list[tuple[bytes, bytes]],
    keep_alive: bool,
) -> RequestHead:
    """Validate a parsed request head and normalize it for forwarding.

    ``keep_alive`` is the parser's view (version and Connection). Raises
    :class:`HeadRejected` for anything that must not be forwarded.
    """
    if version != "1.1" and version != "1.0":
        raise HeadRejected(f"HTTP version {version} is not supported (use 1.1 or 1.0)")
    if method == b"CONNECT":
        raise HeadRejected("CONNECT is not supported", 501)

    check_field_chars(headers)
    forward: list[tuple[bytes, bytes]] = []
    specials: list[tuple[int, bytes]] = []
    special = _SPECIAL
    for name, value in headers:
        lname = name.lower()
        kind = special.get(lname)
        if kind is None:
            if b"_" in lname and _is_alias(lname):
                raise HeadRejected(f"header name {name!r} reads as a framing header")
            forward.append((name, value))
        else:
            specials.append((kind, value))
            if kind >= _REQUEST_ID:  # end-to-end fields we also look at
                forward.append((name, value))

    cl_values: list[bytes] = []
    te_values: list[bytes] = []
    hosts: list[bytes] = []
    connection: list[bytes] = []
    upgrade: list[bytes] = []
    via: list[bytes] = []
    request_id: bytes | None = None
    expect_continue = False
    te_trailers = False
    for kind, value in specials:
        if kind == _HOST:
            hosts.append(value)
        elif kind == _CONTENT_LENGTH:
            cl_values.append(value)
        elif kind == _TRANSFER_ENCODING:
            te_values.append(value)
        elif kind == _CONNECTION:
            connection.append(value)
        elif kind == _UPGRADE:
            upgrade.append(value)
        elif kind == _TE:
            if value.strip(_OWS).lower() == b"trailers":
                te_trailers = True
        elif kind == _VIA:
            via.append(value)
        elif kind == _REQUEST_ID:
            request_id = value
        elif kind == _EXPECT:
            expect_continue = value.strip(_OWS).lower() == b"100-continue"
        # _DROP: hop-by-hop, removed; _PROXY_STATUS: forwarded as is

    content_length: int | None = None
    chunked = False
    transfer_encoding = b"chunked"
    if te_values:
        if cl_values:
            raise HeadRejected("both Content-Length and Transfer-Encoding")
        if version == "1.0":
            raise HeadRejected("Transfer-Encoding in an HTTP/1.0 request")
        transfer_encoding = parse_request_transfer_encoding(te_values)
        chunked = True
    elif cl_values:
        content_length = parse_content_length(cl_values)

    origin, authority = _split_target(target, method)
    if len(hosts) > 1:
        raise HeadRejected("multiple Host headers")
    if authority is None:
        if not hosts:
            if version == "1.1":
                raise HeadRejected("missing Host header")
            authority = b""
        else:
            authority = hosts[0].strip(_OWS)
            if not authority and version == "1.1":
                raise HeadRejected("empty Host header")
    if authority.translate(None, _HOST_OK):
        raise HeadRejected(f"invalid host {authority[:64]!r}")

    upgrade_value: bytes | None = None
    if connection:
        tokens = _comma_tokens(connection)
        if upgrade and b"upgrade" in tokens:
            value = b", ".join(v.strip(_OWS) for v in upgrade)
            if value.lower() != b"h2c":
                upgrade_value = value
        named = {t for t in tokens if t not in (b"close", b"keep-alive", b"upgrade")}
        if named:
            forward = [(n, v) for n, v in forward if n.lower() not in named]
            if b"te" in named:
                te_trailers = False
    if upgrade_value is not None and (chunked or content_length):
        raise HeadRejected("an Upgrade request must not carry a body")

    return RequestHead(
        method,
        origin,
        path_of(origin),
        authority,
        version,
        forward,
        keep_alive,
        content_length,
        chunked,
        upgrade_value,
        expect_continue,
        request_id,
        b", ".join(via) if via else None,
        te_trailers,
        target[:1] != b"/" and target != b"*",
        transfer_encoding,
    )


def render_request_head(head: RequestHead, via: bytes, new_request_id: bytes | None) -> bytes:
    """The head to send upstream: origin-form, HTTP/1.1, framing re-emitted.

    ``via`` is this hop's Via entry (``b"1.1 node"``); ``new_request_id`` is added as
    x-request-id when the request did not carry one.
    """
    parts = [head.method, b" ", head.target, b" HTTP/1.1\r\nhost: ", head.host, CRLF]
    for name, value in head.headers:
        parts += (name, b": ", value, CRLF)
    if head.via:
        parts += (b"via: ", head.via, b", ", via, CRLF)
    else:
        parts += (b"via: ", via, CRLF)
    if new_request_id is not None:
        parts += (b"x-request-id: ", new_request_id, CRLF)
    if head.chunked:
        parts += (b"transfer-encoding: ", head.transfer_encoding, CRLF)
    elif head.content_length is not None:
        parts += (b"content-length: ", b"%d" % head.content_length, CRLF)
    if head.te_trailers:
        parts.append(b"te: trailers\r\n")
    if head.upgrade is not None:
        parts += (b"connection: upgrade\r\nupgrade: ", head.upgrade, CRLF)
    parts.append(CRLF)
    return b"".join(parts)


# ---------------------------------------------------------------------------------------
# Responses

# How a response body travels downstream.
BODY_NONE: Final = 0  # no body (HEAD, 204, 304)
BODY_LENGTH: Final = 1  # Content-Length, bytes passed through
BODY_CHUNKED: Final = 2  # re-chunked by the proxy
BODY_CLOSE: Final = 3  # delimited by closing the downstream connection (HTTP/1.0 peer)


@dataclass(slots=True)
class ResponseHead:
    """A validated upstream response head and how to frame it downstream."""

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


def render_response_head(
    head: ResponseHead,
    via: bytes,
    proxy_status: bytes | None,
    *,
    downstream_version: str,
) -> bytes:
    """The head to send downstream; ``proxy_status`` replaces the received value."""
    reason = head.reason or b"-"
    parts = [b"HTTP/1.1 %d " % head.status, reason, CRLF]
    for name, value in head.headers:
        parts += (name, b": ", value, CRLF)
    if head.via:
        parts += (b"via: ", head.via, b", ", via, CRLF)
    else:
        parts += (b"via: ", via, CRLF)
    if proxy_status is not None:
        parts += (b"proxy-status: ", proxy_status, CRLF)
    elif head.proxy_status is not None:
        parts += (b"proxy-status: ", head.proxy_status, CRLF)
    body = head.downstream_body
    if body == BODY_LENGTH or (
        body == BODY_NONE and head.content_length is not None and head.status not in (204, 101)
    ):
        parts += (b"content-length: ", b"%d" % (head.content_length or 0), CRLF)
    elif body == BODY_CHUNKED:
        parts.append(b"transfer-encoding: chunked\r\n")
    if head.status == 101:
        parts += (b"connection: upgrade\r\nupgrade: ", head.upgrade or b"", CRLF)
    elif head.close_downstream:
        parts.append(b"connection: close\r\n")
    elif downstream_version == "1.0":
        parts.append(b"connection: keep-alive\r\n")
    parts.append(CRLF)
    return b"".join(parts)


def render_interim(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A 1xx interim response (other than 101) relayed downstream, hop-by-hop removed."""
    parts = [b"HTTP/1.1 %d " % status, reason or b"-", CRLF]
    for name, value in headers:
        if name.lower() not in _SPECIAL or name.lower() in (b"x-request-id", b"proxy-status"):
            parts += (name, b": ", value, CRLF)
    parts.append(CRLF)
    return b"".join(parts)


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
