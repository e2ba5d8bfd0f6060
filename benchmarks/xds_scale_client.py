"""Simulated plait proxies for ``xds_scale.py``: many ADS streams in one process.

Each simulated proxy opens its own grpc.aio channel (its own TCP connection: a local
subchannel pool, so channels are not merged) and one ``StreamAggregatedResources`` stream,
and behaves like :mod:`plait.proxy.xds_client` on the wire, without decoding resources:

- first request: CDS wildcard, carrying the ``Node`` (docs/xds.md, ``plait_proxy: true``,
  an outbound port and one inbound service), then LDS wildcard;
- after a CDS response: ACK it, then subscribe EDS by the names of the EDS clusters in it;
  after an LDS response: ACK it, then subscribe RDS ``outbound``;
- every response is ACKed at once (its version and nonce, the names subscribed);
- a stream that fails is reopened on a fresh channel after a jittered backoff, as
  ``plait proxy`` does, resubscribing with the versions it holds.

For each stream and type it records ``(receive time, ACK-written time, version, bytes)``
with ``time.monotonic()`` (CLOCK_MONOTONIC: the same clock in every process on the
machine, so the orchestrator's change time can be compared with it).

Control: JSON lines on stdin, one JSON line answered on stdout per command.

- ``{"cmd": "status"}`` -> streams open, streams with all four types ACKed, failures;
- ``{"cmd": "wait", "type": URL, "t0": T, "timeout": S, "check": {...}, "services": [i,
  ...]}`` -> for every affected stream, the first response of ``type`` received at or
  after ``t0`` whose version differs from the one the stream held at ``t0``; waits until
  every affected stream has one or ``timeout``. A stream is affected when the index of its
  local service is in ``services`` (absent or null: every stream is). ``check`` optionally
  verifies the change in the first affected stream's response (decoded);
- ``{"cmd": "unneeded", "type": URL, "t0": T, "services": [...]}`` (once the control plane
  is idle again) -> how many of the streams *not* affected got a new version of ``type``
  after ``t0`` anyway;
- ``{"cmd": "stop"}`` -> closes the streams and exits.

Run by ``xds_scale.py``, not by hand:
``python benchmarks/xds_scale_client.py --target 127.0.0.1:P --first 0 --count 500 ...``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections import Counter, deque
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SOTW_PARTIAL = "plait.xds.sotw_partial"  # client feature: changed-only EDS/RDS (docs/xds.md)
TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
HISTORY = 16
KEPT = 4  # responses kept for the change check, per type
CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per simulated proxy
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 60_000),
]

_cluster_cache: dict[bytes, tuple[str, bool]] = {}
"""Serialized Cluster -> (name, is EDS): the shared clusters are parsed once per process."""


def _eds_names(resources: Any) -> list[str]:
    names = []
    for packed in resources:
        value = packed.value
        hit = _cluster_cache.get(value)
        if hit is None:
            cluster = cluster_pb2.Cluster.FromString(value)
            hit = (cluster.name, cluster.type == cluster_pb2.Cluster.EDS)
            if len(_cluster_cache) < 100_000:
                _cluster_cache[value] = hit
        if hit[1]:
            names.append(hit[0])
    return sorted(names)


def _deserialize(data: bytes) -> tuple[int, Any]:
    return len(data), discovery_pb2.DiscoveryResponse.FromString(data)


def make_node(node_id: str, index: int, services: int, partial: bool = False) -> Any:
    node = base_pb2.Node(id=node_id, user_agent_name="plait-xds-scale")
    if partial:  # changed-only EDS/RDS pushes (docs/xds.md); we only ACK, never merge
        node.client_features.append(SOTW_PARTIAL)
    node.metadata.update(
        {
            "plait_proxy": True,
            "outbound": {"address": "127.0.0.1", "port": 20000 + index % 20000},
            "inbound": [
                {
                    "service": f"svc-{index % services:04d}",
                    "address": "127.0.0.1",
                    "port": 40000 + index % 20000,
                    "app_address": "127.0.0.1",
                    "app_port": 9000,
                }
            ],
        }
    )
    return node


class Stream:
    """One simulated proxy: one channel, one ADS stream."""

    def __init__(self, target: str, node: Any, keep_first: bool, service: int = 0) -> None:
        self.target = target
        self.service = service  # index of its local (inbound) service
        self.node = node
        self.keep_first = keep_first  # keep decoded responses for change checks
        self.history: dict[str, deque[tuple[float, float, str, int]]] = {
            t: deque(maxlen=HISTORY) for t in TYPES
        }
        self.kept: dict[str, deque[tuple[float, Any]]] = {t: deque(maxlen=KEPT) for t in TYPES}
        self.acked: dict[str, str] = {}
        self.nonces: dict[str, str] = {}
        self.names: dict[str, list[str]] = {}
        self.error: str | None = None  # why the last session ended
        self.failures = 0  # sessions that ended (each one reconnected)
        self.open = False
        self.responses = 0
        self.channel: Any = None
        self.call: Any = None

    def synced(self) -> bool:
        """Every type has been received and ACKed at least once."""
        return all(self.history[t] for t in TYPES)

    def _request(self, type_url: str) -> Any:
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            version_info=self.acked.get(type_url, ""),
            resource_names=self.names.get(type_url, ()),
            response_nonce=self.nonces.get(type_url, ""),
        )
        return req

    async def run(self) -> None:
        """Sessions until cancelled: like ``plait proxy``, a failed stream is reopened on a
        fresh channel after a jittered exponential backoff (0.25 s doubling to 5 s; reset
        by a session that got a response), resubscribing with the versions it holds."""
        attempt = 0
        while True:
            got = self.responses
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self.error = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
            finally:
                self.open = False
                if self.channel is not None:
                    with contextlib.suppress(Exception):
                        await self.channel.close(grace=None)
                    self.channel = None
            self.failures += 1
            attempt = 0 if self.responses > got else attempt + 1
            base = min(5.0, 0.25 * 2.0 ** min(attempt, 8))
            await asyncio.sleep(base / 2 + random.uniform(0, base / 2))

    async def _session(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        method = self.channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=_deserialize,
        )
        call = self.call = method()
        self.nonces = {}
        first = self._request(CLUSTER)
        first.node.CopyFrom(self.node)
        await call.write(first)
        await call.write(self._request(LISTENER))
        for named in (ENDPOINT, ROUTE):  # a reconnect: the names the config needs
            if self.names.get(named):
                await call.write(self._request(named))
        self.open = True
        while True:
            item = await call.read()
            if item is grpc.aio.EOF:
                raise ConnectionError("the control plane closed the stream")
            t_recv = time.monotonic()
            size, resp = item
            type_url = resp.type_url
            version = resp.version_info
            self.nonces[type_url] = resp.nonce
            self.acked[type_url] = version
            follow: list[str] = []
            if type_url == CLUSTER:
                names = _eds_names(resp.resources)
                if names != self.names.get(ENDPOINT):
                    self.names[ENDPOINT] = names
                    follow.append(ENDPOINT)
            elif type_url == LISTENER and ROUTE not in self.names:
                self.names[ROUTE] = ["outbound"]
                follow.append(ROUTE)
            await call.write(self._request(type_url))  # the ACK
            t_ack = time.monotonic()
            self.responses += 1
            self.history[type_url].append((t_recv, t_ack, version, size))
            if self.keep_first:
                self.kept[type_url].append((t_recv, resp))
            for other in follow:
                await call.write(self._request(other))

    def first_change(self, type_url: str, t0: float) -> tuple[float, float, str, int] | None:
        """The first response of ``type_url`` at/after ``t0`` with a version other than the
        one held at ``t0``."""
        before: str | None = None
        for entry in self.history[type_url]:
            if entry[0] < t0:
                before = entry[2]
            elif entry[2] != before:
                return entry
        return None

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self.channel is not None:
            await self.channel.close(grace=None)


def _check(stream: Stream, type_url: str, t_recv: float, check: dict[str, Any]) -> bool | None:
    """Does the first stream's response received at ``t_recv`` carry the change?"""
    for t, resp in stream.kept[type_url]:
        if t != t_recv:
            continue
        if check.get("kind") == "endpoint":
            for packed in resp.resources:
                cla = endpoint_pb2.ClusterLoadAssignment.FromString(packed.value)
                if cla.cluster_name != check["cluster"]:
                    continue
                for group in cla.endpoints:
                    for lb in group.lb_endpoints:
                        sa = lb.endpoint.address.socket_address
                        if sa.address == check["address"] and sa.port_value == check["port"]:
                            return True
            return False
        if check.get("kind") == "route":
            for packed in resp.resources:
                rc = route_pb2.RouteConfiguration.FromString(packed.value)
                for vh in rc.virtual_hosts:
                    if vh.name != check["service"]:
                        continue
                    for route in vh.routes:
                        weights = {
                            c.name: c.weight.value for c in route.route.weighted_clusters.clusters
                        }
                        if weights and weights == check["weights"]:
                            return True
            return False
    return None


