"""XdsClient against a scripted in-test ADS server (grpc.aio on 127.0.0.1, port 0).

The server records every DiscoveryRequest of every stream and sends exactly the
responses a test tells it to, so each test reads as a conversation: what the client asks,
what the server answers, what the client ACKs or NACKs.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format

from plait.proxy.runtime import ProxyConfig
from plait.proxy.xds_client import XdsClient
from plait.xds import builders as b
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

pytestmark = pytest.mark.timeout(60)

WAIT = 5.0
METADATA = {"plait_proxy": True, "outbound": {"address": "127.0.0.1", "port": 15001}}


# --- a scripted ADS server ----------------------------------------------------------------


class Stream:
    """One ADS stream as the server sees it."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[Any] = asyncio.Queue()
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self._nonce = 0

    async def next_request(self) -> Any:
        return await asyncio.wait_for(self.requests.get(), WAIT)

    def respond(self, type_url: str, version: str, resources: list[Any]) -> str:
        self._nonce += 1
        nonce = f"nonce-{self._nonce}"
        self.responses.put_nowait(
            discovery_pb2.DiscoveryResponse(
                type_url=type_url,
                version_info=version,
                nonce=nonce,
                resources=[b.pack(r) for r in resources],
            )
        )
        return nonce


class ScriptedAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self) -> None:
        self.streams: asyncio.Queue[Stream] = asyncio.Queue()

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        stream = Stream()
        self.streams.put_nowait(stream)

        async def pump() -> None:
            async for request in request_iterator:
                stream.requests.put_nowait(request)

        reader = asyncio.create_task(pump())
        try:
            while True:
                yield await stream.responses.get()
        finally:
            reader.cancel()

    async def next_stream(self) -> Stream:
        return await asyncio.wait_for(self.streams.get(), WAIT)


async def start_server(port: int = 0) -> tuple[grpc.aio.Server, ScriptedAds, int]:
    ads = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, ads, bound


# --- resources ----------------------------------------------------------------------------


def eds_cluster(name: str) -> Any:
    return b.make_eds_cluster(name, connect_timeout=1, lb_policy="least_request")


def cla(name: str, port: int = 15006) -> Any:
    return b.make_load_assignment(name, [("10.0.0.1", port)])


def listener() -> Any:
    return b.make_http_listener(
        "outbound", "127.0.0.1", 15001, direction="outbound", rds_name="outbound"
    )


PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def route_config() -> Any:
    routes = [b.make_route(b.make_route_match(prefix="/"), cluster="outbound|a")]
    return b.make_route_configuration("outbound", [b.make_virtual_host("a", ["a", "a:80"], routes)])


# --- helpers ------------------------------------------------------------------------------


def expect(
    request: Any, type_url: str, version: str = "", nonce: str = "", names: tuple[str, ...] = ()
) -> None:
    assert request.type_url == type_url
    assert (request.version_info, request.response_nonce) == (version, nonce)
    assert tuple(request.resource_names) == names
    assert not request.HasField("error_detail")


async def eventually(check: Callable[[], bool]) -> None:
    async def wait() -> None:
        while not check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), WAIT)


class Proxy:
    """A client plus everything it handed to on_config."""

    def __init__(self, port: int, on_config: Callable[[ProxyConfig], None] | None = None) -> None:
        self.configs: list[ProxyConfig] = []
        self.client = XdsClient(
            f"127.0.0.1:{port}",
            "node-1",
            METADATA,
            on_config or self.configs.append,
            backoff_initial=0.05,
            backoff_max=0.2,
            rng=random.Random(7),
        )
        self.task = asyncio.create_task(self.client.run())

    async def close(self) -> None:
        self.client.stop()
        await asyncio.wait_for(self.task, WAIT)


