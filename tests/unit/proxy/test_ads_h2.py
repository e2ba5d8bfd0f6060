"""plait.proxy.ads_h2_frames: the pure HTTP/2 + gRPC core of the proxy's xDS transport.

Bytes in, events and bytes out, no sockets: the tests play the server's side with frames
built here, and check what the client answers.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.proxy import ads_h2_frames as f
from plait.proxy.ads_h2 import StreamError, split_target
from plait.proxy.ads_h2_frames import (
    Ended,
    Failed,
    GrpcCall,
    Message,
    frame,
    grpc_message,
    percent_decode,
)
from plait.proxy.ads_h2_hpack import HpackDecoder, HpackError, encode_headers, huffman_decode

PATH = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
RESPONSE_HEADERS = encode_headers([(":status", "200"), ("content-type", "application/grpc")])
OK_TRAILERS = encode_headers([("grpc-status", "0")])


def new_call(**kw: int) -> GrpcCall:
    return GrpcCall(authority="cp:18000", path=PATH, user_agent="plait-test", **kw)


def parse_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream, payload) of every frame in ``data`` (no preface)."""
    out = []
    while data:
        length = int.from_bytes(data[:3], "big")
        kind, flags, stream = data[3], data[4], int.from_bytes(data[5:9], "big")
        out.append((kind, flags, stream, data[9 : 9 + length]))
        data = data[9 + length :]
    return out


def sent(call: GrpcCall) -> list[tuple[int, int, int, bytes]]:
    data = call.data_to_send()
    if data.startswith(f.PREFACE):
        data = data[len(f.PREFACE) :]
    return parse_frames(data)


def started(**kw: int) -> GrpcCall:
    """A call whose opening bytes were taken and whose server sent SETTINGS and headers."""
    call = new_call(**kw)
    call.data_to_send()
    call.receive_data(
        frame(f.SETTINGS, 0, 0) + frame(f.HEADERS, f.END_HEADERS, 1, RESPONSE_HEADERS)
    )
    call.data_to_send()
    return call


def events(call: GrpcCall) -> list[object]:
    out: list[object] = []
    while True:
        event = call.next_event()
        out.append(event)
        if event is None or not isinstance(event, Message):
            return out


def trailers(status: int, message: str = "") -> bytes:
    fields = [("grpc-status", str(status))] + ([("grpc-message", message)] if message else [])
    return frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, encode_headers(fields))


# --- opening ----------------------------------------------------------------------------------


def test_the_opening_bytes_are_preface_settings_window_update_and_request_headers() -> None:
    data = new_call().data_to_send()
    assert data.startswith(f.PREFACE)
    (settings_, update, headers) = parse_frames(data[len(f.PREFACE) :])
    assert settings_[:3] == (f.SETTINGS, 0, 0)
    values = dict(struct.iter_unpack(">HI", settings_[3]))
    assert values[f.S_ENABLE_PUSH] == 0
    assert values[f.S_INITIAL_WINDOW_SIZE] == f.LOCAL_WINDOW
    assert update == (f.WINDOW_UPDATE, 0, 0, struct.pack(">I", f.LOCAL_WINDOW - 65_535))
    assert headers[:3] == (f.HEADERS, f.END_HEADERS, 1)
    assert HpackDecoder().decode(headers[3]) == [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", PATH),
        (":authority", "cp:18000"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "plait-test"),
    ]


def test_server_settings_are_acked_and_pings_answered() -> None:
    call = new_call()
    call.data_to_send()
    call.receive_data(frame(f.SETTINGS, 0, 0, struct.pack(">HI", 3, 100)))
    call.receive_data(frame(f.PING, 0, 0, b"12345678") + frame(f.SETTINGS, f.ACK, 0))
    assert sent(call) == [(f.SETTINGS, f.ACK, 0, b""), (f.PING, f.ACK, 0, b"12345678")]
    assert call.next_event() is None


