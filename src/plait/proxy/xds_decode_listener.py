"""Decode Listener resources (LDS): filter chains, the HTTP connection manager, RBAC.

Part of :mod:`plait.proxy.xds_decode` (its rules apply). A listener has one plaintext
chain, one ``tls`` chain (strict mTLS) or a ``tls`` and a ``raw_buffer`` chain with the
same HTTP connection manager (permissive), at most the TLS inspector as listener filter,
and one network filter, the HTTP connection manager: its routes over RDS (ADS) or
inline (:mod:`plait.proxy.xds_decode_route`), its HTTP filters zero or more RBAC filters
(inbound only), then the router. RBAC policies are accepted in the translator's shape
only (docs/mtls.md): permissions ``any``, principals
``authenticated.principal_name.exact`` or ``authenticated {}``; everything else is
refused naming the field.
"""

from __future__ import annotations

from plait.proxy.runtime import (
    Direction,
    DownstreamTls,
    Listener,
    RbacFilter,
    RouteTable,
    TlsMode,
)
from plait.proxy.xds_decode_route import decode_route_table
from plait.proxy.xds_decode_tls import downstream_tls
from plait.proxy.xds_schema import (
    base_pb2,
    hcm_pb2,
    http_rbac_pb2,
    rbac_pb2,
    router_pb2,
    tls_inspector_pb2,
)
from plait.proxy.xds_subset import (
    Ctx,
    Proto,
    ads_source,
    at,
    check,
    enum_name,
    socket_address,
    unpack,
)

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
RBAC_FILTER = "envoy.filters.http.rbac"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"

_HCM = hcm_pb2.HttpConnectionManager
_ROUTER = router_pb2.Router
_RBAC = http_rbac_pb2.RBAC
_DIRECTIONS: dict[int, Direction] = {
    base_pb2.TrafficDirection.INBOUND: "inbound",
    base_pb2.TrafficDirection.OUTBOUND: "outbound",
}


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
    service = ctx.name.partition("|")[2] or None  # inbound|<svc>, outbound|<svc>
    chains = [
        _filter_chain(chain, ctx, f"filter_chains[{i}]", direction, service)
        for i, chain in enumerate(msg.filter_chains)
    ]
    tls_mode, tls, manager = _chains_mode(chains, ctx)
    _listener_filters(msg, ctx, tls_mode)
    route_config_name, route_table, rbac, stat_prefix = manager
    return Listener(
        name=ctx.name,
        address=address,
        port=port,
        direction=direction,
        route_config_name=route_config_name,
        route_table=route_table,
        service=service,
        stat_prefix=stat_prefix,
        tls_mode=tls_mode,
        tls=tls,
        rbac=rbac,
    )


_Manager = tuple[str | None, RouteTable | None, tuple[RbacFilter, ...], str]
_Chain = tuple[str | None, DownstreamTls | None, _Manager]  # transport_protocol, TLS, HCM


def _filter_chain(
    chain: Proto, ctx: Ctx, path: str, direction: Direction, service: str | None
) -> _Chain:
    check(chain, ctx, path)
    protocol: str | None = None
    if chain.HasField("filter_chain_match"):
        match_path = at(path, "filter_chain_match")
        check(chain.filter_chain_match, ctx, match_path)
        protocol = str(chain.filter_chain_match.transport_protocol) or None
        if protocol not in (None, "tls", "raw_buffer"):
            raise ctx.error(at(match_path, "transport_protocol"), "use 'tls' or 'raw_buffer'")
    tls = None
    if chain.HasField("transport_socket"):
        socket_path = at(path, "transport_socket")
        if direction != "inbound":
            raise ctx.error(socket_path, "only inbound listeners terminate mTLS")
        if protocol != "tls":
            raise ctx.error(
                at(path, "filter_chain_match.transport_protocol"),
                "a chain with a TLS transport socket must match transport_protocol 'tls'",
            )
        tls = downstream_tls(chain.transport_socket, ctx, socket_path, service)
    elif protocol == "tls":
        raise ctx.error(at(path, "transport_socket"), "a 'tls' chain needs the TLS context")
    if len(chain.filters) != 1:
        raise ctx.error(at(path, "filters"), "exactly one filter is supported")
    path = at(path, "filters[0]")
    network_filter = chain.filters[0]
    check(network_filter, ctx, path)
    if not network_filter.HasField("typed_config"):
        raise ctx.error(at(path, "typed_config"), f"the {HCM_FILTER} config is required")
    path = at(path, "typed_config")
    hcm = unpack(network_filter.typed_config, _HCM, ctx, path)
    return protocol, tls, _http_connection_manager(hcm, ctx, path, direction)


