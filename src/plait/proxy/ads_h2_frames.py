"""The pure core of the proxy's xDS transport: one gRPC bidi stream over HTTP/2 (h2c).

Rules. No I/O, no clock, no asyncio: bytes in (:meth:`GrpcCall.receive_data`), events out
(:meth:`GrpcCall.next_event`), bytes to send (:meth:`GrpcCall.data_to_send`); the shell
(:mod:`plait.proxy.ads_h2`) owns the socket and the timers. It exists so the proxy need
not import grpcio (about 14 MB of its resident memory, docs/internals.md "Memory").

Theory of operation. The client opens exactly one stream (id 1): the connection preface,
SETTINGS (push off, a large INITIAL_WINDOW_SIZE and MAX_FRAME_SIZE), a connection
WINDOW_UPDATE, then the request HEADERS. Each message written gets the 5-byte gRPC prefix
and leaves in DATA frames no larger than the peer's MAX_FRAME_SIZE and only while both
of the peer's windows (connection and stream) have room; the rest waits for a
WINDOW_UPDATE or a SETTINGS that raises the window (``pending_send`` counts it). Received
DATA is reassembled into messages across frames (a message may be larger than the
window); parsed bytes are given back to the peer (WINDOW_UPDATE, connection and stream)
once they reach a quarter of the window, unless complete messages the application has
not read yet pass half of it: then credit waits for :meth:`next_event` to hand them out,
so a slow reader slows the server down instead of queuing without bound. Frames are
dispatched by type through a table (``_HANDLERS``).

The stream ends with an :class:`Ended` (trailers with grpc-status 0) or a :class:`Failed`
(non-zero status, RST_STREAM, GOAWAY, a protocol error by the peer, a compressed or
oversized message); after either the call is finished and nothing more is parsed.
Header blocks are decoded by :mod:`plait.proxy.ads_h2_hpack` (static and dynamic tables,
Huffman); the request headers are sent as literals, never indexed, so the peer's table is
never touched by us.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from plait.proxy.ads_h2_hpack import HpackDecoder, HpackError, encode_headers

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE = 1, 2, 4, 5
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x6
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x7, 0x8, 0x9, 0xB
STREAM_ID = 1
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
LOCAL_WINDOW = 16 * 1024 * 1024
LOCAL_MAX_FRAME = 1024 * 1024
MAX_MESSAGE_SIZE = 64 * 1024 * 1024
MAX_HEADER_BLOCK = 256 * 1024
_FRAME_HEADER = struct.Struct(">IBI")  # 24-bit length in the top of the first word

# grpc's mappings (doc/http-grpc-status-mapping.md, doc/PROTOCOL-HTTP2.md)
HTTP_STATUS_CODES = {400: "INTERNAL", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}
HTTP_STATUS_CODES |= {404: "UNIMPLEMENTED", 429: "UNAVAILABLE", 502: "UNAVAILABLE"}
HTTP_STATUS_CODES |= {503: "UNAVAILABLE", 504: "UNAVAILABLE"}
RST_CODES = {REFUSED_STREAM: "UNAVAILABLE", CANCEL: "CANCELLED"}
RST_CODES |= {ENHANCE_YOUR_CALM: "RESOURCE_EXHAUSTED", 0xC: "PERMISSION_DENIED"}
GRPC_CODES = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
]


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One gRPC message from the server (without its 5-byte prefix)."""

    data: bytes


@dataclass(frozen=True)
class Ended:
    """The server ended the stream with grpc-status 0."""


@dataclass(frozen=True)
class Failed:
    """The call failed: ``code`` is a grpc status name (``UNAVAILABLE``, ``INTERNAL``...)."""

    code: str
    details: str


Event = Message | Ended | Failed


