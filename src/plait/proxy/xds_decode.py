"""Decode xDS resources into the proxy's runtime types, or refuse them field by field.

Rules of this module:

- It is pure: protos in, frozen :mod:`plait.proxy.runtime` values out. No I/O, no clock.
- The supported subset is the one docs/xds.md lists. Every message we read is first
  checked against the allow-list in :mod:`plait.proxy.xds_subset` (``msg.ListFields()``
  gives exactly the fields that are set), so anything set outside it is refused with
  :class:`UnsupportedConfig` naming the resource and the exact field path, e.g.
  ``Cluster 'x': lb_policy: RING_HASH is not supported (use ROUND_ROBIN or LEAST_REQUEST)``.
  Fields our protos do not even know (a newer control plane) are refused the same way.
- Defaults follow Envoy, so that Envoy and a plait proxy do the same thing with the same
  resources: an unset cluster ``connect_timeout`` is 5 s, an unset route ``timeout`` is
  15 s (0 switches it off), an unset ``retry_policy.num_retries`` is 1, an unset
  ``lb_policy`` is ``ROUND_ROBIN``, an unset cluster ``type`` is ``STATIC``.
- :func:`apply_response` is state of the world: one response replaces every resource of
  its type. A config holds route tables only for names its listeners reference and
  endpoints only for its EDS clusters; resources nobody asked for are dropped, and a
  CDS/LDS update that drops a cluster/listener drops what only it needed. The first bad
  resource refuses the whole response (the caller NACKs and keeps its config).

Invariant (fuzzed in the tests): any input either decodes or raises
:class:`UnsupportedConfig`, never another exception.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from plait.proxy.runtime import (
    Cluster,
    Direction,
    Endpoint,
    HeaderMatcher,
    LbPolicy,
    Listener,
    ProxyConfig,
    RetryPolicy,
    Route,
    RouteMatch,
    RouteTable,
    UnsupportedConfig,
    VirtualHost,
    WeightedCluster,
)
from plait.proxy.xds_subset import (
    Ctx,
    Proto,
    ads_source,
    at,
    check,
    duration,
    socket_address,
    unpack,
)
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
RETRY_ON = frozenset({"connect-failure", "reset", "5xx", "gateway-error", "retriable-4xx"})
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_ROUTE_TIMEOUT = 15.0

_HCM = hcm_pb2.HttpConnectionManager
_ROUTER = router_pb2.Router
_UNHEALTHY = frozenset(
    {
        health_check_pb2.HealthStatus.UNHEALTHY,
        health_check_pb2.HealthStatus.DRAINING,
        health_check_pb2.HealthStatus.TIMEOUT,
    }
)
_LB_POLICIES: dict[int, LbPolicy] = {
    cluster_pb2.Cluster.LbPolicy.ROUND_ROBIN: "round_robin",
    cluster_pb2.Cluster.LbPolicy.LEAST_REQUEST: "least_request",
}
_DIRECTIONS: dict[int, Direction] = {
    base_pb2.TrafficDirection.INBOUND: "inbound",
    base_pb2.TrafficDirection.OUTBOUND: "outbound",
}

# --- listeners -----------------------------------------------------------------------


def decode_listener(msg: Proto) -> Listener:
    ctx = Ctx("Listener", str(msg.name))
    check(msg, ctx, "")
    if not msg.name:
        raise ctx.error("name", "a listener needs a name")
    address, port = socket_address(msg, ctx, "", min_port=0)
    direction = _DIRECTIONS.get(int(msg.traffic_direction))
    if direction is None:
        if msg.traffic_direction != base_pb2.TrafficDirection.UNSPECIFIED:
            raise ctx.error("traffic_direction", "use INBOUND or OUTBOUND")
        direction = "inbound" if ctx.name.startswith("inbound|") else "outbound"
    if len(msg.filter_chains) != 1:
        raise ctx.error("filter_chains", "exactly one filter chain is supported")
    chain = msg.filter_chains[0]
    check(chain, ctx, "filter_chains[0]")
    if len(chain.filters) != 1:
        raise ctx.error("filter_chains[0].filters", "exactly one filter is supported")
    path = "filter_chains[0].filters[0]"
    network_filter = chain.filters[0]
    check(network_filter, ctx, path)
    if not network_filter.HasField("typed_config"):
        raise ctx.error(at(path, "typed_config"), f"the {HCM_FILTER} config is required")
    path = at(path, "typed_config")
    hcm = unpack(network_filter.typed_config, _HCM, ctx, path)
    route_config_name, route_table = _http_connection_manager(hcm, ctx, path)
    service = (ctx.name.partition("|")[2] or None) if direction == "inbound" else None
    return Listener(
        name=ctx.name,
        address=address,
        port=port,
        direction=direction,
        route_config_name=route_config_name,
        route_table=route_table,
        service=service,
        stat_prefix=str(hcm.stat_prefix),
    )


def _http_connection_manager(
    hcm: Proto, ctx: Ctx, path: str
) -> tuple[str | None, RouteTable | None]:
    check(hcm, ctx, path)
    for i, http_filter in enumerate(hcm.http_filters):
        _router_filter(http_filter, ctx, at(path, f"http_filters[{i}]"))
    if len(hcm.http_filters) != 1:
        message = "the router filter is required" if not hcm.http_filters else "give it once"
        raise ctx.error(at(path, "http_filters"), f"{message} ({ROUTER_FILTER})")
    kind = hcm.WhichOneof("route_specifier")
    if kind == "rds":
        rds_path = at(path, "rds")
        check(hcm.rds, ctx, rds_path)
        ads_source(hcm.rds.config_source, ctx, at(rds_path, "config_source"))
        if not hcm.rds.route_config_name:
            raise ctx.error(at(rds_path, "route_config_name"), "a route config name is needed")
        return str(hcm.rds.route_config_name), None
    if kind == "route_config":
        return None, _route_table(hcm.route_config, ctx, at(path, "route_config"))
    raise ctx.error(
        at(path, "route_specifier"), "give rds (with config_source.ads) or route_config"
    )


def _router_filter(http_filter: Proto, ctx: Ctx, path: str) -> None:
    check(http_filter, ctx, path)
    if http_filter.HasField("typed_config"):
        router = unpack(http_filter.typed_config, _ROUTER, ctx, at(path, "typed_config"))
        check(router, ctx, at(path, "typed_config"))
    elif http_filter.name != ROUTER_FILTER:
        raise ctx.error(
            path, f"filter {http_filter.name!r} is not supported (only {ROUTER_FILTER})"
        )


# --- routes --------------------------------------------------------------------------


def decode_route_configuration(msg: Proto) -> RouteTable:
    ctx = Ctx("RouteConfiguration", str(msg.name))
    if not msg.name:
        check(msg, ctx, "")
        raise ctx.error("name", "a route configuration needs a name")
    return _route_table(msg, ctx, "")


def _route_table(msg: Proto, ctx: Ctx, path: str) -> RouteTable:
    check(msg, ctx, path)
    hosts: list[VirtualHost] = []
    by_domain: dict[str, VirtualHost] = {}
    wildcard: VirtualHost | None = None
    for i, vh in enumerate(msg.virtual_hosts):
        vh_path = at(path, f"virtual_hosts[{i}]")
        check(vh, ctx, vh_path)
        if not vh.domains:
            raise ctx.error(at(vh_path, "domains"), "a virtual host needs at least one domain")
        routes = tuple(_route(r, ctx, at(vh_path, f"routes[{j}]")) for j, r in enumerate(vh.routes))
        domains = tuple(str(d).lower() for d in vh.domains)
        host = VirtualHost(name=str(vh.name), domains=domains, routes=routes)
        for j, domain in enumerate(domains):
            where = at(vh_path, f"domains[{j}]")
            if not domain or ("*" in domain and domain != "*"):
                raise ctx.error(where, f"{domain!r}: give an exact host[:port] or '*'")
            if domain in by_domain or (domain == "*" and wildcard is not None):
                raise ctx.error(where, f"{domain!r} is already used by another virtual host")
            if domain == "*":
                wildcard = host
            else:
                by_domain[domain] = host
        hosts.append(host)
    return RouteTable(
        name=str(msg.name), virtual_hosts=tuple(hosts), by_domain=by_domain, wildcard=wildcard
    )


def _route(msg: Proto, ctx: Ctx, path: str) -> Route:
    check(msg, ctx, path)
    if not msg.HasField("match"):
        raise ctx.error(at(path, "match"), "a route needs a match (prefix '/' matches all)")
    match = _route_match(msg.match, ctx, at(path, "match"))
    if not msg.HasField("route"):
        raise ctx.error(at(path, "route"), "a route action is required")
    action_path = at(path, "route")
    action = msg.route
    check(action, ctx, action_path)
    kind = action.WhichOneof("cluster_specifier")
    if kind == "cluster":
        if not action.cluster:
            raise ctx.error(at(action_path, "cluster"), "a cluster name is required")
        clusters: tuple[WeightedCluster, ...] = (WeightedCluster(str(action.cluster), 1),)
    elif kind == "weighted_clusters":
        clusters = _weighted_clusters(action.weighted_clusters, ctx, action_path)
    else:
        raise ctx.error(at(action_path, "cluster"), "give cluster or weighted_clusters")
    timeout: float | None = DEFAULT_ROUTE_TIMEOUT
    if action.HasField("timeout"):
        timeout = duration(action.timeout, ctx, at(action_path, "timeout")) or None
    retry = None
    if action.HasField("retry_policy"):
        retry = _retry_policy(action.retry_policy, ctx, at(action_path, "retry_policy"))
    return Route(
        name=str(msg.name),
        match=match,
        clusters=clusters,
        total_weight=sum(c.weight for c in clusters),
        timeout=timeout,
        retry=retry,
    )


def _route_match(msg: Proto, ctx: Ctx, path: str) -> RouteMatch:
    check(msg, ctx, path)
    kind = msg.WhichOneof("path_specifier")
    if kind is None:
        raise ctx.error(at(path, "prefix"), "give prefix or path")
    headers = tuple(
        _header_matcher(h, ctx, at(path, f"headers[{i}]")) for i, h in enumerate(msg.headers)
    )
    if kind == "prefix":
        return RouteMatch(prefix=str(msg.prefix), headers=headers)
    return RouteMatch(path=str(msg.path), headers=headers)


def _header_matcher(msg: Proto, ctx: Ctx, path: str) -> HeaderMatcher:
    check(msg, ctx, path)
    name = str(msg.name).lower()
    if not name:
        raise ctx.error(at(path, "name"), "a header name is required")
    invert = bool(msg.invert_match)
    kind = msg.WhichOneof("header_match_specifier")
    if kind == "present_match":
        return HeaderMatcher(name=name, present=bool(msg.present_match), invert=invert)
    if kind == "string_match":
        where = at(path, "string_match")
        check(msg.string_match, ctx, where)
        pattern = msg.string_match.WhichOneof("match_pattern")
        if pattern == "exact":
            return HeaderMatcher(name=name, exact=str(msg.string_match.exact), invert=invert)
        if pattern == "prefix":
            return HeaderMatcher(name=name, prefix=str(msg.string_match.prefix), invert=invert)
        raise ctx.error(where, "give exact or prefix")
    raise ctx.error(at(path, "string_match"), "give string_match or present_match")


def _weighted_clusters(msg: Proto, ctx: Ctx, path: str) -> tuple[WeightedCluster, ...]:
    path = at(path, "weighted_clusters")
    check(msg, ctx, path)
    out: list[WeightedCluster] = []
    for i, cw in enumerate(msg.clusters):
        where = at(path, f"clusters[{i}]")
        check(cw, ctx, where)
        if not cw.name:
            raise ctx.error(at(where, "name"), "a cluster name is required")
        out.append(WeightedCluster(str(cw.name), int(cw.weight.value)))
    if sum(c.weight for c in out) <= 0:
        raise ctx.error(at(path, "clusters"), "the weights add up to 0: give one a weight")
    return tuple(out)


def _retry_policy(msg: Proto, ctx: Ctx, path: str) -> RetryPolicy:
    check(msg, ctx, path)
    conditions = frozenset(c.strip() for c in str(msg.retry_on).split(",") if c.strip())
    unknown = sorted(conditions - RETRY_ON)
    if unknown:
        supported = ", ".join(sorted(RETRY_ON))
        raise ctx.error(at(path, "retry_on"), f"{unknown[0]!r} is not supported ({supported})")
    per_try = None
    if msg.HasField("per_try_timeout"):
        per_try = duration(msg.per_try_timeout, ctx, at(path, "per_try_timeout")) or None
    retries = int(msg.num_retries.value) if msg.HasField("num_retries") else 1
    return RetryPolicy(num_retries=retries, retry_on=conditions, per_try_timeout=per_try)


# --- clusters and endpoints ----------------------------------------------------------


def decode_cluster(msg: Proto) -> Cluster:
    ctx = Ctx("Cluster", str(msg.name))
    check(msg, ctx, "")
    if not msg.name:
        raise ctx.error("name", "a cluster needs a name")
    kinds = cluster_pb2.Cluster.DiscoveryType
    kind = int(msg.type)
    lb_policy = _LB_POLICIES.get(int(msg.lb_policy))
    if lb_policy is None:
        name = _enum_name(cluster_pb2.Cluster.LbPolicy, msg.lb_policy)
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
        return Cluster(ctx.name, lb_policy, connect_timeout, "eds")
    if kind == kinds.STATIC:
        if msg.HasField("eds_cluster_config"):
            raise ctx.error("eds_cluster_config", "only an EDS cluster has one")
        if not msg.HasField("load_assignment"):
            raise ctx.error("load_assignment", "a STATIC cluster needs its endpoints here")
        endpoints = _endpoints(msg.load_assignment, ctx, "load_assignment")
        return Cluster(ctx.name, lb_policy, connect_timeout, "static", endpoints)
    name = _enum_name(kinds, kind)
    raise ctx.error("type", f"{name} is not supported (use EDS or STATIC)")


def decode_load_assignment(msg: Proto) -> tuple[str, tuple[Endpoint, ...]]:
    ctx = Ctx("ClusterLoadAssignment", str(msg.cluster_name))
    if not msg.cluster_name:
        check(msg, ctx, "")
        raise ctx.error("cluster_name", "a cluster name is required")
    return ctx.name, _endpoints(msg, ctx, "")


def _endpoints(msg: Proto, ctx: Ctx, path: str) -> tuple[Endpoint, ...]:
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


def _enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


# --- whole responses -----------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    type_name: str
    message: Any
    decode: Callable[[Proto], Any]
    key: Callable[[Any], str]


_KINDS: dict[str, _Kind] = {
    LISTENER: _Kind("Listener", listener_pb2.Listener, decode_listener, lambda v: v.name),
    ROUTE: _Kind(
        "RouteConfiguration",
        route_pb2.RouteConfiguration,
        decode_route_configuration,
        lambda v: v.name,
    ),
    CLUSTER: _Kind("Cluster", cluster_pb2.Cluster, decode_cluster, lambda v: v.name),
    ENDPOINT: _Kind(
        "ClusterLoadAssignment",
        endpoint_pb2.ClusterLoadAssignment,
        decode_load_assignment,
        lambda v: v[0],
    ),
}


def decode_resources(type_url: str, resources: Sequence[Proto]) -> dict[str, Any]:
    """Decode one response's resources (``google.protobuf.Any``) by name, all or none."""
    kind = _KINDS.get(type_url)
    if kind is None:
        name = type_url.rpartition("/")[2].rpartition(".")[2] or type_url
        raise UnsupportedConfig(name, "", "type_url", "this resource type is not supported")
    out: dict[str, Any] = {}
    for i, packed in enumerate(resources):
        ctx = Ctx(kind.type_name, "")
        if packed.type_url != type_url:
            raise ctx.error(f"resources[{i}]", f"{packed.type_url!r} in a {type_url} response")
        value = kind.decode(unpack(packed, kind.message, ctx, f"resources[{i}]"))
        name = kind.key(value)
        if name in out:
            raise Ctx(kind.type_name, name).error("name", "the response has it twice")
        out[name] = value
    return out


