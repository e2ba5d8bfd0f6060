"""Decode ClusterLoadAssignment resources (EDS, or a STATIC cluster's inline endpoints).

Part of :mod:`plait.proxy.xds_decode` (its rules apply). An endpoint is a socket address
with a port; UNHEALTHY, DRAINING and TIMEOUT health statuses mark it unhealthy.
"""

from __future__ import annotations

from plait.proxy.runtime import Endpoint
from plait.proxy.xds_schema import health_check_pb2
from plait.proxy.xds_subset import Ctx, Proto, at, check, socket_address

_UNHEALTHY = frozenset(
    {
        health_check_pb2.HealthStatus.UNHEALTHY,
        health_check_pb2.HealthStatus.DRAINING,
        health_check_pb2.HealthStatus.TIMEOUT,
    }
)


def decode_load_assignment(msg: Proto) -> tuple[str, tuple[Endpoint, ...]]:
    ctx = Ctx("ClusterLoadAssignment", str(msg.cluster_name))
    if not msg.cluster_name:
        check(msg, ctx, "")
        raise ctx.error("cluster_name", "a cluster name is required")
    return ctx.name, load_assignment_endpoints(msg, ctx, "")


def load_assignment_endpoints(msg: Proto, ctx: Ctx, path: str) -> tuple[Endpoint, ...]:
    check(msg, ctx, path)
    out: list[Endpoint] = []
    for i, locality in enumerate(msg.endpoints):
        where = at(path, f"endpoints[{i}]")
        check(locality, ctx, where)
        if locality.HasField("locality"):
            check(locality.locality, ctx, at(where, "locality"))
        for j, lb_endpoint in enumerate(locality.lb_endpoints):
            out.append(_lb_endpoint(lb_endpoint, ctx, at(where, f"lb_endpoints[{j}]")))
    return tuple(out)


def _lb_endpoint(msg: Proto, ctx: Ctx, path: str) -> Endpoint:
    check(msg, ctx, path)
    if not msg.HasField("endpoint"):
        raise ctx.error(at(path, "endpoint"), "an endpoint is required")
    check(msg.endpoint, ctx, at(path, "endpoint"))
    address, port = socket_address(msg.endpoint, ctx, at(path, "endpoint"), min_port=1)
    status = int(msg.health_status)
    if status not in health_check_pb2.HealthStatus.values():
        raise ctx.error(at(path, "health_status"), f"unknown health status {status}")
    return Endpoint(address=address, port=port, healthy=status not in _UNHEALTHY)
