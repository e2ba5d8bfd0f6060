"""Whole-read memos: reads that repeat, byte for byte, a message parsed and checked before.

Theory of operation. llhttp is a deterministic state machine, and the head checks are
pure functions of what it reports: the same bytes, fed from the same state (between two
messages), give the same callbacks and so the same checked head. Clients and upstreams
repeat themselves exactly -- a load generator, a health check, an API poll; nginx sends
one response head all second long, until its Date changes -- so the proxy remembers:

* **Requests** (:data:`requests`, :func:`template_of`, :func:`remember_request`): a read
  that was exactly one request without a body, kept alive, not an upgrade, and that
  passed the checks: the read's bytes -> its
  :class:`~plait.proxy.http1_checks.RequestHead`.

  A request carrying an ``x-request-id`` differs in that value every time (every request
  between two plait proxies does), so it is remembered with the value cut out: the
  read's bytes without it -> a :class:`RequestIdTemplate`. Only values of ASCII letters
  and digits are put back in: llhttp reads every such value the same way, and the
  checks take them all (they only look for control characters), so the head is the
  template's with this value instead.

* **Responses** (:func:`remember_response`; the look-up is inlined in
  :meth:`~plait.proxy.upstream.UpstreamConnection.data_received`): a read that was
  exactly one response, from its head's first byte to the last byte of a Content-Length
  body: the head's bytes -> a :class:`WholeResponse` (what llhttp reported, and the body
  length). The same head bytes followed by the same number of bytes, and nothing more,
  are read the same way whatever the body's bytes are.

Heads are never modified once made (they are shared). Each memo is bounded and starts
over when full. Whatever is not remembered, and every read in the middle of a message,
goes through llhttp as before; ``tests/unit/proxy/test_http1_whole_reads.py`` holds the
two paths to the same outcome on generated traffic.
"""

from __future__ import annotations

from typing import Any, Final

from plait.proxy.http1_checks_request import RequestHead

# Not Final (compiled code reads these two at run time): tests set them to -1, to run
# with nothing remembered.
MAX_WHOLE_REQUEST = 1024  # longer reads are not remembered
MAX_WHOLE_REQUESTS: Final = 128  # per memo; then start over
MAX_REQUEST_ID: Final = 128  # longer x-request-id values are not put back
MAX_WHOLE_HEAD = 2048  # longer response heads are not remembered
MAX_WHOLE_RESPONSES: Final = 128  # then start over

REQUEST_ID_LINE: Final = b"\r\nx-request-id: "  # as plait proxies send it

requests: dict[bytes, RequestHead] = {}
_id_requests: dict[bytes, RequestIdTemplate] = {}
responses: dict[bytes, WholeResponse] = {}
hits = [0, 0]  # reads handled from the memos, ever: requests, responses (for tests)


class RequestIdTemplate:
    """A remembered request head whose x-request-id value is put back per request."""

    __slots__ = ("head", "index", "name", "wire_after", "wire_before")

    def __init__(self, head: RequestHead, index: int, wire: tuple[bytes, bytes] | None) -> None:
        self.head = head
        self.index = index  # of the x-request-id field in head.headers
        self.name = head.headers[index][0]
        # head.fields_wire around the value (None: the head has no pre-rendered fields)
        self.wire_before: bytes | None = None if wire is None else wire[0]
        self.wire_after = b"" if wire is None else wire[1]

    def head_with(self, request_id: bytes) -> RequestHead:
        """The template's head, with ``request_id`` as its x-request-id value."""
        t = self.head
        head = RequestHead.__new__(RequestHead)  # every field set, as in http1_shapes
        head.method = t.method
        head.target = t.target
        head.path = t.path
        head.host = t.host
        head.version = t.version
        headers = t.headers.copy()
        headers[self.index] = (self.name, request_id)
        head.headers = headers
        head.keep_alive = t.keep_alive
        head.content_length = t.content_length
        head.request_id = request_id
        head.absolute_form = t.absolute_form
        head.chunked = t.chunked
        head.upgrade = t.upgrade
        head.expect_continue = t.expect_continue
        head.via = t.via
        head.te_trailers = t.te_trailers
        head.transfer_encoding = t.transfer_encoding
        if self.wire_before is None:
            head.fields_wire = b""
            head.fields_wire_of = None
        else:
            head.fields_wire = self.wire_before + request_id + self.wire_after
            head.fields_wire_of = headers
        return head


