"""`python -m plait.control` against a real grpc.aio ADS client stream.

The control plane runs as a subprocess (ports 0, ready file in a tmp dir, stopped by
PID). The client plays a plait proxy: wildcard CDS/LDS, then EDS/RDS by name, ACKs and
NACKs; the test drives config and registry changes through the HTTP API and watches what
is pushed, and what is not.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format
from google.rpc import status_pb2

from plait.jsonhttp import request_json
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE

pytestmark = pytest.mark.timeout(60)

CONFIG = """\
apiVersion: plait/v1
kind: Service
metadata: {name: orders}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: plait/v1
kind: Route
metadata: {name: orders}
spec:
  service: orders
  rules:
    - match: {pathPrefix: /v2}
      backends: [{subset: {version: v2}}]
      timeout: 5s
"""
ROUTE_CHANGE = CONFIG.replace("timeout: 5s", "timeout: 7s")


@dataclass
class Control:
    proc: subprocess.Popen[bytes]
    xds: str
    api: str
    data_dir: Path
    log: Path


def _start(tmp_path: Path, name: str = "ready.json") -> Control:
    ready = tmp_path / name
    ready.unlink(missing_ok=True)
    log = tmp_path / "control.log"
    data_dir = tmp_path / "data"
    with open(log, "ab") as out:
        args = ["--data-dir", str(data_dir), "--xds-port", "0", "--api-port", "0"]
        args += ["--ready-file", str(ready), "--lease-sweep-interval", "0.2"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "plait.control", *args, "--log-level", "DEBUG"],
            stdout=out,
            stderr=out,
        )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if ready.exists():
            info = json.loads(ready.read_text())
            assert info["pid"] == proc.pid
            return Control(proc, info["xds"], info["api"], data_dir, log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"control plane not ready:\n{log.read_text()}")


def _stop(control: Control) -> None:
    if control.proc.poll() is None:
        os.kill(control.proc.pid, signal.SIGTERM)
        try:
            control.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(control.proc.pid, signal.SIGKILL)
            control.proc.wait(timeout=5)


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    c = _start(tmp_path)
    try:
        yield c
    finally:
        _stop(c)
    assert c.proc.returncode == 0, c.log.read_text()


def proxy_node(node_id: str) -> base_pb2.Node:
    node = base_pb2.Node(id=node_id)
    json_format.ParseDict(
        {
            "plait_proxy": True,
            "outbound": {"address": "127.0.0.1", "port": 15001},
            "inbound": [
                {
                    "service": "orders",
                    "address": "127.0.0.1",
                    "port": 15002,
                    "app_address": "127.0.0.1",
                    "app_port": 9001,
                }
            ],
        },
        node.metadata,
    )
    return node


class AdsClient:
    """One ADS stream: requests through a queue, responses read one at a time."""

    def __init__(self, target: str, node: base_pb2.Node) -> None:
        self.node = node
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.queue: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        self.call = self.stub.StreamAggregatedResources(self._requests())
        self.first = True
        self.last: dict[str, discovery_pb2.DiscoveryResponse] = {}
        # Cancelling a pending call.read() cancels the whole RPC, so one task reads and
        # the test waits on a queue instead.
        self.responses: asyncio.Queue[discovery_pb2.DiscoveryResponse | BaseException] = (
            asyncio.Queue()
        )
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while (resp := await self.call.read()) is not grpc.aio.EOF:
                self.responses.put_nowait(resp)
        except BaseException as exc:
            self.responses.put_nowait(exc)

    async def _requests(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            req = await self.queue.get()
            if req is None:
                return
            yield req

    def send(
        self,
        type_url: str,
        names: list[str] | None = None,
        version: str = "",
        nonce: str = "",
        error: str | None = None,
    ) -> None:
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=names or [],
            version_info=version,
            response_nonce=nonce,
        )
        if self.first:  # only the first request of a stream carries the node
            req.node.CopyFrom(self.node)
            self.first = False
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self.queue.put_nowait(req)

    async def recv(self, timeout: float = 5.0) -> discovery_pb2.DiscoveryResponse:
        resp = await asyncio.wait_for(self.responses.get(), timeout)
        if isinstance(resp, BaseException):
            raise resp
        self.last[resp.type_url] = resp
        return resp

    async def expect_silence(self, seconds: float = 0.6) -> None:
        with pytest.raises(asyncio.TimeoutError):
            resp = await asyncio.wait_for(self.responses.get(), seconds)
            pytest.fail(f"unexpected push or error: {resp}")

    def ack(self, resp: discovery_pb2.DiscoveryResponse, names: list[str] | None = None) -> None:
        self.send(resp.type_url, names, resp.version_info, resp.nonce)

    async def close(self) -> None:
        self.queue.put_nowait(None)
        self.call.cancel()
        self.reader.cancel()
        await self.channel.close()


MESSAGES: dict[str, Any] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
}


def names_of(resp: discovery_pb2.DiscoveryResponse) -> list[str]:
    """Names of the resources in a response, in order."""
    out = []
    for packed in resp.resources:
        assert packed.type_url == resp.type_url
        msg = MESSAGES[resp.type_url].FromString(packed.value)
        out.append(msg.cluster_name if resp.type_url == ENDPOINT else msg.name)
    return out


async def api(control: Control, method: str, path: str, body: Any = None) -> Any:
    status, obj = await request_json(control.api, method, path, body)
    assert status == 200, (method, path, status, obj)
    return obj


async def heartbeat(control: Control, node_id: str, *ports_and_versions: tuple[int, str]) -> None:
    instances = [
        {"service": "orders", "address": "127.0.0.1", "port": p, "labels": {"version": v}}
        for p, v in ports_and_versions
    ]
    await api(
        control,
        "POST",
        "/v1/registry/heartbeat",
        {"node_id": node_id, "ttl": 30, "instances": instances},
    )


async def node_status(control: Control, node_id: str) -> dict[str, Any]:
    rows = (await api(control, "GET", "/v1/proxy-status"))["nodes"]
    (row,) = [r for r in rows if r["node_id"] == node_id]
    return dict(row)


async def wait_status(control: Control, node_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while True:
        row = await node_status(control, node_id)
        if row["status"] == status or time.monotonic() > deadline:
            assert row["status"] == status, row
            return row
        await asyncio.sleep(0.02)


async def connect_and_sync(control: Control, node_id: str) -> AdsClient:
    """Wildcard CDS+LDS, then EDS/RDS by name, all ACKed. Make-before-break across ACKs
    (plait.control.sequencing): the listeners (whose inline route names inbound|orders)
    wait for the CDS ACK, the routes for the EDS ACK."""
    client = AdsClient(control.xds, proxy_node(node_id))
    client.send(CLUSTER)
    client.send(LISTENER)
    cds = await client.recv()
    assert cds.type_url == CLUSTER  # clusters first, and alone
    clusters = names_of(cds)
    assert clusters == ["inbound|orders", "outbound|orders", "outbound|orders|version=v2"]
    client.ack(cds)
    lds = await client.recv()
    assert lds.type_url == LISTENER
    assert names_of(lds) == ["inbound|orders", "outbound"]
    client.ack(lds)
    eds_names = [c for c in clusters if c.startswith("outbound|")]
    client.send(ENDPOINT, eds_names)
    client.send(ROUTE, ["outbound"])
    eds = await client.recv()
    assert eds.type_url == ENDPOINT
    assert names_of(eds) == eds_names
    client.ack(eds, eds_names)
    rds = await client.recv()
    assert rds.type_url == ROUTE
    assert names_of(rds) == ["outbound"]
    client.ack(rds, ["outbound"])
    return client


def test_a_proxy_stream_from_first_request_to_nack(control: Control) -> None:
    async def scenario() -> None:
        await api(control, "POST", "/v1/apply", {"filename": "demo.yaml", "yaml": CONFIG})
        await heartbeat(control, "host-b", (16001, "v1"))
        client = await connect_and_sync(control, "host-a")
        try:
            row = await wait_status(control, "host-a", "SYNCED")
            assert row["connected"] is True
            assert set(row["types"]) == {CLUSTER, ENDPOINT, LISTENER, ROUTE}
            for t, state in row["types"].items():
                assert state["acked"] == state["sent"] == client.last[t].version_info
                assert state["error"] is None
            await client.expect_silence()

            # A Route change: only RDS moves.
            before = client.last[ROUTE].version_info
            await api(control, "POST", "/v1/apply", {"filename": "b.yaml", "yaml": ROUTE_CHANGE})
            rds = await client.recv()
            assert rds.type_url == ROUTE and rds.version_info != before
            await client.expect_silence()
            assert (await node_status(control, "host-a"))["status"] == "STALE"
            client.ack(rds, ["outbound"])
            await wait_status(control, "host-a", "SYNCED")

            # A heartbeat adding an instance: only EDS moves.
            before = client.last[ENDPOINT].version_info
            await heartbeat(control, "host-b", (16001, "v1"), (16002, "v2"))
            eds = await client.recv()
            assert eds.type_url == ENDPOINT and eds.version_info != before
            await client.expect_silence()

            # NACK it: recorded with its error, and not re-sent.
            error = "ClusterLoadAssignment 'outbound|orders': endpoints[0]: simulated refusal"
            eds_names = names_of(eds)
            client.send(ENDPOINT, eds_names, before, eds.nonce, error=error)
            row = await wait_status(control, "host-a", "NACKED")
            state = row["types"][ENDPOINT]
            assert (state["sent"], state["acked"], state["error"]) == (
                eds.version_info,
                before,
                error,
            )
            await client.expect_silence()
            # The same heartbeat again changes nothing: still not re-sent.
            await heartbeat(control, "host-b", (16001, "v1"), (16002, "v2"))
            await client.expect_silence()
            # A real change is pushed; its ACK clears the NACK.
            await heartbeat(control, "host-b", (16001, "v1"), (16002, "v2"), (16003, "v2"))
            eds2 = await client.recv()
            assert eds2.type_url == ENDPOINT
            assert eds2.version_info not in (eds.version_info, before)
            client.ack(eds2, eds_names)
            row = await wait_status(control, "host-a", "SYNCED")
            assert row["types"][ENDPOINT]["error"] is None
        finally:
            await client.close()

        # Disconnected: the row stays, marked disconnected.
        deadline = time.monotonic() + 5
        while (row := await node_status(control, "host-a"))["connected"]:
            assert time.monotonic() < deadline, row
            await asyncio.sleep(0.02)
        status = await api(control, "GET", "/v1/status")
        assert status["config_version"] == 2
        assert status["nodes"]["total"] == 1 and status["nodes"]["connected"] == 0

    asyncio.run(scenario())


def test_a_new_cluster_goes_out_before_the_route_naming_it(control: Control) -> None:
    async def scenario() -> None:
        await api(control, "POST", "/v1/apply", {"filename": "demo.yaml", "yaml": CONFIG})
        client = await connect_and_sync(control, "host-a")
        try:
            canary = CONFIG.replace("version: v2", "version: v3")
            await api(control, "POST", "/v1/apply", {"filename": "c.yaml", "yaml": canary})
            v2, v3 = "outbound|orders|version=v2", "outbound|orders|version=v3"
            # make: CDS with v3 added and v2 kept (the applied route still names it); the
            # route naming v3 waits until v3 and its endpoints are ACKed
            cds = await client.recv()
            assert cds.type_url == CLUSTER
            assert {v2, v3} <= set(names_of(cds))
            await client.expect_silence()
            client.ack(cds)  # CDS stays a wildcard subscription
            names = ["outbound|orders", v2, v3]
            client.send(ENDPOINT, names)
            eds = await client.recv()
            assert eds.type_url == ENDPOINT and names_of(eds) == names
            await client.expect_silence()
            client.ack(eds, names)
            rds = await client.recv()
            assert rds.type_url == ROUTE
            client.ack(rds, ["outbound"])
            # break: with the new route ACKed, v2 goes, then its endpoints
            cds2 = await client.recv()
            assert cds2.type_url == CLUSTER
            assert v3 in names_of(cds2) and v2 not in names_of(cds2)
            client.ack(cds2)
            client.send(ENDPOINT, ["outbound|orders", v3], eds.version_info, eds.nonce)
            eds2 = await client.recv()
            assert names_of(eds2) == ["outbound|orders", v3]
        finally:
            await client.close()

    asyncio.run(scenario())


def test_a_proxyless_client_gets_exactly_the_listeners_it_names(control: Control) -> None:
    async def scenario() -> None:
        grpc_service = CONFIG.replace("ports: [{name: http, port: 80}]", "protocol: grpc")
        await api(control, "POST", "/v1/apply", {"filename": "g.yaml", "yaml": grpc_service})
        client = AdsClient(control.xds, base_pb2.Node(id="grpc-client"))
        try:
            client.send(LISTENER, ["orders"])
            lds = await client.recv()
            assert names_of(lds) == ["orders"]
            client.ack(lds, ["orders"])
            row = await wait_status(control, "grpc-client", "SYNCED")
            assert row["plait_proxy"] is False
        finally:
            await client.close()

    asyncio.run(scenario())


def test_a_stream_without_a_node_is_refused(control: Control) -> None:
    async def scenario() -> None:
        client = AdsClient(control.xds, base_pb2.Node())
        client.send(CLUSTER)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.recv()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "node.id" in (err.value.details() or "")
        await client.close()

    asyncio.run(scenario())


def test_config_and_leases_survive_a_restart(tmp_path: Path) -> None:
    first = _start(tmp_path)
    try:

        async def before() -> None:
            await api(first, "POST", "/v1/apply", {"filename": "demo.yaml", "yaml": CONFIG})
            await heartbeat(first, "host-b", (16001, "v1"))

        asyncio.run(before())
    finally:
        _stop(first)
    assert first.proc.returncode == 0
    second = _start(tmp_path, "ready2.json")
    try:

        async def after() -> None:
            config = await api(second, "GET", "/v1/config")
            assert config["version"] == 1
            assert [r["kind"] for r in config["resources"]] == ["Service", "Route"]
            history = (await api(second, "GET", "/v1/history"))["versions"]
            assert [h["summary"] for h in history] == [
                "apply demo.yaml: +Route/orders +Service/orders"
            ]
            rows = (await api(second, "GET", "/v1/registry"))["instances"]
            assert [(r["node_id"], r["port"]) for r in rows] == [("host-b", 16001)]
            assert rows[0]["expires_in"] > 25  # a fresh ttl, not what was left of it

        asyncio.run(after())
    finally:
        _stop(second)
