"""Small builders for the Envoy v3 protos plait serves (go-control-plane's resource.go style).

Each builder makes one message with only the fields of the supported subset in
docs/xds.md set: a plait proxy refuses anything else with a NACK, so nothing here sets a
field "just in case". Builders are plain functions of plain values: no config model, no
registry, no naming policy (that lives in :mod:`plait.xds.names` and
:mod:`plait.xds.translate`).

Durations are float seconds, as in :mod:`plait.model.resources`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

# The generated protobuf modules ship no type stubs; name what we pass around.
Listener = Any
RouteConfiguration = Any
VirtualHost = Any
Route = Any
RouteMatch = Any
HeaderMatcher = Any
RetryPolicy = Any
Cluster = Any
ClusterLoadAssignment = Any
HttpConnectionManager = Any

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"

LbPolicy = Literal["round_robin", "least_request"]
_LB_POLICIES: dict[str, int] = {
    "round_robin": cluster_pb2.Cluster.ROUND_ROBIN,
    "least_request": cluster_pb2.Cluster.LEAST_REQUEST,
}

Direction = Literal["inbound", "outbound"]
_DIRECTIONS: dict[str, int] = {
    "inbound": base_pb2.INBOUND,
    "outbound": base_pb2.OUTBOUND,
}


def make_duration(seconds: float) -> Any:
    """A ``google.protobuf.Duration`` from float seconds (rounded to the nanosecond)."""
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1_000_000_000))
    return duration


def pack(message: Any) -> Any:
    """Wrap ``message`` in a ``google.protobuf.Any`` (deterministic bytes: versions are
    content hashes of the outer message)."""
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed


def make_socket_address(address: str, port: int) -> Any:
    """``core.v3.Address`` with ``socket_address.{address, port_value}``."""
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=address, port_value=port)
    )


def make_ads_config_source() -> Any:
    """A ConfigSource saying "over the same ADS stream"."""
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource())


# --- endpoints and clusters -------------------------------------------------------------


def make_load_assignment(
    cluster_name: str, endpoints: Iterable[tuple[str, int]]
) -> ClusterLoadAssignment:
    """One locality (empty ``Locality``, weight 1) holding ``endpoints``, all HEALTHY.

    gRPC ignores a locality without a weight, and refuses one without ``locality`` or with
    the same address twice: callers pass unique addresses (translation deduplicates).
    """
    lb_endpoints = [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=make_socket_address(host, port)),
            health_status=health_check_pb2.HEALTHY,
        )
        for host, port in endpoints
    ]
    locality = endpoint_components_pb2.LocalityLbEndpoints(
        locality=base_pb2.Locality(),
        lb_endpoints=lb_endpoints,
        load_balancing_weight=wrappers_pb2.UInt32Value(value=1),
    )
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster_name, endpoints=[locality])


def make_eds_cluster(
    name: str, *, connect_timeout: float, lb_policy: LbPolicy = "round_robin"
) -> Cluster:
    """An EDS cluster whose endpoints come over ADS under the cluster's own name.

    ``least_request`` is Envoy's power-of-two-choices (its default ``choice_count`` is 2,
    so ``least_request_lb_config`` is left unset: it is outside the supported subset).
    """
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=make_ads_config_source()
        ),
        connect_timeout=make_duration(connect_timeout),
        lb_policy=_LB_POLICIES[lb_policy],
    )


def make_static_cluster(
    name: str,
    endpoints: Iterable[tuple[str, int]],
    *,
    connect_timeout: float,
    lb_policy: LbPolicy = "round_robin",
) -> Cluster:
    """A STATIC cluster with an inline ``load_assignment`` (e.g. the local app)."""
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        load_assignment=make_load_assignment(name, endpoints),
        connect_timeout=make_duration(connect_timeout),
        lb_policy=_LB_POLICIES[lb_policy],
    )


# --- routes -----------------------------------------------------------------------------


def make_header_matcher(
    name: str,
    *,
    exact: str | None = None,
    prefix: str | None = None,
    present: bool | None = None,
    invert: bool = False,
) -> HeaderMatcher:
    """Match header ``name`` by exactly one of ``exact``, ``prefix`` or ``present``.

    ``present=False`` ("the header is absent") is written as ``present_match: true`` with
    ``invert_match`` flipped: Envoy versions and gRPC disagree on what
    ``present_match: false`` means, nobody disagrees on this form.
    """
    given = [
        k for k, v in (("exact", exact), ("prefix", prefix), ("present", present)) if v is not None
    ]
    if len(given) != 1:
        raise ValueError(f"header {name!r}: give exactly one of exact, prefix, present")
    matcher = route_components_pb2.HeaderMatcher(name=name)
    if exact is not None:
        matcher.string_match.CopyFrom(string_pb2.StringMatcher(exact=exact))
    elif prefix is not None:
        matcher.string_match.CopyFrom(string_pb2.StringMatcher(prefix=prefix))
    else:
        matcher.present_match = True
        invert = invert != (present is False)
    if invert:
        matcher.invert_match = True
    return matcher


def make_route_match(
    *,
    prefix: str | None = None,
    path: str | None = None,
    headers: Sequence[HeaderMatcher] = (),
) -> RouteMatch:
    """Exact ``path``, else ``prefix`` (default ``/``: everything), plus header matchers."""
    if path is not None:
        return route_components_pb2.RouteMatch(path=path, headers=headers)
    return route_components_pb2.RouteMatch(prefix=prefix or "/", headers=headers)


def make_retry_policy(
    retry_on: Sequence[str], num_retries: int, per_try_timeout: float | None = None
) -> RetryPolicy:
    """``retry_on`` joined by ``,`` (Envoy's names), ``num_retries``, ``per_try_timeout``."""
    policy = route_components_pb2.RetryPolicy(
        retry_on=",".join(retry_on), num_retries=wrappers_pb2.UInt32Value(value=num_retries)
    )
    if per_try_timeout is not None:
        policy.per_try_timeout.CopyFrom(make_duration(per_try_timeout))
    return policy


def make_route(
    match: RouteMatch,
    *,
    cluster: str | None = None,
    weighted_clusters: Sequence[tuple[str, int]] = (),
    timeout: float | None = None,
    retry_policy: RetryPolicy | None = None,
) -> Route:
    """A route to one ``cluster`` or to ``weighted_clusters`` (name, weight) pairs."""
    if (cluster is None) == (not weighted_clusters):
        raise ValueError("give exactly one of cluster or weighted_clusters")
    action = route_components_pb2.RouteAction()
    if cluster is not None:
        action.cluster = cluster
    else:
        action.weighted_clusters.CopyFrom(
            route_components_pb2.WeightedCluster(
                clusters=[
                    route_components_pb2.WeightedCluster.ClusterWeight(
                        name=name, weight=wrappers_pb2.UInt32Value(value=weight)
                    )
                    for name, weight in weighted_clusters
                ]
            )
        )
    if timeout is not None:
        action.timeout.CopyFrom(make_duration(timeout))
    if retry_policy is not None:
        action.retry_policy.CopyFrom(retry_policy)
    return route_components_pb2.Route(match=match, route=action)


def make_virtual_host(name: str, domains: Sequence[str], routes: Sequence[Route]) -> VirtualHost:
    return route_components_pb2.VirtualHost(name=name, domains=domains, routes=routes)


def make_route_configuration(name: str, virtual_hosts: Sequence[VirtualHost]) -> RouteConfiguration:
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=virtual_hosts)


