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
- :func:`apply_response` is state of the world: a Listener, Cluster or Secret response
  replaces every resource of its type. A ClusterLoadAssignment or RouteConfiguration
  response *merges* (the xDS protocol lets those be changed-only, docs/xds.md): the
  resources it carries replace those names, the ones it does not carry are kept. A
  config holds route tables only for names its listeners reference and endpoints only
  for its EDS clusters; resources nobody asked for are dropped, and a CDS/LDS update
  that drops a cluster/listener drops what only it needed. The first bad resource
  refuses the whole response (the caller NACKs and keeps its config).

Mutual TLS and RBAC (docs/mtls.md): exactly the translator's shapes are accepted —
TLS 1.3 only, identities named over SDS (never inline keys), SAN matchers ``exact``
(upstream) or one ``prefix`` (downstream) on URI SANs, RBAC policies whose permissions
are ``any`` and whose principals are ``authenticated.principal_name.exact`` or
``authenticated {}``; everything else is refused naming the field.

Invariant (fuzzed in the tests): any input either decodes or raises
:class:`UnsupportedConfig`, never another exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from plait.model.names import SPIFFE_ID_RE
from plait.proxy.runtime import (
    Cluster,
    Direction,
    DownstreamTls,
    Endpoint,
    HeaderMatcher,
    LbPolicy,
    Listener,
    ProxyConfig,
    RbacFilter,
    RetryPolicy,
    Route,
    RouteMatch,
    RouteTable,
    Secret,
    TlsMode,
    UnsupportedConfig,
    UpstreamTls,
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
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
RBAC_FILTER = "envoy.filters.http.rbac"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
DEFAULT_IDENTITY = "default"
PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
RETRY_ON = frozenset({"connect-failure", "reset", "5xx", "gateway-error", "retriable-4xx"})
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_ROUTE_TIMEOUT = 15.0

_HCM = hcm_pb2.HttpConnectionManager
_ROUTER = router_pb2.Router
_RBAC = http_rbac_pb2.RBAC
_TLS13 = common_pb2.TlsParameters.TLSv1_3
_URI_SAN = common_pb2.SubjectAltNameMatcher.URI
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
        tls = _downstream_tls(chain.transport_socket, ctx, socket_path, service)
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
        table = _route_table(hcm.route_config, ctx, at(path, "route_config"))
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
        name = _enum_name(rbac_pb2.RBAC.Action, action)
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


# --- mutual TLS ----------------------------------------------------------------------


def _tls_context(socket: Proto, cls: Any, ctx: Ctx, path: str) -> Proto:
    check(socket, ctx, path)
    if socket.name != TLS_TRANSPORT_SOCKET:
        raise ctx.error(at(path, "name"), f"only {TLS_TRANSPORT_SOCKET} is supported")
    if not socket.HasField("typed_config"):
        raise ctx.error(at(path, "typed_config"), f"the {cls.DESCRIPTOR.name} is required")
    context = unpack(socket.typed_config, cls, ctx, at(path, "typed_config"))
    check(context, ctx, at(path, "typed_config"))
    if not context.HasField("common_tls_context"):
        raise ctx.error(at(path, "typed_config.common_tls_context"), "is required")
    return context


_San = tuple[str, str]  # ("exact" | "prefix", value)


def _common_tls_context(msg: Proto, ctx: Ctx, path: str) -> tuple[str, str, list[_San]]:
    """(certificate SDS name, validation SDS name, URI SAN matchers), checked."""
    check(msg, ctx, path)
    params_path = at(path, "tls_params")
    if not msg.HasField("tls_params"):
        raise ctx.error(params_path, "must pin TLSv1_3 (minimum and maximum)")
    check(msg.tls_params, ctx, params_path)
    for field in ("tls_minimum_protocol_version", "tls_maximum_protocol_version"):
        version = int(getattr(msg.tls_params, field))
        if version != _TLS13:
            name = _enum_name(common_pb2.TlsParameters.TlsProtocol, version)
            raise ctx.error(
                at(params_path, field),
                f"{name} is not allowed: proxy-to-proxy links are TLS 1.3 only (TLSv1_3)",
            )
    certs = msg.tls_certificate_sds_secret_configs
    if len(certs) != 1:
        raise ctx.error(
            at(path, "tls_certificate_sds_secret_configs"), "name exactly one identity over SDS"
        )
    certificate = _sds_name(certs[0], ctx, at(path, "tls_certificate_sds_secret_configs[0]"))
    combined_path = at(path, "combined_validation_context")
    if not msg.HasField("combined_validation_context"):
        raise ctx.error(combined_path, "is required (the trust bundle and SAN matchers)")
    combined = msg.combined_validation_context
    check(combined, ctx, combined_path)
    if not combined.HasField("validation_context_sds_secret_config"):
        raise ctx.error(
            at(combined_path, "validation_context_sds_secret_config"),
            "is required: name the trust bundle Secret",
        )
    validation = _sds_name(
        combined.validation_context_sds_secret_config,
        ctx,
        at(combined_path, "validation_context_sds_secret_config"),
    )
    default_path = at(combined_path, "default_validation_context")
    default = combined.default_validation_context
    check(default, ctx, default_path)
    if default.HasField("trusted_ca"):
        raise ctx.error(
            at(default_path, "trusted_ca"), "the trusted roots come from the SDS trust bundle"
        )
    sans: list[_San] = []
    for i, matcher in enumerate(default.match_typed_subject_alt_names):
        where = at(default_path, f"match_typed_subject_alt_names[{i}]")
        check(matcher, ctx, where)
        if int(matcher.san_type) != _URI_SAN:
            name = _enum_name(common_pb2.SubjectAltNameMatcher.SanType, int(matcher.san_type))
            raise ctx.error(at(where, "san_type"), f"{name} is not supported (use URI)")
        check(matcher.matcher, ctx, at(where, "matcher"))
        pattern = matcher.matcher.WhichOneof("match_pattern")
        value = str(getattr(matcher.matcher, pattern)) if pattern else ""
        if pattern not in ("exact", "prefix") or not value:
            raise ctx.error(at(where, "matcher"), "give a non-empty exact or prefix")
        sans.append((pattern, value))
    return certificate, validation, sans


def _sds_name(msg: Proto, ctx: Ctx, path: str) -> str:
    check(msg, ctx, path)
    if not msg.name:
        raise ctx.error(at(path, "name"), "a secret name is required")
    if msg.HasField("sds_config"):
        ads_source(msg.sds_config, ctx, at(path, "sds_config"))
    return str(msg.name)


def _downstream_tls(socket: Proto, ctx: Ctx, path: str, service: str | None) -> DownstreamTls:
    context = _tls_context(socket, tls_pb2.DownstreamTlsContext, ctx, path)
    path = at(path, "typed_config")
    if not (
        context.HasField("require_client_certificate") and context.require_client_certificate.value
    ):
        raise ctx.error(
            at(path, "require_client_certificate"),
            "must be true: inbound mTLS needs a client certificate",
        )
    common_path = at(path, "common_tls_context")
    certificate, validation, sans = _common_tls_context(
        context.common_tls_context, ctx, common_path
    )
    cert_path = at(common_path, "tls_certificate_sds_secret_configs[0].name")
    identity = SPIFFE_ID_RE.match(certificate)
    if identity is None or identity.group(3) != service:
        raise ctx.error(cert_path, f"must be the SPIFFE id spiffe://<td>/svc/{service}")
    expected = f"spiffe://{identity.group(1)}/"
    san_path = at(common_path, "combined_validation_context.default_validation_context")
    if sans != [("prefix", expected)]:
        raise ctx.error(
            at(san_path, "match_typed_subject_alt_names"),
            f"give one URI SAN matcher, prefix {expected!r} (the trust domain)",
        )
    return DownstreamTls(
        certificate_secret=certificate,
        validation_secret=validation,
        require_client_certificate=True,
        peer_san_prefix=expected,
    )


def _upstream_tls(socket: Proto, ctx: Ctx, path: str) -> UpstreamTls:
    context = _tls_context(socket, tls_pb2.UpstreamTlsContext, ctx, path)
    common_path = at(path, "typed_config.common_tls_context")
    certificate, validation, sans = _common_tls_context(
        context.common_tls_context, ctx, common_path
    )
    if certificate != DEFAULT_IDENTITY:
        raise ctx.error(
            at(common_path, "tls_certificate_sds_secret_configs[0].name"),
            f"must be {DEFAULT_IDENTITY!r}: the calling local service's identity",
        )
    san_path = at(
        common_path,
        "combined_validation_context.default_validation_context.match_typed_subject_alt_names",
    )
    if not sans or any(kind != "exact" for kind, _ in sans):
        raise ctx.error(san_path, "give the destination's SPIFFE id(s) as exact URI SANs")
    return UpstreamTls(
        certificate_secret=certificate,
        validation_secret=validation,
        server_sans=tuple(value for _, value in sans),
    )


def decode_secret(msg: Proto) -> Secret:
    ctx = Ctx("Secret", str(msg.name))
    check(msg, ctx, "")
    if not msg.name:
        raise ctx.error("name", "a secret needs a name")
    if not msg.HasField("validation_context"):
        raise ctx.error("validation_context", "plait sends trust bundles only: it is required")
    check(msg.validation_context, ctx, "validation_context")
    if msg.validation_context.match_typed_subject_alt_names:
        raise ctx.error(
            "validation_context.match_typed_subject_alt_names",
            "SAN matchers belong in the TLS context, not the trust bundle",
        )
    path = "validation_context.trusted_ca"
    if not msg.validation_context.HasField("trusted_ca"):
        raise ctx.error(path, "is required (PEM roots as inline_bytes)")
    check(msg.validation_context.trusted_ca, ctx, path)
    pem = bytes(msg.validation_context.trusted_ca.inline_bytes)
    if PEM_CERTIFICATE not in pem:
        raise ctx.error(at(path, "inline_bytes"), "must hold PEM certificates")
    return Secret(name=ctx.name, trusted_ca=pem)


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
        tls = None
        if msg.HasField("transport_socket"):
            tls = _upstream_tls(msg.transport_socket, ctx, "transport_socket")
        return Cluster(ctx.name, lb_policy, connect_timeout, "eds", tls=tls)
    if msg.HasField("transport_socket"):
        raise ctx.error("transport_socket", "only EDS (outbound) clusters use mTLS")
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
    SECRET: _Kind("Secret", secret_pb2.Secret, decode_secret, lambda v: v.name),
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
    """A new config with ``resources`` applied: for Listener, Cluster and Secret they
    replace every resource of the type; for ClusterLoadAssignment and
    RouteConfiguration (``MERGED_TYPES``) they replace the names they carry and the
    other names still needed are kept (see the module docstring).

    Raises :class:`UnsupportedConfig` for the first resource outside the subset; the
    caller NACKs and keeps ``current``. ``version`` (the response's ``version_info``) is
    recorded in ``versions``.
    """
    return apply_decoded(current, type_url, decode_resources(type_url, resources), version)


MERGED_TYPES = frozenset({ENDPOINT, ROUTE})
"""Types whose responses merge into what the proxy holds (changed-only, docs/xds.md)."""


def apply_decoded(
    current: ProxyConfig, type_url: str, decoded: dict[str, Any], version: str | None = None
) -> ProxyConfig:
    """:func:`apply_response` for what :func:`decode_resources` gave."""
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
        merged = {**cfg.route_tables, **decoded}
        return replace(cfg, route_tables={k: v for k, v in merged.items() if k in keep})
    if type_url == SECRET:
        return replace(cfg, secrets=decoded)
    if type_url == CLUSTER:
        cfg = replace(cfg, clusters=decoded)
        keep = set(eds_names(cfg))
        return replace(cfg, endpoints={k: v for k, v in cfg.endpoints.items() if k in keep})
    keep = set(eds_names(cfg))
    endpoints = {**cfg.endpoints, **{k: v[1] for k, v in decoded.items()}}
    return replace(cfg, endpoints={k: v for k, v in endpoints.items() if k in keep})


def held_names(cfg: ProxyConfig, type_url: str) -> frozenset[str]:
    """The names of ``type_url`` resources ``cfg`` holds (for ``MERGED_TYPES``)."""
    if type_url == ENDPOINT:
        return frozenset(cfg.endpoints)
    if type_url == ROUTE:
        return frozenset(cfg.route_tables)
    raise ValueError(f"{type_url} responses are not merged")


def merge_raw(
    held: Mapping[str, Any],
    names: Sequence[str],
    resources: Sequence[Any],
    keep: AbstractSet[str],
) -> dict[str, Any]:
    """The raw resources (``Any``, or their bytes) a proxy holds after it applied a
    merged response: ``held`` by name, the response's ``resources`` (named ``names``, as
    :func:`decode_resources` gave them, in order) replacing theirs, only names in
    ``keep`` (:func:`held_names` of the config after the response), sorted by name.
    Kept for the last-known-good file, which must hold every resource in the config."""
    merged = {**held, **dict(zip(names, resources, strict=True))}
    return {name: merged[name] for name in sorted(merged) if name in keep}


def raw_name(type_url: str, raw: Any) -> str:
    """The name of one raw resource (an ``Any`` or its serialized bytes) of ``type_url``,
    parsed, not validated; "" if it cannot be parsed (it is then dropped)."""
    kind = _KINDS.get(type_url)
    if kind is None:
        return ""
    try:
        packed = any_pb2.Any.FromString(raw) if isinstance(raw, bytes) else raw
        message = kind.message.FromString(packed.value)
    except DecodeError:
        return ""
    name = message.cluster_name if type_url == ENDPOINT else message.name
    return str(name)


def eds_names(cfg: ProxyConfig) -> list[str]:
    """The EDS clusters whose ClusterLoadAssignments to subscribe to, sorted."""
    return sorted(name for name, c in cfg.clusters.items() if c.discovery == "eds")


def rds_names(cfg: ProxyConfig) -> list[str]:
    """The RouteConfigurations the listeners name (RDS), sorted."""
    return sorted(
        {lst.route_config_name for lst in cfg.listeners.values() if lst.route_config_name}
    )