def test_our_ping_is_outstanding_until_its_ack() -> None:
    call = started()
    call.send_ping(b"abcdefgh")
    assert sent(call) == [(f.PING, 0, 0, b"abcdefgh")]
    call.receive_data(frame(f.PING, f.ACK, 0, b"zzzzzzzz"))
    assert call.ping_outstanding == b"abcdefgh"
    call.receive_data(frame(f.PING, f.ACK, 0, b"abcdefgh"))
    assert call.ping_outstanding is None
    assert sent(call) == []  # an ACK is not answered


# --- HPACK (RFC 7541 appendix C) ----------------------------------------------------------------


def test_hpack_rfc_7541_c4_requests_with_huffman_and_the_dynamic_table() -> None:
    decoder = HpackDecoder()
    first = bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff")
    assert decoder.decode(first) == [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ]
    assert decoder.size == 57
    second = bytes.fromhex("828684be58 86a8eb10649cbf".replace(" ", ""))
    assert decoder.decode(second)[-2:] == [
        (":authority", "www.example.com"),
        ("cache-control", "no-cache"),
    ]
    third = bytes.fromhex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf")
    assert decoder.decode(third) == [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ]
    assert decoder.size == 164


def test_hpack_rfc_7541_c3_literals_and_a_table_size_update_that_evicts() -> None:
    decoder = HpackDecoder()
    block = bytes.fromhex("828684410f7777772e6578616d706c652e636f6d")
    assert decoder.decode(block)[-1] == (":authority", "www.example.com")
    assert decoder.decode(b"\x3f\xe1\x1f")[:0] == []  # size update to 4096: kept
    assert decoder.decode(b"\xbe") == [(":authority", "www.example.com")]
    assert decoder.decode(b"\x20") == []  # size update to 0: evicts everything
    with pytest.raises(HpackError, match="no header at index 62"):
        decoder.decode(b"\xbe")


@pytest.mark.parametrize(
    "block",
    [
        b"\x3f\xe2\x1f",  # size update above the 4096 we advertised
        b"\xff\xff\xff\xff\xff\xff\xff",  # integer overflow
        b"\x00\x05ab",  # truncated string
        b"\x00\x81\xff",  # Huffman string that is all padding (8 bits)
        b"\x00\x84\xff\xff\xff\xff",  # Huffman EOS
    ],
)
def test_hpack_garbage_is_the_peers_compression_error(block: bytes) -> None:
    with pytest.raises(HpackError):
        HpackDecoder().decode(block)
    call = started()
    call.receive_data(frame(f.HEADERS, f.END_HEADERS, 1, block))
    event = call.next_event()
    assert isinstance(event, Failed) and event.code == "INTERNAL" and "HPACK" in event.details
    goaway = sent(call)[-1]
    assert goaway[0] == f.GOAWAY and struct.unpack(">II", goaway[3][:8])[1] == f.COMPRESSION_ERROR


def test_huffman_decodes_every_byte_value() -> None:
    # "a" is 00011 (5 bits) and "0" is 00000; 3 bits of padding are 1s
    assert huffman_decode(bytes([0b00011000, 0b00111111])) == b"a0"
    assert huffman_decode(bytes.fromhex("a8eb10649cbf")) == b"no-cache"


@given(st.lists(st.tuples(st.text(max_size=30), st.text(max_size=300)), max_size=8))
def test_literal_encoding_round_trips_through_the_decoder(fields: list[tuple[str, str]]) -> None:
    fields = [
        (n.encode("utf-8").decode("latin-1"), v.encode().decode("latin-1")) for n, v in fields
    ]
    assert HpackDecoder().decode(encode_headers(fields)) == fields


def test_percent_decoding_of_grpc_message() -> None:
    assert percent_decode("n%C3%B6 way 100%25") == "nö way 100%"
    assert percent_decode("bad %zz and %4") == "bad %zz and %4"


# --- messages -----------------------------------------------------------------------------


