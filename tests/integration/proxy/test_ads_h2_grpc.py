"""plait.proxy.ads_h2 against real grpcio servers (grpc.aio on 127.0.0.1, port 0).

The peer is grpc-core's HTTP/2 stack, not a mock: its HPACK encoder (Huffman is covered
by the RFC 7541 vectors of the unit tests), its flow control and BDP pings, its trailers
and its shutdown. One server speaks a generic byte-level stream-stream method; one is the
real ADS servicer of the control plane, so the xDS path (DiscoveryRequest in,
DiscoveryResponse out) is exercised as the proxy will use it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2

from plait.control.server import GRPC_OPTIONS, MIN_CLIENT_PING_INTERVAL_MS, grpc_options
from plait.proxy.ads_h2 import ADS_METHOD, AdsStream, StreamError, open_stream

pytestmark = pytest.mark.timeout(60)

METHOD = "/test.Echo/Chat"
BIG = 6 * 1024 * 1024


def sync(test: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run an async test in its own event loop (as tests/integration/proxy/test_xds_client.py)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


async def chat(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    """Echo reversed; a few requests are orders: big, fail, end, hang."""
    async for req in requests:
        if req == b"big":
            yield bytes(range(256)) * (BIG // 256)
        elif req == b"fail":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nö way: 100% refused")
        elif req == b"end":
            return
        elif req.startswith(b"burst "):
            for i in range(int(req.split()[1])):
                yield b"burst %d" % i
        else:
            yield req[::-1]


async def start_server(**options: Any) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=list(options.items()) or None)
    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Chat": grpc.stream_stream_rpc_method_handler(chat)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def with_stream(port: int, **kw: Any) -> AdsStream:
    return await open_stream(f"127.0.0.1:{port}", METHOD, connect_timeout=5.0, **kw)


@sync
async def test_many_messages_both_ways_interleaved() -> None:
    server, port = await start_server()
    stream = await with_stream(port)
    try:

        async def writer() -> None:
            for i in range(500):
                await stream.write(b"message %d " % i + b"x" * (i * 37))

        task = asyncio.create_task(writer())
        for i in range(500):
            expected = (b"message %d " % i + b"x" * (i * 37))[::-1]
            assert await asyncio.wait_for(stream.read(), 10) == expected
        await task
        await stream.write(b"burst 2000")
        for i in range(2000):
            assert await stream.read() == b"burst %d" % i
        await stream.write(b"end")
        assert await stream.read() is None  # grpc-status 0
        assert await stream.read() is None
    finally:
        await stream.close()
        await server.stop(None)


@sync
async def test_multi_megabyte_messages_flow_both_ways() -> None:
    server, port = await start_server()
    stream = await with_stream(port)
    try:
        for _ in range(3):
            await stream.write(b"big")
            data = await asyncio.wait_for(stream.read(), 20)
            assert data == bytes(range(256)) * (BIG // 256)
        upload = bytes(range(251)) * (4_000_000 // 251)  # grpc's default limit is 4 MiB
        await stream.write(upload)  # 61 windows of the default 64 KiB
        assert await asyncio.wait_for(stream.read(), 20) == upload[::-1]
    finally:
        await stream.close()
        await server.stop(None)


@sync
async def test_a_non_ok_status_is_a_stream_error_with_code_and_details() -> None:
    server, port = await start_server()
    stream = await with_stream(port)
    try:
        await stream.write(b"ping")
        assert await stream.read() == b"gnip"
        await stream.write(b"fail")
        with pytest.raises(StreamError) as err:
            await stream.read()
        assert err.value.code == "FAILED_PRECONDITION"
        assert err.value.details == "nö way: 100% refused"
        with pytest.raises(StreamError):
            await stream.write(b"more")
    finally:
        await stream.close()
        await server.stop(None)


@sync
async def test_an_unknown_method_is_unimplemented() -> None:
    server, port = await start_server()
    stream = await open_stream(f"127.0.0.1:{port}", "/no.Such/Method", connect_timeout=5.0)
    try:
        await stream.write(b"x")
        with pytest.raises(StreamError) as err:
            await stream.read()
        assert err.value.code == "UNIMPLEMENTED"
    finally:
        await stream.close()
        await server.stop(None)


@sync
async def test_the_server_going_away_mid_stream_fails_the_read() -> None:
    server, port = await start_server()
    stream = await with_stream(port)
    try:
        await stream.write(b"hello")
        assert await stream.read() == b"olleh"
        pending = asyncio.create_task(stream.read())
        await asyncio.sleep(0.1)
        await server.stop(None)
        with pytest.raises(StreamError) as err:
            await asyncio.wait_for(pending, 10)
        assert err.value.code in {"UNAVAILABLE", "CANCELLED"}, err.value
    finally:
        await stream.close()


@sync
async def test_a_server_message_above_the_limit_is_refused() -> None:
    server, port = await start_server()
    stream = await with_stream(port, max_message_size=1024 * 1024)
    try:
        await stream.write(b"big")
        with pytest.raises(StreamError) as err:
            await stream.read()
        assert err.value.code == "RESOURCE_EXHAUSTED"
    finally:
        await stream.close()
        await server.stop(None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@sync
async def test_connection_refused_is_unavailable() -> None:
    port = free_port()
    with pytest.raises(StreamError) as err:
        await open_stream(f"127.0.0.1:{port}", METHOD, connect_timeout=5.0)
    assert err.value.code == "UNAVAILABLE"
    assert f"127.0.0.1:{port}" in err.value.details


@sync
async def test_cancel_ends_a_pending_read_with_cancelled() -> None:
    server, port = await start_server()
    stream = await with_stream(port)
    try:
        pending = asyncio.create_task(stream.read())
        await asyncio.sleep(0.1)
        stream.cancel()
        with pytest.raises(StreamError) as err:
            await asyncio.wait_for(pending, 5)
        assert err.value.code == "CANCELLED"
    finally:
        await stream.close()
        await server.stop(None)


@sync
async def test_keepalive_fails_a_stream_whose_peer_stops_answering() -> None:
    """A peer that accepted the connection and then went silent (a frozen host)."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stream = await with_stream(port, keepalive_interval=0.2, keepalive_timeout=0.3)
    try:
        with pytest.raises(StreamError) as err:
            await asyncio.wait_for(stream.read(), 5)
        assert err.value.code == "UNAVAILABLE"
        assert "keepalive ping" in err.value.details
    finally:
        await stream.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