def apply_response(
    current: ProxyConfig, type_url: str, resources: Sequence[Proto], *, version: str | None = None
) -> ProxyConfig:
    """A new config with every ``type_url`` resource replaced by ``resources``.

    Raises :class:`UnsupportedConfig` for the first resource outside the subset; the
    caller NACKs and keeps ``current``. ``version`` (the response's ``version_info``) is
    recorded in ``versions``.
    """
    decoded = decode_resources(type_url, resources)
    versions = dict(current.versions)
    if version is not None:
        versions[type_url] = version
    cfg = replace(current, versions=versions)
    if type_url == LISTENER:
        cfg = replace(cfg, listeners=decoded)
        keep = set(rds_names(cfg))
        return replace(cfg, route_tables={k: v for k, v in cfg.route_tables.items() if k in keep})
    if type_url == ROUTE:
        keep = set(rds_names(cfg))
        return replace(cfg, route_tables={k: v for k, v in decoded.items() if k in keep})
    if type_url == CLUSTER:
        cfg = replace(cfg, clusters=decoded)
        keep = set(eds_names(cfg))
        return replace(cfg, endpoints={k: v for k, v in cfg.endpoints.items() if k in keep})
    keep = set(eds_names(cfg))
    return replace(cfg, endpoints={k: v[1] for k, v in decoded.items() if k in keep})


def eds_names(cfg: ProxyConfig) -> list[str]:
    """The EDS clusters whose ClusterLoadAssignments to subscribe to, sorted."""
    return sorted(name for name, c in cfg.clusters.items() if c.discovery == "eds")


def rds_names(cfg: ProxyConfig) -> list[str]:
    """The RouteConfigurations the listeners name (RDS), sorted."""
    return sorted(
        {lst.route_config_name for lst in cfg.listeners.values() if lst.route_config_name}
    )
