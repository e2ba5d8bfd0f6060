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
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
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
HttpFilter = Any
TransportSocket = Any
Secret = Any

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
RBAC_FILTER = "envoy.filters.http.rbac"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"

TlsMode = Literal["plaintext", "permissive", "strict"]

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
    name: str,
    *,
    connect_timeout: float,
    lb_policy: LbPolicy = "round_robin",
    transport_socket: TransportSocket | None = None,
) -> Cluster:
    """An EDS cluster whose endpoints come over ADS under the cluster's own name.

    ``least_request`` is Envoy's power-of-two-choices (its default ``choice_count`` is 2,
    so ``least_request_lb_config`` is left unset: it is outside the supported subset).
    ``transport_socket`` (from :func:`make_upstream_tls`): connect with mTLS.
    """
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=make_ads_config_source()
        ),
        connect_timeout=make_duration(connect_timeout),
        lb_policy=_LB_POLICIES[lb_policy],
    )
    if transport_socket is not None:
        cluster.transport_socket.CopyFrom(transport_socket)
    return cluster


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
    http_filters: Sequence[HttpFilter] = (),
) -> HttpConnectionManager:
    """An HCM whose routes come over ADS as ``rds_name``, or inline as ``route_config``.

    ``http_filters`` (e.g. RBAC) run in order before the router, which is always last.
    """
    if (rds_name is None) == (route_config is None):
        raise ValueError("give exactly one of rds_name or route_config")
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix, http_filters=[*http_filters, make_router_filter()]
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
    http_filters: Sequence[HttpFilter] = (),
    tls_mode: TlsMode = "plaintext",
    downstream_tls: TransportSocket | None = None,
) -> Listener:
    """A listening socket whose filter chains run the HTTP connection manager.

    ``tls_mode`` (docs/mtls.md): ``plaintext`` one chain, no transport socket; ``strict``
    one chain matching ``transport_protocol: tls`` with ``downstream_tls``; ``permissive``
    the TLS chain plus a ``raw_buffer`` chain, and the TLS inspector listener filter.
    """
    manager = make_http_connection_manager(
        name, rds_name=rds_name, route_config=route_config, http_filters=http_filters
    )
    hcm_filter = listener_components_pb2.Filter(name=HCM_FILTER, typed_config=pack(manager))
    listener = listener_pb2.Listener(
        name=name,
        address=make_socket_address(address, port),
        traffic_direction=_DIRECTIONS[direction],
    )
    if tls_mode == "plaintext":
        listener.filter_chains.append(listener_components_pb2.FilterChain(filters=[hcm_filter]))
        return listener
    if downstream_tls is None:
        raise ValueError(f"a {tls_mode} listener needs downstream_tls")
    listener.filter_chains.append(
        listener_components_pb2.FilterChain(
            filter_chain_match=listener_components_pb2.FilterChainMatch(transport_protocol="tls"),
            filters=[hcm_filter],
            transport_socket=downstream_tls,
        )
    )
    if tls_mode == "permissive":
        listener.filter_chains.append(
            listener_components_pb2.FilterChain(
                filter_chain_match=listener_components_pb2.FilterChainMatch(
                    transport_protocol="raw_buffer"
                ),
                filters=[hcm_filter],
            )
        )
        listener.listener_filters.append(
            listener_components_pb2.ListenerFilter(
                name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector())
            )
        )
    return listener


# --- mutual TLS and RBAC (docs/mtls.md) -------------------------------------------------


def make_sds_config(name: str) -> Any:
    """An SDS reference: the secret ``name``, over ADS."""
    return secret_pb2.SdsSecretConfig(name=name, sds_config=make_ads_config_source())


def _tls13() -> Any:
    return common_pb2.TlsParameters(
        tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
        tls_maximum_protocol_version=common_pb2.TlsParameters.TLSv1_3,
    )


def _common_tls_context(certificate: str, validation: str, san: Any) -> Any:
    return tls_pb2.CommonTlsContext(
        tls_params=_tls13(),
        tls_certificate_sds_secret_configs=[make_sds_config(certificate)],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=[
                    common_pb2.SubjectAltNameMatcher(
                        san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=san
                    )
                ]
            ),
            validation_context_sds_secret_config=make_sds_config(validation),
        ),
    )


def make_upstream_tls(certificate: str, validation: str, server_san: str) -> TransportSocket:
    """A cluster's ``transport_socket``: mTLS, TLS 1.3, the server must present
    ``server_san`` (a URI SAN) and chain to the ``validation`` secret."""
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=_common_tls_context(
            certificate, validation, string_pb2.StringMatcher(exact=server_san)
        )
    )
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(context))


def make_downstream_tls(certificate: str, validation: str, peer_san_prefix: str) -> TransportSocket:
    """An inbound filter chain's ``transport_socket``: mTLS, TLS 1.3, a client certificate
    is required, chains to ``validation`` and has a URI SAN starting ``peer_san_prefix``."""
    context = tls_pb2.DownstreamTlsContext(
        require_client_certificate=wrappers_pb2.BoolValue(value=True),
        common_tls_context=_common_tls_context(
            certificate, validation, string_pb2.StringMatcher(prefix=peer_san_prefix)
        ),
    )
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(context))


def make_trust_bundle_secret(name: str, pem: bytes) -> Secret:
    """An SDS Secret holding trusted roots (PEM) as ``validation_context.trusted_ca``."""
    return secret_pb2.Secret(
        name=name,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=pem)
        ),
    )


RbacAction = Literal["ALLOW", "DENY"]


def make_rbac_filter(
    policy_name: str,
    action: RbacAction,
    principals: Sequence[str] = (),
    *,
    shadow: bool = False,
) -> HttpFilter:
    """``envoy.filters.http.rbac`` with one policy: any permission, peers whose
    authenticated principal is one of ``principals`` (none: any authenticated peer).
    ``shadow``: audit only (``shadow_rules``)."""
    if principals:
        ids = [
            rbac_pb2.Principal(
                authenticated=rbac_pb2.Principal.Authenticated(
                    principal_name=string_pb2.StringMatcher(exact=p)
                )
            )
            for p in principals
        ]
    else:
        ids = [rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated())]
    rules = rbac_pb2.RBAC(
        action=rbac_pb2.RBAC.DENY if action == "DENY" else rbac_pb2.RBAC.ALLOW,
        policies={
            policy_name: rbac_pb2.Policy(
                permissions=[rbac_pb2.Permission(any=True)], principals=ids
            )
        },
    )
    config = http_rbac_pb2.RBAC(shadow_rules=rules) if shadow else http_rbac_pb2.RBAC(rules=rules)
    return hcm_pb2.HttpFilter(name=RBAC_FILTER, typed_config=pack(config))


def transport_socket_secrets(socket: TransportSocket) -> list[str]:
    """The SDS names a TLS ``transport_socket`` refers to (empty for anything else)."""
    for cls in (tls_pb2.UpstreamTlsContext, tls_pb2.DownstreamTlsContext):
        if socket.typed_config.Is(cls.DESCRIPTOR):
            context = cls()
            socket.typed_config.Unpack(context)
            common = context.common_tls_context
            names = [c.name for c in common.tls_certificate_sds_secret_configs]
            if common.HasField("validation_context_sds_secret_config"):
                names.append(common.validation_context_sds_secret_config.name)
            combined = common.combined_validation_context
            if combined.HasField("validation_context_sds_secret_config"):
                names.append(combined.validation_context_sds_secret_config.name)
            return names
    return []


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