@sync
async def test_the_server_accepts_idle_pings_at_its_minimum_interval() -> None:
    """Pings on a stream without data, as far apart as the control plane's options ask, are
    never counted as abuse: no GOAWAY ``too_many_pings`` after grpc-core's three strikes.
    grpc-core ignores a channel argument it does not know, so with a wrong name the server
    keeps its default minimum (5 minutes) and ends the stream after the fourth ping."""
    server, port = await start_server(**dict(grpc_options(min_client_ping_interval_ms=200)))
    stream = await with_stream(port, keepalive_interval=0.3, keepalive_timeout=2.0)
    try:
        await asyncio.sleep(3.0)  # ten pings without data
        await stream.write(b"alive")
        assert await asyncio.wait_for(stream.read(), 5) == b"evila"
    finally:
        await stream.close()
        await server.stop(None)


@sync
async def test_pings_closer_than_the_servers_minimum_end_the_stream() -> None:
    """The other side of the test above: the server enforces its minimum."""
    server, port = await start_server(**dict(grpc_options(min_client_ping_interval_ms=5_000)))
    stream = await with_stream(port, keepalive_interval=0.3, keepalive_timeout=2.0)
    try:
        with pytest.raises(StreamError) as err:
            await asyncio.wait_for(stream.read(), 10)
        assert err.value.code == "RESOURCE_EXHAUSTED"
        assert "too_many_pings" in err.value.details
    finally:
        await stream.close()
        await server.stop(None)


def test_the_proxy_pings_no_closer_than_the_control_plane_allows() -> None:
    interval = inspect.signature(open_stream).parameters["keepalive_interval"].default
    assert interval * 1000 >= MIN_CLIENT_PING_INTERVAL_MS


# --- the real ADS service ------------------------------------------------------------------


@sync
async def test_discovery_requests_and_responses_with_the_ads_servicer() -> None:
    from envoy.service.discovery.v3 import ads_pb2_grpc

    class Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
        async def StreamAggregatedResources(
            self, request_iterator: AsyncIterator[Any], context: Any
        ) -> AsyncIterator[Any]:
            n = 0
            async for request in request_iterator:
                n += 1
                yield discovery_pb2.DiscoveryResponse(
                    type_url=request.type_url,
                    version_info=f"v{n}",
                    nonce=f"{request.node.id}-{n}",
                )

    server = grpc.aio.server(options=GRPC_OPTIONS)
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(Ads(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stream = await open_stream(f"127.0.0.1:{port}", ADS_METHOD, connect_timeout=5.0)
    try:
        for n in range(1, 4):
            request = discovery_pb2.DiscoveryRequest(type_url=f"type/{n}")
            request.node.id = "node-a"
            await stream.write(request.SerializeToString())
            response = discovery_pb2.DiscoveryResponse.FromString(await stream.read() or b"")
            assert (response.type_url, response.version_info) == (f"type/{n}", f"v{n}")
            assert response.nonce == f"node-a-{n}"
    finally:
        await stream.close()
        await server.stop(None)