async def sync(stream: Stream) -> None:
    """The first conversation: subscriptions SDS, CDS, LDS (wildcards), then CDS, EDS, LDS,
    RDS and SDS answered, each ACKed; leaves the client synced."""
    first = await stream.next_request()
    expect(first, SECRET)
    assert first.node.id == "node-1"
    assert json_format.MessageToDict(first.node.metadata) == METADATA
    second = await stream.next_request()
    expect(second, CLUSTER)
    assert not second.HasField("node")  # only the first request carries it
    expect(await stream.next_request(), LISTENER)

    static = b.make_static_cluster("inbound|a", [("127.0.0.1", 9001)], connect_timeout=1)
    nonce = stream.respond(CLUSTER, "c1", [eds_cluster("outbound|a"), static])
    expect(await stream.next_request(), CLUSTER, "c1", nonce)
    expect(await stream.next_request(), ENDPOINT, names=("outbound|a",))

    nonce = stream.respond(ENDPOINT, "e1", [cla("outbound|a")])
    expect(await stream.next_request(), ENDPOINT, "e1", nonce, ("outbound|a",))

    nonce = stream.respond(LISTENER, "l1", [listener()])
    expect(await stream.next_request(), LISTENER, "l1", nonce)
    expect(await stream.next_request(), ROUTE, names=("outbound",))

    nonce = stream.respond(ROUTE, "r1", [route_config()])
    expect(await stream.next_request(), ROUTE, "r1", nonce, ("outbound",))

    nonce = stream.respond(SECRET, "s1", [b.make_trust_bundle_secret("trust-bundle", PEM)])
    expect(await stream.next_request(), SECRET, "s1", nonce)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


# --- tests --------------------------------------------------------------------------------


def test_client_subscribes_acks_and_delivers_each_config() -> None:
    async def main() -> None:
        server, ads, port = await start_server()
        proxy = Proxy(port)
        try:
            await sync(await ads.next_stream())
            await eventually(lambda: len(proxy.configs) == 5)
            cfg = proxy.configs[-1]
            assert sorted(cfg.clusters) == ["inbound|a", "outbound|a"]
            assert cfg.endpoints["outbound|a"][0].port == 15006
            assert cfg.listeners["outbound"].route_config_name == "outbound"
            assert cfg.secrets["trust-bundle"].trusted_ca == PEM
            assert cfg.route_tables["outbound"].by_domain["a:80"].name == "a"
            assert [sorted(c.versions.values()) for c in proxy.configs] == [
                ["c1"],
                ["c1", "e1"],
                ["c1", "e1", "l1"],
                ["c1", "e1", "l1", "r1"],
                ["c1", "e1", "l1", "r1", "s1"],
            ]
            client = proxy.client
            assert client.config is cfg
            assert client.connected
            assert client.last_error is None
            assert client.acked == {
                CLUSTER: "c1",
                ENDPOINT: "e1",
                LISTENER: "l1",
                ROUTE: "r1",
                SECRET: "s1",
            }
            assert client.last_nack == {}
        finally:
            await proxy.close()
            await server.stop(None)
        assert not proxy.client.connected

    run(main)


def test_unsupported_resource_is_nacked_with_the_field_and_the_config_kept() -> None:
    async def main() -> None:
        server, ads, port = await start_server()
        proxy = Proxy(port)
        try:
            stream = await ads.next_stream()
            await sync(stream)
            await eventually(lambda: len(proxy.configs) == 5)
            before = proxy.client.config

            bad = eds_cluster("outbound|b")
            bad.lb_policy = cluster_pb2.Cluster.RING_HASH
            nonce = stream.respond(CLUSTER, "c2", [eds_cluster("outbound|a"), bad])
            nack = await stream.next_request()
            assert (nack.type_url, nack.version_info, nack.response_nonce) == (
                CLUSTER,
                "c1",  # the version last ACKed, not the refused one
                nonce,
            )
            assert nack.error_detail.code == 3  # INVALID_ARGUMENT
            assert nack.error_detail.message == (
                "Cluster 'outbound|b': lb_policy: RING_HASH is not supported "
                "(use ROUND_ROBIN or LEAST_REQUEST)"
            )
            assert proxy.client.config is before
            assert len(proxy.configs) == 5
            assert proxy.client.acked[CLUSTER] == "c1"
            assert "lb_policy" in proxy.client.last_nack[CLUSTER]

            # a fixed version is accepted; the EDS subscription follows the new clusters
            nonce = stream.respond(CLUSTER, "c3", [eds_cluster("outbound|b")])
            expect(await stream.next_request(), CLUSTER, "c3", nonce)
            expect(await stream.next_request(), ENDPOINT, "e1", "nonce-2", ("outbound|b",))
            assert proxy.client.last_nack == {}
            assert proxy.client.acked[CLUSTER] == "c3"
            assert proxy.client.config.endpoints == {}  # outbound|a's endpoints left with it
        finally:
            await proxy.close()
            await server.stop(None)

    run(main)


