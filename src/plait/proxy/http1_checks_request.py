"""HTTP/1.1 request heads: validation and normalization, as pure functions.

Part of :mod:`plait.proxy.http1_checks` (whose docstring states the rules and which
re-exports every name): :func:`parse_request_head` -- versions, request-target and Host,
framing (Content-Length, Transfer-Encoding), Connection, Upgrade, Expect -- and
:func:`render_request_head`, the head sent upstream; :func:`identify_rejected` names a
refused request for its answer and log line. Shared pieces live in
:mod:`~plait.proxy.http1_checks_common`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from plait.proxy.http1_checks_common import (
    _CONNECTION,
    _CONTENT_LENGTH,
    _EXPECT,
    _FIELD_LINE,
    _HOST,
    _OWS,
    _REQUEST_ID,
    _SPECIAL,
    _TCHAR,
    _TE,
    _TRANSFER_ENCODING,
    _UPGRADE,
    _VIA,
    CRLF,
    HeadRejected,
    _comma_tokens,
    _is_alias,
    check_field_chars,
    parse_content_length,
)

_HOST_OK: Final = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+;=:[]%"
)


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
    # Fields with defaults (parse_request_head names them; the fast path in http1_shapes
    # sets every field of a head directly, without __init__: add a field there too).
    content_length: int | None = None
    request_id: bytes | None = None  # x-request-id as received
    absolute_form: bool = False
    chunked: bool = False
    upgrade: bytes | None = None  # Upgrade value when this is an upgrade request
    expect_continue: bool = False
    via: bytes | None = None  # Via as received (joined)
    te_trailers: bool = False
    # Transfer-Encoding to forward when ``chunked``: the codings, in order, chunked last.
    transfer_encoding: bytes = b"chunked"
    # ``headers`` already rendered (CRLF before each field line), made by the fast path
    # (http1_shapes) and used by render_request_head while ``headers`` is still the list
    # it was made from (``fields_wire_of``). Replace ``headers`` rather than modify it.
    fields_wire: bytes = field(default=b"", compare=False, repr=False)
    fields_wire_of: list[tuple[bytes, bytes]] | None = field(
        default=None, compare=False, repr=False
    )

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
        content_length=content_length,
        request_id=request_id,
        absolute_form=target[:1] != b"/" and target != b"*",
        chunked=chunked,
        upgrade=upgrade_value,
        expect_continue=expect_continue,
        via=b", ".join(via) if via else None,
        te_trailers=te_trailers,
        transfer_encoding=transfer_encoding,
    )


def render_request_head(head: RequestHead, via: bytes, new_request_id: bytes | None) -> bytes:
    """The head to send upstream: origin-form, HTTP/1.1, framing re-emitted.

    ``via`` is this hop's Via entry (``b"1.1 node"``); ``new_request_id`` is added as
    x-request-id when the request did not carry one.
    """
    # Each piece starts with the CRLF that ends the line before it; the forwarded fields
    # come pre-rendered from the fast path, else are rendered in C (``b": ".join`` of
    # each pair, joined by CRLF).
    fields = head.headers
    if head.fields_wire_of is fields:
        block = head.fields_wire
    elif fields:
        block = CRLF + CRLF.join(map(_FIELD_LINE, fields))
    else:
        block = b""
    if head.chunked:
        framing = b"\r\ntransfer-encoding: " + head.transfer_encoding
    elif head.content_length is not None:
        framing = b"\r\ncontent-length: %d" % head.content_length
    else:
        framing = b""
    received_via = head.via
    upgrade = head.upgrade
    return b"".join(
        (
            head.method,
            b" ",
            head.target,
            b" HTTP/1.1\r\nhost: ",
            head.host,
            block,
            b"\r\nvia: ",
            received_via + b", " + via if received_via else via,
            b"" if new_request_id is None else b"\r\nx-request-id: " + new_request_id,
            framing,
            b"\r\nte: trailers" if head.te_trailers else b"",
            b"" if upgrade is None else b"\r\nconnection: upgrade\r\nupgrade: " + upgrade,
            b"\r\n\r\n",
        )
    )
