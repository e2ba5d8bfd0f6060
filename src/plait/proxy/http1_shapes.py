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
x-request-id, Connection and Via (and, in responses, only Content-Length, Connection and
Via among the framing and hop fields); any other framing or hop-relevant field
(Transfer-Encoding, Upgrade, TE, Expect, Proxy-Status, a second Host or Via...) and any
value the fast checks do not accept as plain sends the message through the full
functions, which then decide -- and word the error -- exactly as before. (One Via is
common: every message between two plait proxies carries the first one's.) The fast
path never rejects a head by itself. The results are equal either way, and render to
the same bytes (a property test compares both paths on random heads).

Per message, what can be is remembered too, in small bounded dicts that start over when
full: a Host value's authority, an origin-form target's path, a Content-Length value's
number. The forwarded fields are also rendered here, in one ``%`` over a per-shape format
(``b"\r\nServer: %s\r\nDate: %s"``), into the head's ``fields_wire``: the render functions
use it while ``head.headers`` is the list it was made from.

The code is written for what CPython 3.11 charges (measured with callgrind): a Python
call costs more than most checks here, so helpers are inlined; ``tuple(map(...))`` over
a few fields costs several times an unpacking assignment, so heads of up to 8 fields are
unpacked by hand (:func:`_split_fields`); hashing a tuple of new names
costs twice comparing it with the last one, so the last shape is looked at before the
dict; a head's ``__init__`` frame costs about as much as its fields, so heads are made
with the class's ``__new__`` and their fields set here (all of them: an unset one fails
the property test's comparison).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Final, TypeVar

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
    _VIA,
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
MAX_HOSTS: Final = 256  # distinct Host values remembered; then start over
MAX_PATHS: Final = 1024  # distinct request targets remembered; then start over
MAX_MEMO_TARGET: Final = 256  # longer targets are not remembered
MAX_LENGTHS: Final = 1024  # distinct Content-Length values remembered; then start over
MAX_MEMO_VALUE: Final = 256  # longer Host and Content-Length values are not remembered
MAX_MEMO_NAMES: Final = 2048  # shapes with more bytes of names are not remembered

# A shape: (index of Host or Content-Length... or -1, ..., indices of forwarded fields)
_ReqShape = tuple[int, int, int, int, int, tuple[int, ...]]  # host, cl, rid, conn, via, fwd
_RespShape = tuple[int, int, int, tuple[int, ...]]  # cl, conn, via, forwarded

Fields = list[tuple[bytes, bytes]]
# What is done per message for a shape: the indices above, whether the field values need
# the character check (False when every value is checked by a stricter rule: Host,
# Content-Length, a plain Connection; a Via value is checked by it), and how to pick the
# forwarded fields.
# Last, the forwarded fields' lines as a %-format (b"\r\nServer: %s\r\nDate: %s") and how
# to pick their values: the head's ``fields_wire`` is ``fmt % pick(values)``.
_Values = tuple[bytes, ...]
_ReqPlan = tuple[
    int, int, int, int, int, bool, Callable[[Fields], Fields], bytes, Callable[[_Values], _Values]
]
_RespPlan = tuple[
    int, int, int, bool, Callable[[Fields], Fields], bytes, Callable[[_Values], _Values]
]

# Keyed by the tuple of field names.
_request_plans: dict[tuple[bytes, ...], _ReqPlan | None] = {}
_response_plans: dict[tuple[bytes, ...], _RespPlan | None] = {}
# The names of the last head seen and their plan, per direction (a plan is a function of
# the names alone, so this is never stale). Consecutive heads mostly share a shape, and
# comparing the names with the last ones costs half of hashing them for the dicts (each
# name is a new bytes object, its hash not computed yet). The first value holds: a name
# that is not a token has no plan.
_last_request: tuple[tuple[bytes, ...], _ReqPlan | None] = ((b"\x00",), None)
_last_response: tuple[tuple[bytes, ...], _RespPlan | None] = ((b"\x00",), None)
# Host field value -> the authority it names (OWS trimmed), for valid non-empty ones only.
_hosts: dict[bytes, bytes] = {}
# origin-form request target -> the path routes match on (path_of).
_paths: dict[bytes, str] = {}
# Content-Length field value -> its number, for plain ones (OWS and 1-18 digits) only.
_lengths: dict[bytes, int] = {}
# Plain Connection values (see _CONNECTION_PLAIN) as usually spelled: no lower() needed.
_CONNECTION_SPELLED: Final = _CONNECTION_PLAIN | {b"Close", b"Keep-Alive", b"Upgrade"}

_name_of: Final = itemgetter(0)
_value_of: Final = itemgetter(1)
# A translation table that changes exactly the bytes a field value must not hold (CTLs
# other than HTAB, and DEL: CR, LF, NUL among them). ``v.translate(_CTL_TABLE) is v``
# says "v is a valid value": with nothing changed, translate returns v itself.
_CTL_TABLE: Final = bytes(b if b in _FIELD_VALUE_OK else 0x20 for b in range(256))


def _token(name: bytes) -> bool:
    return bool(name) and not name.translate(None, _TCHAR)


def request_shape(names: tuple[bytes, ...]) -> _ReqShape | None:
    """What the request checks decide from the names alone; None: use the full path."""
    host = cl = rid = conn = via = -1
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
        elif kind == _VIA and via < 0:
            via = i
        elif kind != _DROP:
            return None
    if host < 0:
        return None
    return host, cl, rid, conn, via, tuple(forward)


def response_shape(names: tuple[bytes, ...]) -> _RespShape | None:
    """What the response checks decide from the names alone; None: use the full path."""
    cl = conn = via = -1
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
        elif kind == _VIA and via < 0:
            via = i
        elif kind != _DROP and kind != _TE:
            return None
    return cl, conn, via, tuple(forward)


def _picker(forward: tuple[int, ...]) -> Callable[[Fields], Fields]:
    """A function returning the forwarded fields of a head of the shape, as a new list."""
    if not forward or forward == tuple(range(forward[0], forward[-1] + 1)):
        # Contiguous (or none): one slice, in C.
        start = forward[0] if forward else 0
        return itemgetter(slice(start, start + len(forward)))
    pick = itemgetter(*forward)  # two or more indices: returns a tuple

    def picked(fields: Fields) -> Fields:
        return list(pick(fields))

    return picked


def _wire_format(
    names: tuple[bytes, ...], forward: tuple[int, ...]
) -> tuple[bytes, Callable[[_Values], _Values]]:
    """The forwarded fields' lines as a %-format, and the picker of their values."""
    fmt = b"".join(b"\r\n" + names[i].replace(b"%", b"%%") + b": %s" for i in forward)
    if not forward or forward == tuple(range(forward[0], forward[-1] + 1)):
        start = forward[0] if forward else 0
        return fmt, itemgetter(slice(start, start + len(forward)))
    return fmt, itemgetter(*forward)  # two or more indices: returns a tuple


def _split_fields(
    headers: list[tuple[bytes, bytes]],
) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """The names and the values of a head's fields, as two tuples. Up to 8 fields are
    unpacked directly (``tuple(map(...))`` costs several times more in CPython 3.11)."""
    n = len(headers)
    if n == 1:
        ((a, va),) = headers
        return (a,), (va,)
    if n == 2:
        (a, va), (b, vb) = headers
        return (a, b), (va, vb)
    if n == 3:
        (a, va), (b, vb), (c, vc) = headers
        return (a, b, c), (va, vb, vc)
    if n == 4:
        (a, va), (b, vb), (c, vc), (d, vd) = headers
        return (a, b, c, d), (va, vb, vc, vd)
    if n == 5:
        (a, va), (b, vb), (c, vc), (d, vd), (e, ve) = headers
        return (a, b, c, d, e), (va, vb, vc, vd, ve)
    if n == 6:
        (a, va), (b, vb), (c, vc), (d, vd), (e, ve), (f, vf) = headers
        return (a, b, c, d, e, f), (va, vb, vc, vd, ve, vf)
    if n == 7:
        (a, va), (b, vb), (c, vc), (d, vd), (e, ve), (f, vf), (g, vg) = headers
        return (a, b, c, d, e, f, g), (va, vb, vc, vd, ve, vf, vg)
    if n == 8:
        (a, va), (b, vb), (c, vc), (d, vd), (e, ve), (f, vf), (g, vg), (h, vh) = headers
        return (a, b, c, d, e, f, g, h), (va, vb, vc, vd, ve, vf, vg, vh)
    return tuple(map(_name_of, headers)), tuple(map(_value_of, headers))


def _set_forwarded(
    head: RequestHead | ResponseHead,
    fmt: bytes,
    forward: Callable[[Fields], Fields],
    pick: Callable[[_Values], _Values],
    headers: Fields,
    values: tuple[bytes, ...],
) -> None:
    """The head's forwarded fields, and their wire form from the shape's ``%`` format."""
    if fmt:
        head.headers = head.fields_wire_of = forward(headers)
        head.fields_wire = fmt % pick(values)
    else:  # nothing forwarded
        head.headers = head.fields_wire_of = []
        head.fields_wire = b""


_Plan = TypeVar("_Plan")


def _remember(
    plans: dict[tuple[bytes, ...], _Plan | None], names: tuple[bytes, ...], plan: _Plan | None
) -> _Plan | None:
    """Keep ``plan`` for ``names`` (not when the names are long; the memo starts over
    when full), and return it."""
    if len(plans) >= MAX_SHAPES:
        plans.clear()
    if sum(map(len, names)) <= MAX_MEMO_NAMES:
        plans[names] = plan
    return plan


def _request_plan(names: tuple[bytes, ...]) -> _ReqPlan | None:
    shape = request_shape(names)
    plan: _ReqPlan | None = None
    if shape is not None:
        host_i, cl_i, rid_i, conn_i, via_i, forward = shape
        checked = sum(1 for i in (host_i, cl_i, conn_i) if i >= 0)
        fmt, pick = _wire_format(names, forward)
        check = len(names) > checked
        plan = host_i, cl_i, rid_i, conn_i, via_i, check, _picker(forward), fmt, pick
    return _remember(_request_plans, names, plan)


def _response_plan(names: tuple[bytes, ...]) -> _RespPlan | None:
    shape = response_shape(names)
    plan: _RespPlan | None = None
    if shape is not None:
        cl_i, conn_i, via_i, forward = shape
        checked = sum(1 for i in (cl_i, conn_i) if i >= 0)
        fmt, pick = _wire_format(names, forward)
        plan = cl_i, conn_i, via_i, len(names) > checked, _picker(forward), fmt, pick
    return _remember(_response_plans, names, plan)


def _authority(value: bytes) -> bytes:
    """The authority a Host value names if valid and not empty (remembered); else b""."""
    authority = value.strip(_OWS)
    if not authority or authority.translate(None, _HOST_OK):
        return b""
    if len(value) <= MAX_MEMO_VALUE:
        if len(_hosts) >= MAX_HOSTS:
            _hosts.clear()
        _hosts[value] = authority
    return authority


def _length(value: bytes) -> int | None:
    """A plain Content-Length value's number (remembered), else None: the full path decides."""
    digits = value.strip(_OWS)
    if not digits.isdigit() or len(digits) > MAX_CONTENT_LENGTH_DIGITS:
        return None
    length = int(digits)
    if len(value) <= MAX_MEMO_VALUE:
        if len(_lengths) >= MAX_LENGTHS:
            _lengths.clear()
        _lengths[value] = length
    return length


def _path(target: bytes) -> str:
    """path_of(target), remembered for short targets."""
    path = path_of(target)
    if len(target) <= MAX_MEMO_TARGET:
        if len(_paths) >= MAX_PATHS:
            _paths.clear()
        _paths[target] = path
    return path


def fast_request_head(
    method: bytes,
    target: bytes,
    version: str,
    headers: list[tuple[bytes, bytes]],
    keep_alive: bool,
) -> RequestHead:
    """:func:`~plait.proxy.http1_checks.parse_request_head`, memoized on the names.

    Whatever is not plainly acceptable here goes to the full check, which decides (and
    words any error): this path never rejects by itself. Hot code, written for CPython
    3.11's costs: helpers inlined (a Python call costs more than most of what is done
    here), the names and values split by :func:`_split_fields`, the head built
    without a call to ``__init__``.
    """
    global _last_request
    names, values = _split_fields(headers)
    last, plan = _last_request
    if names != last:  # most heads have the shape of the one before: no hashing then
        try:
            plan = _request_plans[names]
        except KeyError:
            plan = _request_plan(names)
        _last_request = names, plan
    if plan is None or (version != "1.1" and version != "1.0") or method == b"CONNECT":
        return parse_request_head(method, target, version, headers, keep_alive)
    host_i, cl_i, rid_i, conn_i, via_i, check, forward, fmt, pick = plan
    path = _paths.get(target)  # only origin-form targets are remembered
    if path is not None or target[:1] == b"/":  # origin-form, by far the most common
        if check:
            joined = b"\t".join(values)
            if joined.translate(_CTL_TABLE) is not joined:
                return parse_request_head(method, target, version, headers, keep_alive)
        try:
            authority = _hosts[values[host_i]]  # valid: checks its characters too
        except KeyError:
            authority = _authority(values[host_i])
            if not authority:  # empty (HTTP/1.0) or invalid
                return parse_request_head(method, target, version, headers, keep_alive)
        if path is None:
            path = _path(target)
        origin = target
        absolute_form = False
    else:
        origin, authority, path = _odd_target(method, target, values, host_i)
        if not authority:
            return parse_request_head(method, target, version, headers, keep_alive)
        absolute_form = target != b"*"
    content_length = None
    if cl_i >= 0:
        content_length = _lengths.get(values[cl_i])
        if content_length is None:
            content_length = _length(values[cl_i])
            if content_length is None:
                return parse_request_head(method, target, version, headers, keep_alive)
    if conn_i >= 0:
        value = values[conn_i]
        if value not in _CONNECTION_SPELLED and value.lower() not in _CONNECTION_PLAIN:
            return parse_request_head(method, target, version, headers, keep_alive)
    # RequestHead(...) without its __init__ frame: every field is set (the property test
    # compares with parse_request_head's heads, and an unset slot fails the comparison).
    # Its own __new__, not object's: compiled (plait.proxy.native), object's is refused.
    head = RequestHead.__new__(RequestHead)
    head.method = method
    head.target = origin
    head.path = path
    head.host = authority
    head.version = version
    _set_forwarded(head, fmt, forward, pick, headers, values)
    head.keep_alive = keep_alive
    head.content_length = content_length
    head.request_id = values[rid_i] if rid_i >= 0 else None
    head.absolute_form = absolute_form
    head.chunked = False
    head.upgrade = None
    head.expect_continue = False
    head.via = values[via_i] if via_i >= 0 else None
    head.te_trailers = False
    head.transfer_encoding = b"chunked"
    return head


def _odd_target(
    method: bytes, target: bytes, values: tuple[bytes, ...], host_i: int
) -> tuple[bytes, bytes, str]:
    """(origin, authority, path) for an absolute-form or ``*`` target; authority b"" when
    the full check must decide. The Host value is not checked by the Host rule here (the
    target may name the authority), so all values are checked."""
    joined = b"\t".join(values)
    if joined.translate(_CTL_TABLE) is not joined:
        return target, b"", ""
    try:
        origin, authority = _split_target(target, method)
    except HeadRejected:
        return target, b"", ""
    if authority is None:
        authority = _authority(values[host_i])
    elif authority.translate(None, _HOST_OK):
        authority = b""
    return origin, authority, path_of(origin)


def fast_response_head(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    request_method: bytes,
    downstream_version: str,
    downstream_keep_alive: bool,
) -> ResponseHead:
    """:func:`~plait.proxy.http1_checks.parse_response_head`, memoized on the names.

    As for requests (and written the same way), anything not plainly acceptable goes to
    the full check.
    """
    global _last_response
    names, values = _split_fields(headers)
    last, plan = _last_response
    if names != last:  # as for requests
        try:
            plan = _response_plans[names]
        except KeyError:
            plan = _response_plan(names)
        _last_response = names, plan
    if plan is None:
        return _full_response(
            status, reason, headers, request_method, downstream_version, downstream_keep_alive
        )
    cl_i, conn_i, via_i, check, forward, fmt, pick = plan
    if check:
        joined = b"\t".join(values)
        if joined.translate(_CTL_TABLE) is not joined:
            return _full_response(
                status, reason, headers, request_method, downstream_version, downstream_keep_alive
            )
    if conn_i >= 0:
        value = values[conn_i]
        if value not in _CONNECTION_SPELLED and value.lower() not in _CONNECTION_PLAIN:
            return _full_response(
                status, reason, headers, request_method, downstream_version, downstream_keep_alive
            )
    content_length = None
    if cl_i >= 0:
        content_length = _lengths.get(values[cl_i])
        if content_length is None:
            content_length = _length(values[cl_i])
            if content_length is None:
                return _full_response(
                    status,
                    reason,
                    headers,
                    request_method,
                    downstream_version,
                    downstream_keep_alive,
                )
    head = ResponseHead.__new__(ResponseHead)  # as in fast_request_head: all fields set
    head.status = status
    head.reason = reason
    _set_forwarded(head, fmt, forward, pick, headers, values)
    head.content_length = content_length
    head.upstream_chunked = False
    head.close_downstream = not downstream_keep_alive
    if status < 200 or status in _NO_BODY_STATUS or request_method == b"HEAD":
        head.downstream_body = BODY_NONE
    elif content_length is not None:
        head.downstream_body = BODY_LENGTH
    elif downstream_version == "1.0":
        head.downstream_body = BODY_CLOSE
        head.close_downstream = True
    else:
        head.downstream_body = BODY_CHUNKED
    head.proxy_status = None
    head.via = values[via_i] if via_i >= 0 else None
    head.upgrade = None
    return head


def _full_response(
    status: int,
    reason: bytes,
    headers: Fields,
    request_method: bytes,
    downstream_version: str,
    downstream_keep_alive: bool,
) -> ResponseHead:
    return parse_response_head(
        status,
        reason,
        headers,
        request_method=request_method,
        downstream_version=downstream_version,
        downstream_keep_alive=downstream_keep_alive,
    )