def server_bytes(messages: list[bytes], frame_size: int, pad: int) -> bytes:
    """The server's side of a whole call: headers, messages cut into DATA frames of
    ``frame_size`` bytes (padded with ``pad`` bytes when ``pad``), OK trailers."""
    stream = b"".join(grpc_message(m) for m in messages)
    out = frame(f.SETTINGS, 0, 0) + frame(f.HEADERS, f.END_HEADERS, 1, RESPONSE_HEADERS)
    for i in range(0, len(stream), frame_size):
        chunk = stream[i : i + frame_size]
        if pad:
            out += frame(f.DATA, f.PADDED, 1, bytes([pad]) + chunk + b"\0" * pad)
        else:
            out += frame(f.DATA, 0, 1, chunk)
    return out + frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, OK_TRAILERS)


def feed(call: GrpcCall, data: bytes, cuts: list[int]) -> list[object]:
    got: list[object] = []
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        call.receive_data(data[a:b])
        got += [e for e in events(call) if e is not None]
        if got and not isinstance(got[-1], Message):
            break
    return got


@settings(max_examples=150, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=3000), max_size=8),
    frame_size=st.integers(1, 5000),
    pad=st.integers(0, 20),
    cuts=st.lists(st.integers(0, 30_000), max_size=40),
)
def test_messages_reassemble_at_any_frame_and_chunk_boundary(
    messages: list[bytes], frame_size: int, pad: int, cuts: list[int]
) -> None:
    data = server_bytes(messages, frame_size, pad)
    whole = feed(new_call(), data, [])
    assert whole == [*(Message(m) for m in messages), Ended()]
    assert feed(new_call(), data, cuts) == whole


def test_byte_by_byte_equals_one_chunk() -> None:
    data = server_bytes([b"a" * 100, b"", b"xyz" * 7000], 777, 3)
    assert feed(new_call(), data, list(range(len(data)))) == feed(new_call(), data, [])


def test_headers_split_into_continuation_frames() -> None:
    call = new_call()
    block = encode_headers([(":status", "200"), ("content-type", "application/grpc+proto")])
    call.receive_data(
        frame(f.HEADERS, 0, 1, block[:3])
        + frame(f.CONTINUATION, 0, 1, block[3:10])
        + frame(f.CONTINUATION, f.END_HEADERS, 1, block[10:])
        + frame(f.DATA, 0, 1, grpc_message(b"hi"))
    )
    assert call.next_event() == Message(b"hi")


def test_a_frame_between_headers_and_continuation_is_a_protocol_error() -> None:
    call = new_call()
    call.data_to_send()
    call.receive_data(frame(f.HEADERS, 0, 1, RESPONSE_HEADERS[:3]) + frame(f.PING, 0, 0, b"x" * 8))
    event = call.next_event()
    assert isinstance(event, Failed) and event.code == "INTERNAL"
    assert "interrupted" in event.details
    assert sent(call)[-1][0] == f.GOAWAY


# --- how a call ends ------------------------------------------------------------------------


def test_non_ok_trailers_fail_with_the_percent_decoded_message() -> None:
    call = started()
    call.receive_data(frame(f.DATA, 0, 1, grpc_message(b"one")) + trailers(9, "n%C3%B6 way"))
    assert events(call) == [Message(b"one"), Failed("FAILED_PRECONDITION", "nö way")]
    assert call.finished


def test_trailers_only_response_and_http_errors() -> None:
    call = new_call()
    block = encode_headers([(":status", "200"), ("grpc-status", "12"), ("grpc-message", "no")])
    call.receive_data(frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, block))
    assert call.next_event() == Failed("UNIMPLEMENTED", "no")
    call = new_call()
    call.receive_data(frame(f.HEADERS, f.END_HEADERS, 1, encode_headers([(":status", "503")])))
    assert call.next_event() == Failed("UNAVAILABLE", "the server answered HTTP status 503")