def _chains_mode(chains: list[_Chain], ctx: Ctx) -> tuple[TlsMode, DownstreamTls | None, _Manager]:
    """plaintext: one chain, no match; strict: one 'tls' chain; permissive: a 'tls' and a
    'raw_buffer' chain with the same HTTP connection manager."""
    protocols = [protocol for protocol, _, _ in chains]
    if protocols == [None]:
        return "plaintext", None, chains[0][2]
    if protocols == ["tls"]:
        return "strict", chains[0][1], chains[0][2]
    if sorted(p or "" for p in protocols) == ["raw_buffer", "tls"]:
        tls_chain = chains[protocols.index("tls")]
        if chains[0][2] != chains[1][2]:
            raise ctx.error(
                "filter_chains[1].filters[0]",
                "both chains of a permissive listener must carry the same HTTP connection manager",
            )
        return "permissive", tls_chain[1], tls_chain[2]
    raise ctx.error(
        "filter_chains",
        "give one chain (plaintext), one 'tls' chain (strict), or a 'tls' and a "
        "'raw_buffer' chain (permissive)",
    )


def _listener_filters(msg: Proto, ctx: Ctx, tls_mode: TlsMode) -> None:
    """At most one listener filter, the TLS inspector, on a listener with a TLS chain."""
    for i, listener_filter in enumerate(msg.listener_filters):
        path = f"listener_filters[{i}]"
        check(listener_filter, ctx, path)
        if i > 0:
            raise ctx.error(path, f"only one listener filter is supported ({TLS_INSPECTOR})")
        if listener_filter.HasField("typed_config"):
            where = at(path, "typed_config")
            inspector = unpack(
                listener_filter.typed_config, tls_inspector_pb2.TlsInspector, ctx, where
            )
            check(inspector, ctx, where)
        elif listener_filter.name != TLS_INSPECTOR:
            raise ctx.error(
                path, f"filter {listener_filter.name!r} is not supported (only {TLS_INSPECTOR})"
            )
        if tls_mode == "plaintext":
            raise ctx.error(path, "the TLS inspector is only for listeners with a 'tls' chain")


def _http_connection_manager(hcm: Proto, ctx: Ctx, path: str, direction: Direction) -> _Manager:
    check(hcm, ctx, path)
    rbac: list[RbacFilter] = []
    routers = 0
    for i, http_filter in enumerate(hcm.http_filters):
        where = at(path, f"http_filters[{i}]")
        found = _http_filter(http_filter, ctx, where)
        if routers:
            raise ctx.error(where, f"the router ({ROUTER_FILTER}) must be the last filter")
        if found is None:
            routers += 1
            continue
        if direction != "inbound":
            raise ctx.error(where, "RBAC filters belong on inbound listeners")
        rbac.append(found)
    if not routers:
        raise ctx.error(
            at(path, "http_filters"), f"the router filter is required ({ROUTER_FILTER})"
        )
    kind = hcm.WhichOneof("route_specifier")
    stat_prefix = str(hcm.stat_prefix)
    if kind == "rds":
        rds_path = at(path, "rds")
        check(hcm.rds, ctx, rds_path)
        ads_source(hcm.rds.config_source, ctx, at(rds_path, "config_source"))
        if not hcm.rds.route_config_name:
            raise ctx.error(at(rds_path, "route_config_name"), "a route config name is needed")
        return str(hcm.rds.route_config_name), None, tuple(rbac), stat_prefix
    if kind == "route_config":
        table = decode_route_table(hcm.route_config, ctx, at(path, "route_config"))
        return None, table, tuple(rbac), stat_prefix
    raise ctx.error(
        at(path, "route_specifier"), "give rds (with config_source.ads) or route_config"
    )