# --- listeners --------------------------------------------------------------------------


def make_router_filter() -> Any:
    """The terminal HTTP filter, ``envoy.filters.http.router`` with a typed Router config."""
    return hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router()))


def make_http_connection_manager(
    stat_prefix: str,
    *,
    rds_name: str | None = None,
    route_config: RouteConfiguration | None = None,
) -> HttpConnectionManager:
    """An HCM whose routes come over ADS as ``rds_name``, or inline as ``route_config``."""
    if (rds_name is None) == (route_config is None):
        raise ValueError("give exactly one of rds_name or route_config")
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix, http_filters=[make_router_filter()]
    )
    if rds_name is not None:
        manager.rds.CopyFrom(
            hcm_pb2.Rds(config_source=make_ads_config_source(), route_config_name=rds_name)
        )
    else:
        manager.route_config.CopyFrom(route_config)
    return manager


def make_http_listener(
    name: str,
    address: str,
    port: int,
    *,
    direction: Direction,
    rds_name: str | None = None,
    route_config: RouteConfiguration | None = None,
) -> Listener:
    """A listening socket with one filter chain: the HTTP connection manager."""
    manager = make_http_connection_manager(name, rds_name=rds_name, route_config=route_config)
    return listener_pb2.Listener(
        name=name,
        address=make_socket_address(address, port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(name=HCM_FILTER, typed_config=pack(manager))
                ]
            )
        ],
        traffic_direction=_DIRECTIONS[direction],
    )


def make_api_listener(name: str, rds_name: str) -> Listener:
    """A socket-less listener for proxyless gRPC: ``api_listener`` = HCM with RDS over ADS."""
    manager = make_http_connection_manager(name, rds_name=rds_name)
    return listener_pb2.Listener(
        name=name, api_listener=api_listener_pb2.ApiListener(api_listener=pack(manager))
    )


def http_connection_manager_of(listener: Listener) -> HttpConnectionManager | None:
    """The HCM inside ``listener`` (API listener or first HCM filter), or None."""
    packed: list[Any] = []
    if listener.HasField("api_listener"):
        packed.append(listener.api_listener.api_listener)
    for chain in listener.filter_chains:
        packed.extend(f.typed_config for f in chain.filters if f.HasField("typed_config"))
    for candidate in packed:
        if candidate.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
            manager = hcm_pb2.HttpConnectionManager()
            candidate.Unpack(manager)
            return manager
    return None
