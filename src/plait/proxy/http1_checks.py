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

The checks live in three modules, their public names re-exported here (import from this one;
the head-shape memo, :mod:`~plait.proxy.http1_shapes`, also reads their private tables):
:mod:`~plait.proxy.http1_checks_request` (request heads: version, request-target and Host,
framing, Upgrade; the head sent upstream), :mod:`~plait.proxy.http1_checks_response`
(response heads: framing, how the body travels downstream; the head sent downstream) and
:mod:`~plait.proxy.http1_checks_common` (what both share: token and field-value checks,
the framing and hop-by-hop field names, :class:`HeadRejected`, Content-Length, chunks).
A monkeypatch must target the module that looks the name up, not this one (e.g.
``check_field_chars`` in both ``http1_checks_request`` and ``http1_checks_response``).
"""

from plait.proxy.http1_checks_common import (
    CRLF,
    HTTP_PROTOCOL_ERROR,
    HTTP_REQUEST_ERROR,
    LAST_CHUNK,
    MAX_CONTENT_LENGTH_DIGITS,
    MAX_HEAD_BYTES,
    HeadRejected,
    check_field_chars,
    chunk_prefix,
    field_name_error,
    field_value_error,
    parse_content_length,
    render_last_chunk,
)
from plait.proxy.http1_checks_request import (
    RequestHead,
    identify_rejected,
    parse_request_head,
    parse_request_transfer_encoding,
    path_of,
    render_request_head,
    transfer_codings,
)
from plait.proxy.http1_checks_response import (
    BODY_CHUNKED,
    BODY_CLOSE,
    BODY_LENGTH,
    BODY_NONE,
    ResponseHead,
    check_transfer_encoding,
    parse_response_head,
    render_interim,
    render_response_head,
)

__all__ = [
    "BODY_CHUNKED",
    "BODY_CLOSE",
    "BODY_LENGTH",
    "BODY_NONE",
    "CRLF",
    "HTTP_PROTOCOL_ERROR",
    "HTTP_REQUEST_ERROR",
    "LAST_CHUNK",
    "MAX_CONTENT_LENGTH_DIGITS",
    "MAX_HEAD_BYTES",
    "HeadRejected",
    "RequestHead",
    "ResponseHead",
    "check_field_chars",
    "check_transfer_encoding",
    "chunk_prefix",
    "field_name_error",
    "field_value_error",
    "identify_rejected",
    "parse_content_length",
    "parse_request_head",
    "parse_request_transfer_encoding",
    "parse_response_head",
    "path_of",
    "render_interim",
    "render_last_chunk",
    "render_request_head",
    "render_response_head",
    "transfer_codings",
]