async def _wait(all_streams: list[Stream], cmd: dict[str, Any]) -> dict[str, Any]:
    type_url, t0 = cmd["type"], float(cmd["t0"])
    deadline = time.monotonic() + float(cmd.get("timeout", 60))
    wanted = cmd.get("services")
    affected = set(wanted) if wanted is not None else None
    streams = [s for s in all_streams if affected is None or s.service in affected]
    found: dict[int, tuple[float, float, str, int]] = {}
    while True:
        for i, s in enumerate(streams):
            if i not in found:
                hit = s.first_change(type_url, t0)
                if hit is not None:
                    found[i] = hit
        if len(found) == len(streams) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.005)
    checked = None
    if cmd.get("check") and 0 in found:
        checked = _check(streams[0], type_url, found[0][0], cmd["check"])
    return {
        "recv": [found[i][0] - t0 for i in sorted(found)],
        "ack": [found[i][1] - t0 for i in sorted(found)],
        "bytes": sum(found[i][3] for i in found),
        "versions": sorted({found[i][2] for i in found}),
        "missing": len(streams) - len(found),
        "check": checked,
        "failures": sum(s.failures for s in all_streams),
    }


def _unneeded(streams: list[Stream], cmd: dict[str, Any]) -> dict[str, Any]:
    affected = set(cmd.get("services") or ())
    others = [s for s in streams if s.service not in affected] if cmd.get("services") else []
    t0 = float(cmd["t0"])
    pushed = sum(1 for s in others if s.first_change(cmd["type"], t0) is not None)
    return {"spared": len(others), "unneeded": pushed}