def _request_id_span(data: bytes) -> tuple[int, int] | None:
    """Where the value of the read's x-request-id line is, when it is one to put back."""
    start = data.find(REQUEST_ID_LINE)
    if start < 0:
        return None
    start += len(REQUEST_ID_LINE)
    stop = data.find(b"\r\n", start)
    if stop < 0 or stop - start > MAX_REQUEST_ID or not data[start:stop].isalnum():
        return None  # (an empty value is not isalnum)
    return start, stop


def template_of(data: bytes) -> tuple[RequestIdTemplate, RequestHead] | None:
    """For a read that is a remembered request but for its x-request-id value: its
    template and its checked head (the request path looks in :data:`requests` itself
    first); else None."""
    if not _id_requests:
        return None
    span = _request_id_span(data)
    if span is None:
        return None
    start, stop = span
    template = _id_requests.get(data[:start] + data[stop:])
    return None if template is None else (template, template.head_with(data[start:stop]))


def remember_request(data: bytes, head: RequestHead) -> None:
    """``data`` was read whole as one request, which became ``head``: remember it if
    the same bytes (or the same but for the x-request-id value) can come again."""
    if head.has_body or not head.keep_alive or head.upgrade is not None:
        return
    if len(data) > MAX_WHOLE_REQUEST:
        return
    if head.request_id is None:
        _bounded(requests, MAX_WHOLE_REQUESTS)[data] = head
        return
    span = _request_id_span(data)
    if span is None or data.lower().count(b"x-request-id") != 1:
        return  # another spelling, or a second field or mention: not a plain template
    start, stop = span
    if data[start:stop] != head.request_id:
        return
    index = next(
        (i for i, (name, _) in enumerate(head.headers) if name.lower() == b"x-request-id"), -1
    )
    if index < 0 or head.headers[index][1] != head.request_id:
        return
    wire = None
    if head.fields_wire_of is head.headers:
        line = b"\r\n" + head.headers[index][0] + b": " + head.request_id
        at = head.fields_wire.find(line)
        after = head.fields_wire[at + len(line) :]
        if at < 0 or head.fields_wire.count(line) != 1 or after[:2] not in (b"", b"\r\n"):
            return
        wire = head.fields_wire[: at + len(line) - len(head.request_id)], after
    _bounded(_id_requests, MAX_WHOLE_REQUESTS)[data[:start] + data[stop:]] = RequestIdTemplate(
        head, index, wire
    )


class WholeResponse:
    """A response head llhttp parsed, remembered by its bytes: what the callbacks gave,
    the body length that followed, and (``heads``, filled by the handler) what was made
    of it downstream per request kind: the handler's own memo, as long-lived as this."""

    __slots__ = ("headers", "heads", "keep_alive", "length", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        length: int,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.keep_alive = keep_alive
        self.length = length
        self.heads: dict[Any, Any] = {}


def remember_response(
    data: bytes, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool
) -> None:
    """``data`` was read whole as one complete response, whose head llhttp reported as
    the rest of the arguments: remember the head's bytes, if its body was framed by a
    Content-Length that ended exactly at the end of ``data``."""
    end = data.find(b"\r\n\r\n") + 4
    head = data[:end]
    if (
        end <= 4
        or not 200 <= status < 600
        or status in (204, 304)
        or len(head) > MAX_WHOLE_HEAD
        or head.count(b"\n") != head.count(b"\r\n")  # so llhttp's head ended at `end`
    ):
        return
    length = -1
    for name, value in headers:
        low = name.lower()
        if low == b"transfer-encoding" or (low == b"content-length" and length >= 0):
            return
        if low == b"content-length":
            if not value.isdigit():
                return
            length = int(value)
    if length != len(data) - end:
        return
    _bounded(responses, MAX_WHOLE_RESPONSES)[head] = WholeResponse(
        status, reason, headers, keep_alive, length
    )


def _bounded(memo: dict[bytes, Any], limit: int) -> dict[bytes, Any]:
    if len(memo) >= limit:
        memo.clear()
    return memo


def clear() -> None:
    """Forget everything (tests)."""
    requests.clear()
    _id_requests.clear()
    responses.clear()