def test_rst_stream_and_goaway_fail_the_call() -> None:
    call = started()
    call.receive_data(frame(f.RST_STREAM, 0, 1, struct.pack(">I", f.REFUSED_STREAM)))
    assert call.next_event() == Failed("UNAVAILABLE", "the server reset the stream (code 7)")
    call = started()
    call.receive_data(frame(f.GOAWAY, 0, 0, struct.pack(">II", 1, f.ENHANCE_YOUR_CALM) + b"pings"))
    event = call.next_event()
    assert isinstance(event, Failed) and event.code == "RESOURCE_EXHAUSTED"
    assert "pings" in event.details


def test_graceful_goaway_lets_the_stream_finish_and_a_close_after_it_fails() -> None:
    call = started()
    call.receive_data(frame(f.GOAWAY, 0, 0, struct.pack(">II", 1, f.NO_ERROR)))
    call.receive_data(frame(f.DATA, 0, 1, grpc_message(b"last")))
    assert call.next_event() == Message(b"last")
    call.connection_lost()
    event = call.next_event()
    assert isinstance(event, Failed) and event.code == "UNAVAILABLE" and "GOAWAY" in event.details
    call = started()
    call.receive_data(frame(f.GOAWAY, 0, 0, struct.pack(">II", 0, f.NO_ERROR)))
    assert isinstance(call.next_event(), Failed)  # our stream was not processed


def test_compressed_and_oversized_messages_are_refused() -> None:
    call = started()
    call.receive_data(frame(f.DATA, 0, 1, b"\x01" + struct.pack(">I", 2) + b"zz"))
    assert call.next_event() == Failed(
        "INTERNAL", "the server sent a compressed message (not supported)"
    )
    call = started(max_message_size=1000)
    call.receive_data(frame(f.DATA, 0, 1, b"\x00" + struct.pack(">I", 1001)))
    event = call.next_event()
    assert isinstance(event, Failed) and event.code == "RESOURCE_EXHAUSTED"


def test_end_stream_on_data_without_trailers_fails() -> None:
    call = started()
    call.receive_data(frame(f.DATA, f.END_STREAM, 1, grpc_message(b"x")))
    assert events(call) == [
        Message(b"x"),
        Failed("INTERNAL", "the server ended the stream without grpc-status trailers"),
    ]


def test_cancel_resets_the_stream() -> None:
    call = started()
    call.cancel()
    assert sent(call) == [(f.RST_STREAM, 0, 1, struct.pack(">I", f.CANCEL))]
    assert call.next_event() == Failed("CANCELLED", "the client cancelled the stream")
    call.receive_data(frame(f.DATA, 0, 1, grpc_message(b"late")))
    assert call.next_event() == Failed("CANCELLED", "the client cancelled the stream")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (frame(f.PUSH_PROMISE, f.END_HEADERS, 1, b"\0\0\0\2"), "PUSH_PROMISE"),
        (frame(f.WINDOW_UPDATE, 0, 0, b"\0\0\0\0"), "WINDOW_UPDATE of 0"),
        (frame(f.SETTINGS, 0, 0, b"\0\4\x80\0\0\0"), "INITIAL_WINDOW_SIZE"),
        (frame(f.PING, 0, 0, b"short"), "malformed PING"),
        (frame(f.DATA, 0, 3, b"x"), "DATA on stream 3"),
        (b"\x10\0\x01\0\0\0\0\0\0", "frame of 1048577 bytes"),
    ],
)
def test_protocol_errors_send_goaway_and_fail(data: bytes, fragment: str) -> None:
    call = started()
    call.receive_data(data)
    event = call.next_event()
    assert isinstance(event, Failed) and event.code == "INTERNAL" and fragment in event.details
    assert sent(call)[-1][0] == f.GOAWAY


def test_unknown_frame_types_and_priority_are_ignored() -> None:
    call = started()
    call.receive_data(frame(0xFA, 0xFF, 1, b"whatever") + frame(f.PRIORITY, 0, 1, b"\0" * 5))
    call.receive_data(frame(f.DATA, 0, 1, grpc_message(b"still here")))
    assert call.next_event() == Message(b"still here")


# --- flow control -----------------------------------------------------------------------------