class ProtocolError(Exception):
    """The peer broke HTTP/2, HPACK or gRPC framing (its fault, not ours)."""

    def __init__(self, message: str, h2_code: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.h2_code = h2_code


# --- frames and messages --------------------------------------------------------------------


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame: 9-byte header, then ``payload``."""
    return _FRAME_HEADER.pack(len(payload) << 8 | kind, flags, stream_id) + payload


def grpc_message(payload: bytes) -> bytes:
    """``payload`` with the gRPC prefix: not compressed, 4-byte big-endian length."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def percent_decode(text: str) -> str:
    """grpc-message is percent-encoded UTF-8; a malformed escape is kept as it is."""
    raw = text.encode("utf-8", "replace")
    out = bytearray()
    i = 0
    while i < len(raw):
        hexpair = raw[i + 1 : i + 3]
        if (
            raw[i] == 0x25
            and len(hexpair) == 2
            and all(c in b"0123456789abcdefABCDEF" for c in hexpair)
        ):
            out.append(int(hexpair, 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "replace")


# --- the call ------------------------------------------------------------------------------


class GrpcCall:
    """Client side of one gRPC bidi call on its own HTTP/2 connection (stream 1)."""

    def __init__(
        self,
        *,
        authority: str,
        path: str,
        user_agent: str,
        max_message_size: int = MAX_MESSAGE_SIZE,
        local_window: int = LOCAL_WINDOW,
    ) -> None:
        self.max_message_size = max_message_size
        self.local_window = local_window
        self._out = bytearray()
        self._in = bytearray()
        self._events: deque[Event] = deque()
        self._final: Failed | Ended | None = None
        self._hpack = HpackDecoder()
        self._send_queue = bytearray()  # prefixed messages waiting for window
        self._conn_send_window = DEFAULT_WINDOW
        self._stream_send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME
        self._recv_window = local_window  # both the connection's and the stream's
        self._owed = 0  # bytes received and parsed, not yet given back
        self._unread = 0  # bytes of complete messages not yet handed out
        self._message = bytearray()
        self._got_headers = False
        self._headers_block: tuple[int, int, bytearray] | None = None  # stream, flags, block
        self._goaway: int | None = None  # last stream id of a graceful GOAWAY
        self.ping_outstanding: bytes | None = None
        settings = b"".join(
            struct.pack(">HI", key, value)
            for key, value in (
                (S_ENABLE_PUSH, 0),
                (S_INITIAL_WINDOW_SIZE, local_window),
                (S_MAX_FRAME_SIZE, LOCAL_MAX_FRAME),
            )
        )
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("user-agent", user_agent),
        ]
        self._out += PREFACE + frame(SETTINGS, 0, 0, settings)
        if local_window > DEFAULT_WINDOW:
            increment = local_window - DEFAULT_WINDOW
            self._out += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", increment))
        self._out += frame(HEADERS, END_HEADERS, STREAM_ID, encode_headers(headers))

    # -- the shell's side ---------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._final is not None

    @property
    def final(self) -> Ended | Failed | None:
        """How the call ended, once it has."""
        return self._final

    @property
    def pending_send(self) -> int:
        """Bytes of written messages still waiting for the peer's flow-control window."""
        return len(self._send_queue)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | None:
        """The next event, or None until more data arrives; the final event repeats."""
        if self._events:
            event = self._events.popleft()
            if isinstance(event, Message):
                self._unread -= len(event.data) + 5
                self._give_back()
            return event
        return self._final

    def send_message(self, payload: bytes) -> None:
        if self._final is not None:
            return
        self._send_queue += grpc_message(payload)
        self._flush()

    def send_ping(self, opaque: bytes) -> None:
        self.ping_outstanding = opaque
        self._out += frame(PING, 0, 0, opaque)

    def cancel(self, details: str = "the client cancelled the stream") -> None:
        if self._final is None:
            self._out += frame(RST_STREAM, 0, STREAM_ID, struct.pack(">I", CANCEL))
            self.fail("CANCELLED", details)

    def fail(self, code: str, details: str) -> None:
        """End the call with ``code`` (the shell's failures: connection lost, keepalive)."""
        if self._final is None:
            self._final = Failed(code, details)
            self._send_queue.clear()

    def connection_lost(self) -> None:
        if self._goaway is not None:
            self.fail("UNAVAILABLE", "the control plane went away (GOAWAY) and closed")
        else:
            self.fail("UNAVAILABLE", "the control plane closed the connection")

    def receive_data(self, data: bytes) -> None:
        if self._final is not None:
            return
        self._in += data
        pos = 0
        try:
            while self._final is None and len(self._in) - pos >= 9:
                word, flags, stream_id = _FRAME_HEADER.unpack_from(self._in, pos)
                length, kind, stream_id = word >> 8, word & 0xFF, stream_id & MAX_WINDOW
                if length > LOCAL_MAX_FRAME:
                    raise ProtocolError(f"frame of {length} bytes", FRAME_SIZE_ERROR)
                if len(self._in) - pos < 9 + length:
                    break
                with memoryview(self._in) as view:  # one copy, not two
                    payload = bytes(view[pos + 9 : pos + 9 + length])
                pos += 9 + length
                if self._headers_block is not None and kind != CONTINUATION:
                    raise ProtocolError("a header block interrupted by another frame")
                handler = _HANDLERS.get(kind)
                if handler is not None:
                    handler(self, flags, stream_id, payload)
        except ProtocolError as err:
            self._out += frame(GOAWAY, 0, 0, struct.pack(">II", 0, err.h2_code) + str(err).encode())
            self.fail("INTERNAL", f"protocol error from the control plane: {err}")
        del self._in[:pos]

    # -- sending ---------------------------------------------------------------------------

    def _flush(self) -> None:
        while self._send_queue and self._final is None:
            room = min(self._conn_send_window, self._stream_send_window, self._peer_max_frame)
            if room <= 0:
                return
            chunk = bytes(self._send_queue[:room])
            del self._send_queue[:room]
            self._conn_send_window -= len(chunk)
            self._stream_send_window -= len(chunk)
            self._out += frame(DATA, 0, STREAM_ID, chunk)

    def _give_back(self) -> None:
        """Credit parsed bytes back in quarters of the window, unless unread messages already
        fill half of it (then :meth:`next_event` credits as the application reads)."""
        if self._owed >= self.local_window // 4 and self._unread <= self.local_window // 2:
            increment = struct.pack(">I", self._owed)
            self._out += frame(WINDOW_UPDATE, 0, 0, increment)
            self._out += frame(WINDOW_UPDATE, 0, STREAM_ID, increment)
            self._recv_window += self._owed
            self._owed = 0

    # -- frame handlers (dispatched by _HANDLERS) ----------------------------------------------

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != STREAM_ID:
            raise ProtocolError(f"DATA on stream {stream_id}")
        if len(payload) > self._recv_window:
            raise ProtocolError("DATA beyond the flow-control window", FLOW_CONTROL_ERROR)
        self._recv_window -= len(payload)
        self._owed += len(payload)
        if not self._got_headers:
            raise ProtocolError("DATA before the response headers")
        self._message += _unpad(flags, payload)
        self._split_messages()
        if flags & END_STREAM and self._final is None:
            self.fail("INTERNAL", "the server ended the stream without grpc-status trailers")
        self._give_back()

    def _split_messages(self) -> None:
        buf = self._message
        while len(buf) >= 5 and self._final is None:
            if buf[0] & 1:
                self.fail("INTERNAL", "the server sent a compressed message (not supported)")
                return
            if buf[0] != 0:
                raise ProtocolError(f"gRPC message flags {buf[0]:#x}")
            size = int.from_bytes(buf[1:5], "big")
            if size > self.max_message_size:
                detail = f"a message of {size} bytes, above the limit of {self.max_message_size}"
                self.fail("RESOURCE_EXHAUSTED", detail)
                return
            if len(buf) < 5 + size:
                return
            with memoryview(buf) as view:  # one copy of a message of megabytes, not two
                self._events.append(Message(bytes(view[5 : 5 + size])))
            self._unread += 5 + size
            del buf[: 5 + size]

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolError("HEADERS on stream 0")
        payload = _unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        self._headers_block = (stream_id, flags, bytearray(payload))
        if flags & END_HEADERS:
            self._end_headers()

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._headers_block is None or self._headers_block[0] != stream_id:
            raise ProtocolError("CONTINUATION without its HEADERS")
        self._headers_block[2].extend(payload)
        if len(self._headers_block[2]) > MAX_HEADER_BLOCK:
            raise ProtocolError("a header block above 256 KiB")
        if flags & END_HEADERS:
            self._end_headers()

    def _end_headers(self) -> None:
        assert self._headers_block is not None
        stream_id, flags, block = self._headers_block
        self._headers_block = None
        try:  # always decoded: keeps the table in sync
            headers = dict(self._hpack.decode(bytes(block)))
        except HpackError as err:
            raise ProtocolError(f"HPACK: {err}", COMPRESSION_ERROR) from err
        if stream_id != STREAM_ID:
            raise ProtocolError(f"HEADERS on stream {stream_id}")
        if not self._got_headers:
            self._got_headers = True
            status = headers.get(":status", "")
            if status != "200":
                code = HTTP_STATUS_CODES.get(int(status) if status.isdigit() else 0, "UNKNOWN")
                self.fail(code, f"the server answered HTTP status {status or '(none)'}")
                return
            if "grpc-status" not in headers:
                content_type = headers.get("content-type", "")
                if not content_type.startswith("application/grpc"):
                    self.fail("UNKNOWN", f"the server answered content-type {content_type!r}")
                if flags & END_STREAM:
                    self.fail("INTERNAL", "the server ended the stream without grpc-status")
                return
        elif not flags & END_STREAM:
            raise ProtocolError("trailers without END_STREAM")
        self._trailers(headers)

    def _trailers(self, headers: dict[str, str]) -> None:
        status = headers.get("grpc-status", "")
        details = percent_decode(headers.get("grpc-message", ""))
        if not status.isdigit():
            self.fail("UNKNOWN", f"trailers without a valid grpc-status ({status!r})")
        elif int(status) != 0:
            code = GRPC_CODES[int(status)] if int(status) < len(GRPC_CODES) else "UNKNOWN"
            self.fail(code, details)
        elif self._message:
            self.fail("INTERNAL", "the stream ended inside a message")
        elif self._final is None:
            self._final = Ended()

    def _on_rst_stream(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4 or stream_id == 0:
            raise ProtocolError("malformed RST_STREAM", FRAME_SIZE_ERROR)
        if stream_id == STREAM_ID:
            code = int.from_bytes(payload, "big")
            self.fail(RST_CODES.get(code, "INTERNAL"), f"the server reset the stream (code {code})")

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0 or len(payload) % 6 or (flags & ACK and payload):
            raise ProtocolError("malformed SETTINGS", FRAME_SIZE_ERROR)
        if flags & ACK:
            return
        for key, value in struct.iter_unpack(">HI", payload):
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError("INITIAL_WINDOW_SIZE too large", FLOW_CONTROL_ERROR)
                self._stream_send_window += value - self._peer_initial_window
                self._peer_initial_window = value
            elif key == S_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= 2**24 - 1:
                    raise ProtocolError("MAX_FRAME_SIZE out of range")
                self._peer_max_frame = value
        self._out += frame(SETTINGS, ACK, 0)
        self._flush()

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 8 or stream_id != 0:
            raise ProtocolError("malformed PING", FRAME_SIZE_ERROR)
        if not flags & ACK:
            self._out += frame(PING, ACK, 0, payload)
        elif payload == self.ping_outstanding:
            self.ping_outstanding = None

    def _on_goaway(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) < 8 or stream_id != 0:
            raise ProtocolError("malformed GOAWAY", FRAME_SIZE_ERROR)
        last_stream, code = struct.unpack_from(">II", payload)
        last_stream &= MAX_WINDOW
        debug = payload[8:].decode("utf-8", "replace")
        if code != NO_ERROR or last_stream < STREAM_ID:
            code_name = "RESOURCE_EXHAUSTED" if code == ENHANCE_YOUR_CALM else "UNAVAILABLE"
            self.fail(code_name, f"the control plane went away (GOAWAY code {code}: {debug!r})")
        self._goaway = last_stream  # graceful and covering our stream: it may still finish

    def _on_window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError("malformed WINDOW_UPDATE", FRAME_SIZE_ERROR)
        increment = int.from_bytes(payload, "big") & MAX_WINDOW
        if increment == 0:
            raise ProtocolError("WINDOW_UPDATE of 0")
        if stream_id == 0:
            self._conn_send_window += increment
            if self._conn_send_window > MAX_WINDOW:
                raise ProtocolError("connection window overflow", FLOW_CONTROL_ERROR)
        elif stream_id == STREAM_ID:
            self._stream_send_window += increment
            if self._stream_send_window > MAX_WINDOW:
                raise ProtocolError("stream window overflow", FLOW_CONTROL_ERROR)
        self._flush()

    def _on_push_promise(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise ProtocolError("PUSH_PROMISE although push is disabled")

    def _on_priority(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 5:
            raise ProtocolError("malformed PRIORITY", FRAME_SIZE_ERROR)


def _unpad(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ProtocolError("padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


_HANDLERS: dict[int, Callable[[GrpcCall, int, int, bytes], None]] = {
    DATA: GrpcCall._on_data,
    HEADERS: GrpcCall._on_headers,
    PRIORITY: GrpcCall._on_priority,
    RST_STREAM: GrpcCall._on_rst_stream,
    SETTINGS: GrpcCall._on_settings,
    PUSH_PROMISE: GrpcCall._on_push_promise,
    PING: GrpcCall._on_ping,
    GOAWAY: GrpcCall._on_goaway,
    WINDOW_UPDATE: GrpcCall._on_window_update,
    CONTINUATION: GrpcCall._on_continuation,
}
