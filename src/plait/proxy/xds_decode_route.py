"""Decode RouteConfiguration resources (RDS, or inline in a listener) into route tables.

Part of :mod:`plait.proxy.xds_decode` (its rules apply). Envoy's defaults: an unset
route ``timeout`` is 15 s (0 switches it off), an unset ``retry_policy.num_retries``
is 1. Domains are exact ``host[:port]`` or ``'*'``, each used by one virtual host only;
matches are ``prefix`` or ``path`` with ``exact``/``prefix``/``present`` header matchers.
"""

from __future__ import annotations

from plait.proxy.runtime import (
    HeaderMatcher,
    RetryPolicy,
    Route,
    RouteMatch,
    RouteTable,
    VirtualHost,
    WeightedCluster,
)
from plait.proxy.xds_subset import Ctx, Proto, at, check, duration

RETRY_ON = frozenset({"connect-failure", "reset", "5xx", "gateway-error", "retriable-4xx"})
DEFAULT_ROUTE_TIMEOUT = 15.0


def decode_route_configuration(msg: Proto) -> RouteTable:
    ctx = Ctx("RouteConfiguration", str(msg.name))
    if not msg.name:
        check(msg, ctx, "")
        raise ctx.error("name", "a route configuration needs a name")
    return decode_route_table(msg, ctx, "")


def decode_route_table(msg: Proto, ctx: Ctx, path: str) -> RouteTable:
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