def data_frames(frames: list[tuple[int, int, int, bytes]]) -> list[int]:
    return [len(p) for kind, _, _, p in frames if kind == f.DATA]


def test_sending_is_split_at_max_frame_size_and_stops_at_the_peer_window() -> None:
    call = started()
    call.send_message(b"m" * 100_000)
    assert data_frames(sent(call)) == [16_384] * 3 + [65_535 - 3 * 16_384]
    assert call.pending_send == 100_005 - 65_535
    call.receive_data(frame(f.WINDOW_UPDATE, 0, 1, struct.pack(">I", 50_000)))
    assert data_frames(sent(call)) == []  # the connection window is still closed
    call.receive_data(frame(f.WINDOW_UPDATE, 0, 0, struct.pack(">I", 10_000)))
    assert data_frames(sent(call)) == [10_000]
    settings_ = struct.pack(">HI", f.S_MAX_FRAME_SIZE, 20_000)
    call.receive_data(frame(f.SETTINGS, 0, 0, settings_))
    call.receive_data(frame(f.WINDOW_UPDATE, 0, 0, struct.pack(">I", 1_000_000)))
    assert data_frames(sent(call)) == [20_000, 4470]
    assert call.pending_send == 0


def test_settings_initial_window_size_moves_the_stream_window() -> None:
    call = new_call()
    call.data_to_send()
    call.receive_data(frame(f.SETTINGS, 0, 0, struct.pack(">HI", f.S_INITIAL_WINDOW_SIZE, 10)))
    call.send_message(b"abcdefghijklmnop")
    assert data_frames(sent(call)) == [10]
    call.receive_data(frame(f.SETTINGS, 0, 0, struct.pack(">HI", f.S_INITIAL_WINDOW_SIZE, 1000)))
    assert data_frames(sent(call)) == [11]


def window_updates(call: GrpcCall) -> list[tuple[int, int]]:
    return [
        (stream, int.from_bytes(p, "big"))
        for kind, _, stream, p in sent(call)
        if kind == f.WINDOW_UPDATE
    ]


def test_received_data_is_credited_back_in_quarters_of_the_window() -> None:
    call = started(local_window=4000)
    call.receive_data(frame(f.DATA, 0, 1, grpc_message(b"x" * 900)))
    assert window_updates(call) == []  # 905 < 1000
    call.receive_data(frame(f.DATA, 0, 1, grpc_message(b"y" * 100)))
    assert window_updates(call) == [(0, 1010), (1, 1010)]
    assert events(call)[:2] == [Message(b"x" * 900), Message(b"y" * 100)]


def test_unread_messages_hold_credit_until_the_application_reads() -> None:
    call = started(local_window=4000)
    for _ in range(3):
        call.receive_data(frame(f.DATA, 0, 1, grpc_message(b"z" * 995)))
    assert window_updates(call) == [(0, 1000), (1, 1000), (0, 1000), (1, 1000)]
    call.receive_data(frame(f.DATA, 0, 1, grpc_message(b"z" * 995)))
    assert window_updates(call) == []  # 4000 unread bytes > half the window
    assert call.next_event() == Message(b"z" * 995)
    assert call.next_event() == Message(b"z" * 995)
    assert window_updates(call) == [(0, 2000), (1, 2000)]
    call.receive_data(frame(f.DATA, 0, 1, b"z" * 4001))  # the window is 4000 again
    event = call.next_event()
    assert isinstance(event, Message)  # queued before the overflow
    assert next(e for e in events(call) if isinstance(e, Failed)).details.endswith(
        "DATA beyond the flow-control window"
    )


# --- the shell's pure helpers ------------------------------------------------------------------


def test_split_target() -> None:
    assert split_target("127.0.0.1:18000") == ("127.0.0.1", 18000)
    assert split_target("dns:///cp.local:80") == ("cp.local", 80)
    assert split_target("[::1]:9") == ("::1", 9)
    with pytest.raises(StreamError) as err:
        split_target("nohost")
    assert err.value.code == "UNAVAILABLE"