def _status(streams: list[Stream]) -> dict[str, Any]:
    errors = Counter(s.error for s in streams if s.error)
    return {
        "streams": len(streams),
        "open": sum(1 for s in streams if s.open),
        "synced": sum(1 for s in streams if s.synced()),
        "responses": sum(s.responses for s in streams),
        "failed_streams": sum(1 for s in streams if s.failures),
        "failures": sum(s.failures for s in streams),
        "errors": dict(errors),
        "last_first_ack": max(
            (max(s.history[t][0][1] for t in TYPES) if s.synced() else 0.0) for s in streams
        )
        if streams
        else 0.0,
    }


async def main_async(args: argparse.Namespace) -> None:
    streams = [
        Stream(
            args.target,
            make_node(f"proxy-{i:05d}", i, args.services, args.partial),
            # the first stream keeps its last responses for the change check; with --keep-all
            # (scoped runs: small responses, and the first affected stream varies) every one
            keep_first=args.keep_all or n == 0,
            service=i % args.services,
        )
        for n, i in enumerate(range(args.first, args.first + args.count))
    ]
    tasks: list[asyncio.Task[None]] = []
    for n, s in enumerate(streams):
        tasks.append(asyncio.create_task(s.run()))
        if args.ramp and n % 50 == 49:
            await asyncio.sleep(args.ramp)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": True, "streams": len(streams)})
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = json.loads(line)
            if cmd["cmd"] == "stop":
                break
            try:
                if cmd["cmd"] == "status":
                    reply(_status(streams))
                elif cmd["cmd"] == "unneeded":
                    reply(_unneeded(streams, cmd))
                elif cmd["cmd"] == "wait":
                    reply(await _wait(streams, cmd))
                else:
                    reply({"error": f"unknown command {cmd['cmd']!r}"})
            except Exception as exc:
                reply({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        for t in tasks:
            t.cancel()
        for s in streams:
            with contextlib.suppress(Exception):
                await s.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        reply({"stopped": True})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True)
    p.add_argument("--first", type=int, default=0, help="index of the first simulated proxy")
    p.add_argument("--count", type=int, required=True, help="simulated proxies (streams)")
    p.add_argument("--services", type=int, required=True, help="services in the mesh")
    p.add_argument("--ramp", type=float, default=0.0, help="pause after every 50 stream opens")
    p.add_argument("--keep-all", action="store_true", help="every stream keeps its last responses")
    p.add_argument("--partial", action="store_true", help="announce plait.xds.sotw_partial")
    args = p.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
