"""Decode Cluster resources (CDS).

Part of :mod:`plait.proxy.xds_decode` (its rules apply). Envoy's defaults: an unset
``connect_timeout`` is 5 s, an unset ``lb_policy`` is ``ROUND_ROBIN`` (``LEAST_REQUEST``
is the other one supported), an unset ``type`` is ``STATIC``. An EDS cluster gets its
endpoints over ADS and may carry the upstream mTLS context
(:func:`~plait.proxy.xds_decode_tls.upstream_tls`); a STATIC cluster carries its
endpoints inline and no TLS.
"""

from __future__ import annotations

from plait.proxy.runtime import Cluster, LbPolicy
from plait.proxy.xds_decode_endpoint import load_assignment_endpoints
from plait.proxy.xds_decode_tls import upstream_tls
from plait.proxy.xds_schema import cluster_pb2
from plait.proxy.xds_subset import Ctx, Proto, ads_source, check, duration, enum_name

DEFAULT_CONNECT_TIMEOUT = 5.0

_LB_POLICIES: dict[int, LbPolicy] = {
    cluster_pb2.Cluster.LbPolicy.ROUND_ROBIN: "round_robin",
    cluster_pb2.Cluster.LbPolicy.LEAST_REQUEST: "least_request",
}


def decode_cluster(msg: Proto) -> Cluster:
    ctx = Ctx("Cluster", str(msg.name))
    check(msg, ctx, "")
    if not msg.name:
        raise ctx.error("name", "a cluster needs a name")
    kinds = cluster_pb2.Cluster.DiscoveryType
    kind = int(msg.type)
    lb_policy = _LB_POLICIES.get(int(msg.lb_policy))
    if lb_policy is None:
        name = enum_name(cluster_pb2.Cluster.LbPolicy, msg.lb_policy)
        raise ctx.error("lb_policy", f"{name} is not supported (use ROUND_ROBIN or LEAST_REQUEST)")
    connect_timeout = DEFAULT_CONNECT_TIMEOUT
    if msg.HasField("connect_timeout"):
        connect_timeout = duration(msg.connect_timeout, ctx, "connect_timeout")
        if connect_timeout <= 0:
            raise ctx.error("connect_timeout", "must be greater than 0")
    if kind == kinds.EDS:
        if msg.HasField("load_assignment"):
            raise ctx.error("load_assignment", "an EDS cluster gets its endpoints over EDS")
        check(msg.eds_cluster_config, ctx, "eds_cluster_config")
        if not msg.eds_cluster_config.HasField("eds_config"):
            raise ctx.error("eds_cluster_config.eds_config.ads", "an EDS cluster needs ADS")
        ads_source(msg.eds_cluster_config.eds_config, ctx, "eds_cluster_config.eds_config")
        if msg.eds_cluster_config.service_name not in ("", ctx.name):
            raise ctx.error("eds_cluster_config.service_name", "leave empty (or the cluster name)")
        tls = None
        if msg.HasField("transport_socket"):
            tls = upstream_tls(msg.transport_socket, ctx, "transport_socket")
        return Cluster(ctx.name, lb_policy, connect_timeout, "eds", tls=tls)
    if msg.HasField("transport_socket"):
        raise ctx.error("transport_socket", "only EDS (outbound) clusters use mTLS")
    if kind == kinds.STATIC:
        if msg.HasField("eds_cluster_config"):
            raise ctx.error("eds_cluster_config", "only an EDS cluster has one")
        if not msg.HasField("load_assignment"):
            raise ctx.error("load_assignment", "a STATIC cluster needs its endpoints here")
        endpoints = load_assignment_endpoints(msg.load_assignment, ctx, "load_assignment")
        return Cluster(ctx.name, lb_policy, connect_timeout, "static", endpoints)
    name = enum_name(kinds, kind)
    raise ctx.error("type", f"{name} is not supported (use EDS or STATIC)")