def _http_filter(http_filter: Proto, ctx: Ctx, path: str) -> RbacFilter | None:
    """The router (None) or an RBAC filter; anything else is refused."""
    check(http_filter, ctx, path)
    if http_filter.HasField("typed_config"):
        where = at(path, "typed_config")
        got = str(http_filter.typed_config.type_url).rpartition("/")[2]
        if got == _RBAC.DESCRIPTOR.full_name:
            return _rbac_filter(unpack(http_filter.typed_config, _RBAC, ctx, where), ctx, where)
        router = unpack(http_filter.typed_config, _ROUTER, ctx, where)
        check(router, ctx, where)
        return None
    if http_filter.name != ROUTER_FILTER:
        raise ctx.error(
            path,
            f"filter {http_filter.name!r} is not supported "
            f"(only {RBAC_FILTER} with its typed_config, then {ROUTER_FILTER})",
        )
    return None


# --- RBAC ----------------------------------------------------------------------------


def _rbac_filter(msg: Proto, ctx: Ctx, path: str) -> RbacFilter:
    check(msg, ctx, path)
    if msg.HasField("rules") == msg.HasField("shadow_rules"):
        raise ctx.error(at(path, "rules"), "give exactly one of rules or shadow_rules")
    shadow = msg.HasField("shadow_rules")
    path = at(path, "shadow_rules" if shadow else "rules")
    rules = msg.shadow_rules if shadow else msg.rules
    check(rules, ctx, path)
    action = int(rules.action)
    if action not in (rbac_pb2.RBAC.ALLOW, rbac_pb2.RBAC.DENY):
        name = enum_name(rbac_pb2.RBAC.Action, action)
        raise ctx.error(at(path, "action"), f"{name} is not supported (use ALLOW or DENY)")
    principals: set[str] = set()
    authenticated_any = False
    for key in sorted(rules.policies):
        where = at(path, f"policies[{key!r}]")
        policy = rules.policies[key]
        check(policy, ctx, where)
        if not policy.permissions:
            raise ctx.error(at(where, "permissions"), "give one permission: {any: true}")
        for i, permission in enumerate(policy.permissions):
            check(permission, ctx, at(where, f"permissions[{i}]"))
            if not permission.any:
                raise ctx.error(
                    at(where, f"permissions[{i}].any"),
                    "must be true: plait RBAC decides on the caller's identity only",
                )
        if not policy.principals:
            raise ctx.error(at(where, "principals"), "give at least one principal")
        for i, principal in enumerate(policy.principals):
            peer = _principal(principal, ctx, at(where, f"principals[{i}]"))
            if peer is None:
                authenticated_any = True
            else:
                principals.add(peer)
    return RbacFilter(
        name=",".join(sorted(rules.policies)),
        action="DENY" if action == rbac_pb2.RBAC.DENY else "ALLOW",
        principals=frozenset(principals),
        authenticated_any=authenticated_any,
        shadow=shadow,
    )


def _principal(msg: Proto, ctx: Ctx, path: str) -> str | None:
    """``authenticated.principal_name.exact`` -> that name; ``authenticated {}`` -> None."""
    check(msg, ctx, path)
    if not msg.HasField("authenticated"):
        raise ctx.error(
            at(path, "authenticated"),
            "is required: give authenticated.principal_name.exact or authenticated {}",
        )
    path = at(path, "authenticated")
    check(msg.authenticated, ctx, path)
    if not msg.authenticated.HasField("principal_name"):
        return None
    path = at(path, "principal_name")
    matcher = msg.authenticated.principal_name
    check(matcher, ctx, path)
    if matcher.WhichOneof("match_pattern") != "exact" or not matcher.exact:
        raise ctx.error(at(path, "exact"), "give the peer's SPIFFE id as an exact match")
    return str(matcher.exact)
