"""Changed-only EDS pushes over a real ADS stream (docs/xds.md, "Changed-only pushes").

`python -m plait.control` runs as a subprocess (ports 0, ready file in a tmp dir, stopped
by PID). A plait proxy's real :class:`~plait.proxy.xds_client.XdsClient` (which announces
``plait.xds.sotw_partial``) and a plain ADS client without the feature both subscribe to
every service. An endpoint added to one service reaches the proxy as that service's
ClusterLoadAssignment alone, and the proxy still has the other service's endpoints, in
its config and in what it keeps for the last-known-good file; the plain client gets
every ClusterLoadAssignment it subscribes to, as before.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from plait.jsonhttp import request_json
from plait.proxy.lkg import config_from_payload, make_payload, serialized
from plait.proxy.runtime import ProxyConfig
from plait.proxy.xds_client import XdsClient
from plait.xds.types import ENDPOINT, SOTW_PARTIAL

pytestmark = pytest.mark.timeout(60)

CONFIG = """\
apiVersion: plait/v1
kind: Service
metadata: {name: orders}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: plait/v1
kind: Service
metadata: {name: users}
spec:
  ports: [{name: http, port: 80}]
"""
ORDERS, USERS = "outbound|orders", "outbound|users"
WAIT = 10.0


@dataclass
class Control:
    proc: subprocess.Popen[bytes]
    xds: str
    api: str
    log: Path


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    ready, log = tmp_path / "ready.json", tmp_path / "control.log"
    args = ["--data-dir", str(tmp_path / "data"), "--xds-port", "0", "--api-port", "0"]
    args += ["--ready-file", str(ready), "--log-level", "DEBUG"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "plait.control", *args], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 15
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid
        yield Control(proc, info["xds"], info["api"], log)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
    assert proc.returncode == 0, log.read_text()


async def api(control: Control, method: str, path: str, body: Any = None) -> Any:
    status, obj = await request_json(control.api, method, path, body)
    assert status == 200, (method, path, status, obj)
    return obj


async def heartbeat(control: Control, *instances: tuple[str, int]) -> None:
    body = {
        "node_id": "host-b",
        "ttl": 30,
        "instances": [{"service": s, "address": "127.0.0.1", "port": p} for s, p in instances],
    }
    await api(control, "POST", "/v1/registry/heartbeat", body)


async def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def assignment_names(response: Any) -> list[str]:
    return [
        endpoint_pb2.ClusterLoadAssignment.FromString(r.value).cluster_name
        for r in response.resources
    ]


def ports(config: ProxyConfig) -> dict[str, list[int]]:
    return {name: sorted(e.port for e in eps) for name, eps in sorted(config.endpoints.items())}


class RecordingXdsClient(XdsClient):
    """The proxy's XdsClient, noting the ClusterLoadAssignments of each EDS response."""

    eds: list[list[str]]

    async def _handle(self, call: Any, response: Any) -> None:
        if response.type_url == ENDPOINT:
            self.eds.append(assignment_names(response))
        await super()._handle(call, response)


class PlainClient:
    """An ADS client without the feature (an older proxy): subscribes and ACKs EDS."""

    def __init__(self, target: str, names: list[str]) -> None:
        self.names = names
        self.channel = grpc.aio.insecure_channel(target)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.call = stub.StreamAggregatedResources(self._requests())
        self.eds: list[list[str]] = []
        node = base_pb2.Node(id="old-proxy")
        node.metadata.update({"plait_proxy": True})
        self.queue.put_nowait(
            discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=names, node=node)
        )
        self.reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[Any]:
        while (req := await self.queue.get()) is not None:
            yield req

    async def _read(self) -> None:
        while (resp := await self.call.read()) is not grpc.aio.EOF:
            self.eds.append(assignment_names(resp))
            self.queue.put_nowait(
                discovery_pb2.DiscoveryRequest(
                    type_url=ENDPOINT,
                    resource_names=self.names,
                    version_info=resp.version_info,
                    response_nonce=resp.nonce,
                )
            )

    async def close(self) -> None:
        self.queue.put_nowait(None)
        self.call.cancel()
        self.reader.cancel()
        await self.channel.close()


def test_an_added_endpoint_sends_only_its_assignment_to_a_proxy_with_the_feature(
    control: Control,
) -> None:
    async def scenario() -> None:
        await api(control, "POST", "/v1/apply", {"filename": "mesh.yaml", "yaml": CONFIG})
        await heartbeat(control, ("orders", 16001), ("users", 16002))
        acks: list[dict[str, list[Any]]] = []
        proxy = RecordingXdsClient(
            control.xds,
            "host-a",
            {"plait_proxy": True, "outbound": {"address": "127.0.0.1", "port": 15001}},
            on_config=lambda cfg: None,
            on_ack=lambda cfg, resources: acks.append(resources),
            backoff_initial=0.05,
        )
        assert SOTW_PARTIAL in proxy._node.client_features
        proxy.eds = []
        task = asyncio.create_task(proxy.run())
        plain = PlainClient(control.xds, [ORDERS, USERS])
        try:
            await eventually(
                lambda: ports(proxy.config) == {ORDERS: [16001], USERS: [16002]}, "the proxy"
            )
            await eventually(lambda: bool(plain.eds), "the plain client")
            # the proxy applies a config before it ACKs it: SYNCED follows the ACK
            deadline = time.monotonic() + WAIT
            while True:
                rows = (await api(control, "GET", "/v1/proxy-status"))["nodes"]
                if {r["node_id"]: r["status"] for r in rows}["host-a"] == "SYNCED":
                    break
                assert time.monotonic() < deadline, "host-a never SYNCED after its first push"
                await asyncio.sleep(0.02)
            assert proxy.eds[0] == [ORDERS, USERS]  # the first push is complete
            assert plain.eds == [[ORDERS, USERS]]
            before_proxy, before_plain = len(proxy.eds), len(plain.eds)

            await heartbeat(control, ("orders", 16001), ("orders", 16003), ("users", 16002))
            await eventually(
                lambda: ports(proxy.config) == {ORDERS: [16001, 16003], USERS: [16002]},
                "the added endpoint at the proxy",
            )
            await eventually(lambda: len(plain.eds) > before_plain, "the plain client's push")
            assert proxy.eds[before_proxy:] == [[ORDERS]]  # only the changed assignment
            assert plain.eds[before_plain:] == [[ORDERS, USERS]]  # no feature: everything

            # what the proxy keeps for the last-known-good file still has every endpoint
            await eventually(lambda: proxy.acked.get(ENDPOINT) is not None, "the EDS ACK")
            stored = {t: serialized(r) for t, r in acks[-1].items()}
            restored, _ = config_from_payload(
                make_payload("host-a", 0.0, proxy.acked, stored, None), "lkg.dat"
            )
            assert ports(restored) == {ORDERS: [16001, 16003], USERS: [16002]}

            async def synced() -> bool:
                rows = (await api(control, "GET", "/v1/proxy-status"))["nodes"]
                row = {r["node_id"]: r for r in rows}["host-a"]
                return bool(row["types"][ENDPOINT]["acked"] == proxy.acked[ENDPOINT]) and (
                    row["status"] == "SYNCED"
                )

            deadline = time.monotonic() + WAIT
            while not await synced():
                assert time.monotonic() < deadline, "host-a never SYNCED after the change"
                await asyncio.sleep(0.02)
        finally:
            proxy.stop()
            await asyncio.gather(task, return_exceptions=True)
            await plain.close()

    asyncio.run(scenario())