def test_a_failing_on_config_is_nacked_too() -> None:
    def explode(cfg: ProxyConfig) -> None:
        raise RuntimeError("listener port in use")

    async def main() -> None:
        server, ads, port = await start_server()
        proxy = Proxy(port, on_config=explode)
        try:
            stream = await ads.next_stream()
            for _ in range(3):  # SDS, CDS, LDS subscriptions
                await stream.next_request()
            nonce = stream.respond(CLUSTER, "c1", [eds_cluster("x")])
            nack = await stream.next_request()
            assert (nack.version_info, nack.response_nonce) == ("", nonce)
            assert "listener port in use" in nack.error_detail.message
            assert proxy.client.config == ProxyConfig()
        finally:
            await proxy.close()
            await server.stop(None)

    run(main)


def test_control_plane_restart_keeps_config_and_resubscribes() -> None:
    async def main() -> None:
        server, ads, port = await start_server()
        proxy = Proxy(port)
        try:
            await sync(await ads.next_stream())
            await eventually(lambda: len(proxy.configs) == 5)
            kept = proxy.client.config

            await server.stop(None)
            await eventually(lambda: not proxy.client.connected)
            await eventually(lambda: proxy.client.last_error is not None)
            await asyncio.sleep(0.3)  # a few failed reconnects
            assert proxy.client.config is kept
            assert len(proxy.configs) == 5

            server, ads, _ = await start_server(port)  # the same port the first one got
            stream = await ads.next_stream()
            requests = [await stream.next_request() for _ in range(5)]
            assert requests[0].node.id == "node-1"
            for request, (type_url, version, names) in zip(
                requests,
                [
                    # SDS is asked for without a version on each new stream, so a
                    # control plane that is back always answers (docs/resilience.md)
                    (SECRET, "", ()),
                    (CLUSTER, "c1", ()),
                    (LISTENER, "l1", ()),
                    (ENDPOINT, "e1", ("outbound|a",)),
                    (ROUTE, "r1", ("outbound",)),
                ],
                strict=True,
            ):
                expect(request, type_url, version, "", names)
            assert proxy.client.config is kept

            nonce = stream.respond(ENDPOINT, "e2", [cla("outbound|a", port=15007)])
            expect(await stream.next_request(), ENDPOINT, "e2", nonce, ("outbound|a",))
            await eventually(lambda: proxy.client.connected)
            assert proxy.client.last_error is None
            assert proxy.client.config.endpoints["outbound|a"][0].port == 15007
            assert proxy.client.config.listeners == kept.listeners
        finally:
            await proxy.close()
            await server.stop(None)

    run(main)


def test_stop_ends_run_even_while_reconnecting() -> None:
    async def main() -> None:
        server, _ads, port = await start_server()
        await server.stop(None)  # nothing listens: the client keeps retrying
        proxy = Proxy(port)
        await eventually(lambda: proxy.client.last_error is not None)
        await proxy.close()
        assert proxy.task.done()
        assert proxy.configs == []

    run(main)
