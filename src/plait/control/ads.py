"""The ADS server: ``StreamAggregatedResources`` over grpc.aio, state of the world.

One coroutine per stream, no threads. Each stream runs two halves joined by one
``asyncio.Event``:

- the *reader* task takes DiscoveryRequests in arrival order, hands them to the cache
  (subscription, ACK or NACK) and sets the event;
- the *writer* (the handler itself, an async generator) waits for the event and yields
  whatever :meth:`SnapshotCache.pending` says is due, in push order.

A config or registry change sets the events of the streams that have something new
(:meth:`SnapshotCache.set_inputs` calls each watch's ``wake``). Only the first request of
a stream needs to carry the ``Node``; it is parsed into a :class:`NodeInfo` as
docs/xds.md ("Node metadata") describes. When the stream ends the node is marked
disconnected; its status row stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, json_format

from plait.control.cache import PushResponse, SnapshotCache, Watch
from plait.xds.inputs import InboundPort, NodeInfo
from plait.xds.types import short_name

log = logging.getLogger("plait.control.ads")

CONTROL_PLANE_ID = "plait"


class NodeMetadataError(ValueError):
    """The client's Node is missing or its metadata does not follow docs/xds.md."""


def parse_node(node: base_pb2.Node) -> NodeInfo:
    """``Node`` (id + metadata Struct) -> :class:`NodeInfo`."""
    if not node.id:
        raise NodeMetadataError("the first DiscoveryRequest of a stream must carry node.id")
    md: dict[str, Any] = (
        json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
    )
    features = frozenset(str(f) for f in node.client_features)
    if md.get("plait_proxy") is not True:
        return NodeInfo(node_id=node.id, client_features=features)
    try:
        outbound = md.get("outbound") or {}
        inbound = tuple(
            InboundPort(
                service=str(i["service"]),
                address=str(i.get("address", "127.0.0.1")),
                port=int(i["port"]),
                app_port=int(i["app_port"]),
                app_address=str(i.get("app_address", "127.0.0.1")),
                outbound_port=int(i.get("outbound_port", 0)),
                outbound_address=str(i.get("outbound_address", "127.0.0.1")),
            )
            for i in md.get("inbound") or []
        )
        return NodeInfo(
            node_id=node.id,
            plait_proxy=True,
            outbound_address=str(outbound.get("address", "127.0.0.1")),
            outbound_port=int(outbound.get("port", 0)),
            inbound=inbound,
            client_features=features,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise NodeMetadataError(
            f"node {node.id!r}: metadata does not follow docs/xds.md ('Node metadata'): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def to_discovery_response(push: PushResponse) -> discovery_pb2.DiscoveryResponse:
    resources = []
    for msg in push.resources:
        packed = any_pb2.Any()
        packed.Pack(msg)
        resources.append(packed)
    resp = discovery_pb2.DiscoveryResponse(
        version_info=push.version,
        resources=resources,
        type_url=push.type_url,
        nonce=push.nonce,
    )
    resp.control_plane.identifier = CONTROL_PLANE_ID
    return resp


ENCODED_RESPONSES = 32
"""Encoded responses (without nonce) remembered, for streams sending the same ones."""


class ResponseEncoder:
    """:func:`to_discovery_response`, packing each set of resources once.

    Streams that send the same resources (the same message objects: snapshots share
    them, and treat them as read-only) with the same type and version get a copy of one
    response packed for the first of them; only the nonce differs. A changed-only push
    has the version of the whole state, so the key has the number of resources too: a
    complete and a changed-only response of one version do not evict each other."""

    def __init__(self, size: int = ENCODED_RESPONSES) -> None:
        self.size = size
        self._memo: OrderedDict[
            tuple[str, str, int], tuple[list[Any], discovery_pb2.DiscoveryResponse]
        ] = OrderedDict()

    def encode(self, push: PushResponse) -> discovery_pb2.DiscoveryResponse:
        key = (push.type_url, push.version, len(push.resources))
        hit = self._memo.get(key)
        if (
            hit is None
            or len(hit[0]) != len(push.resources)
            or not all(a is b for a, b in zip(hit[0], push.resources, strict=True))
        ):
            template = to_discovery_response(
                PushResponse(push.type_url, push.version, "", push.resources)
            )
            hit = (list(push.resources), template)
            self._memo[key] = hit
            while len(self._memo) > self.size:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(key)
        resp = discovery_pb2.DiscoveryResponse()
        resp.CopyFrom(hit[1])
        resp.nonce = push.nonce
        return resp


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self.encoder = ResponseEncoder()

    def _handle(self, watch: Watch, req: discovery_pb2.DiscoveryRequest) -> None:
        error = req.error_detail.message if req.HasField("error_detail") else None
        accepted = self.cache.on_request(
            watch,
            type_url=req.type_url,
            version_info=req.version_info,
            nonce=req.response_nonce,
            names=list(req.resource_names),
            error_detail=error,
        )
        if not accepted:
            log.debug(
                "node %s: ignored %s request (nonce %r)",
                watch.node.node_id,
                short_name(req.type_url),
                req.response_nonce,
            )
        elif error is not None:
            log.warning(
                "node %s NACKed %s version %s: %s",
                watch.node.node_id,
                short_name(req.type_url),
                watch.types[req.type_url].nacked_version,
                error,
            )

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        wake = asyncio.Event()
        watch: Watch | None = None

        async def read() -> None:
            nonlocal watch
            try:
                async for req in request_iterator:
                    if watch is None:
                        node = parse_node(req.node)
                        watch = self.cache.open_watch(node, wake.set)
                        log.info("node %s connected (stream %d)", node.node_id, watch.stream_id)
                    self._handle(watch, req)
                    wake.set()
            finally:
                wake.set()

        reader = asyncio.create_task(read())
        try:
            while True:
                await wake.wait()
                wake.clear()
                if watch is not None:
                    for push in self.cache.pending(watch):
                        yield self.encoder.encode(push)
                if reader.done():
                    exc = None if reader.cancelled() else reader.exception()
                    if isinstance(exc, NodeMetadataError):
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                    elif exc is not None:
                        log.warning("ADS stream reader failed: %r", exc)
                    return
        finally:
            reader.cancel()
            if watch is not None:
                self.cache.close_watch(watch)
                log.info("node %s disconnected (stream %d)", watch.node.node_id, watch.stream_id)


def add_to_server(server: grpc.aio.Server, cache: SnapshotCache) -> AdsServicer:
    servicer = AdsServicer(cache)
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    return servicer
