"""The xDS subset plait proxies accept, as a table, and the checks that enforce it.

:data:`ALLOWED` lists, per protobuf message, the fields that may be set (docs/xds.md,
"The supported subset", is the same list for people). :func:`check` compares a message's
set fields (``msg.ListFields()``: exactly the fields that are set, with their real names)
with the table and refuses the first one outside it, naming the field path; it also
refuses fields our protos do not know at all (sent by a newer control plane). The other
helpers read the small shared pieces (durations, socket addresses, ``ads`` config sources)
with the same care. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import unknown_fields

from plait.proxy.runtime import UnsupportedConfig
from plait.proxy.xds_schema import config_source_pb2

Proto = Any  # a protobuf message: plait.proxy.xds_schema's, or a generated one (no type stubs)

_MAX_DURATION_SECONDS = 315_576_000_000
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3"
_TLS = "envoy.extensions.transport_sockets.tls.v3"
_RBAC = "envoy.config.rbac.v3"

# The supported subset: per message, the fields that may be set. Anything else is refused.
ALLOWED: dict[str, frozenset[str]] = {
    name: frozenset(fields.split())
    for name, fields in {
        "envoy.config.listener.v3.Listener": (
            "name address filter_chains traffic_direction listener_filters"
        ),
        "envoy.config.listener.v3.FilterChain": (
            "name filters filter_chain_match transport_socket"
        ),
        "envoy.config.listener.v3.FilterChainMatch": "transport_protocol",
        "envoy.config.listener.v3.Filter": "name typed_config",
        "envoy.config.listener.v3.ListenerFilter": "name typed_config",
        "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector": "",
        "envoy.config.core.v3.Address": "socket_address",
        "envoy.config.core.v3.SocketAddress": "address port_value",
        f"{_HCM}.HttpConnectionManager": "stat_prefix rds route_config http_filters",
        f"{_HCM}.Rds": "config_source route_config_name",
        f"{_HCM}.HttpFilter": "name typed_config",
        "envoy.extensions.filters.http.router.v3.Router": "",
        "envoy.config.core.v3.ConfigSource": "ads resource_api_version",
        "envoy.config.core.v3.AggregatedConfigSource": "",
        "envoy.config.route.v3.RouteConfiguration": "name virtual_hosts",
        "envoy.config.route.v3.VirtualHost": "name domains routes",
        "envoy.config.route.v3.Route": "name match route",
        "envoy.config.route.v3.RouteMatch": "prefix path headers",
        "envoy.config.route.v3.HeaderMatcher": "name string_match present_match invert_match",
        "envoy.type.matcher.v3.StringMatcher": "exact prefix",
        "envoy.config.route.v3.RouteAction": "cluster weighted_clusters timeout retry_policy",
        "envoy.config.route.v3.WeightedCluster": "clusters",
        "envoy.config.route.v3.WeightedCluster.ClusterWeight": "name weight",
        "envoy.config.route.v3.RetryPolicy": "retry_on num_retries per_try_timeout",
        "envoy.config.cluster.v3.Cluster": (
            "name type eds_cluster_config connect_timeout lb_policy load_assignment "
            "transport_socket"
        ),
        "envoy.config.cluster.v3.Cluster.EdsClusterConfig": "eds_config service_name",
        "envoy.config.endpoint.v3.ClusterLoadAssignment": "cluster_name endpoints",
        "envoy.config.endpoint.v3.LocalityLbEndpoints": (
            "locality lb_endpoints load_balancing_weight"
        ),
        "envoy.config.core.v3.Locality": "region zone sub_zone",
        "envoy.config.endpoint.v3.LbEndpoint": "endpoint health_status",
        "envoy.config.endpoint.v3.Endpoint": "address",
        # mutual TLS (docs/mtls.md)
        "envoy.config.core.v3.TransportSocket": "name typed_config",
        f"{_TLS}.UpstreamTlsContext": "common_tls_context",
        f"{_TLS}.DownstreamTlsContext": "common_tls_context require_client_certificate",
        f"{_TLS}.CommonTlsContext": (
            "tls_params tls_certificate_sds_secret_configs combined_validation_context"
        ),
        f"{_TLS}.TlsParameters": "tls_minimum_protocol_version tls_maximum_protocol_version",
        f"{_TLS}.SdsSecretConfig": "name sds_config",
        f"{_TLS}.CommonTlsContext.CombinedCertificateValidationContext": (
            "default_validation_context validation_context_sds_secret_config"
        ),
        # match_typed_subject_alt_names in a TLS context, trusted_ca in a Secret (the
        # decoder allows each only in its place)
        f"{_TLS}.CertificateValidationContext": "match_typed_subject_alt_names trusted_ca",
        f"{_TLS}.SubjectAltNameMatcher": "san_type matcher",
        f"{_TLS}.Secret": "name validation_context",
        "envoy.config.core.v3.DataSource": "inline_bytes",
        # RBAC
        "envoy.extensions.filters.http.rbac.v3.RBAC": "rules shadow_rules",
        f"{_RBAC}.RBAC": "action policies",
        f"{_RBAC}.Policy": "permissions principals",
        f"{_RBAC}.Permission": "any",
        f"{_RBAC}.Principal": "authenticated",
        f"{_RBAC}.Principal.Authenticated": "principal_name",
    }.items()
}

_NO_STATS = "RBAC stat prefixes are not supported"

# What to say about a refused field, when there is more to say than "not supported".
_HINTS: dict[str, str] = {
    "transport_socket_matches": "give one transport_socket (docs/mtls.md)",
    "tls_certificates": (
        "inline certificates and private keys are not accepted: identities are made on "
        "the proxy's host (name one with tls_certificate_sds_secret_configs)"
    ),
    "tls_certificate": (
        "plait sends only trust bundles over SDS: identities are made on the proxy's host"
    ),
    "validation_context": "use combined_validation_context (docs/mtls.md)",
    "validation_context_sds_secret_config": "use combined_validation_context (docs/mtls.md)",
    "match_subject_alt_names": "deprecated: use match_typed_subject_alt_names",
    "cipher_suites": "TLS 1.3 only: its cipher suites are not configurable",
    "filename": "files are not read: send the PEM as inline_bytes",
    "inline_string": "send the PEM as inline_bytes",
    "server_names": "filter chains match on transport_protocol only",
    "rules_stat_prefix": _NO_STATS,
    "shadow_rules_stat_prefix": _NO_STATS,
    "matcher": "the RBAC matcher API is not supported: use rules or shadow_rules",
    "shadow_matcher": "the RBAC matcher API is not supported: use rules or shadow_rules",
    "condition": "RBAC conditions are not supported",
    "safe_regex": "regular expressions are not supported (use prefix or path)",
    "safe_regex_match": "regular expressions are not supported (use string_match.exact/prefix)",
    "exact_match": "deprecated: use string_match.exact",
    "prefix_match": "deprecated: use string_match.prefix",
    "redirect": "only route actions are supported (no redirect)",
    "direct_response": "only route actions are supported (no direct_response)",
    "scoped_routes": "use rds or an inline route_config",
}
_NOT_SUPPORTED = "is not supported by plait proxies (docs/xds.md lists the supported subset)"


@dataclass(frozen=True)
class Ctx:
    """The resource being decoded, so an error can name it."""

    type_name: str
    name: str

    def error(self, path: str, message: str) -> UnsupportedConfig:
        return UnsupportedConfig(self.type_name, self.name, path, message)


def at(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def check(msg: Proto, ctx: Ctx, path: str) -> None:
    """Refuse a message that sets any field outside the subset, or one we do not know."""
    allowed = ALLOWED[msg.DESCRIPTOR.full_name]
    for field, _value in msg.ListFields():
        if field.name not in allowed:
            raise ctx.error(at(path, field.name), _HINTS.get(field.name, _NOT_SUPPORTED))
    unknown = unknown_fields.UnknownFieldSet(msg)
    if len(unknown):
        number = unknown[0].field_number
        raise ctx.error(at(path, f"#{number}"), f"field number {number} is unknown to plait")


def unpack(packed: Proto, cls: Any, ctx: Ctx, path: str) -> Proto:
    expected = cls.DESCRIPTOR.full_name
    got = str(packed.type_url).rpartition("/")[2]
    if got != expected:
        raise ctx.error(path, f"type {got or '(none)'} is not supported (expected {expected})")
    msg = cls()
    try:
        msg.ParseFromString(packed.value)
    except Exception as exc:  # DecodeError, or RuntimeError on absurd nesting
        raise ctx.error(path, f"cannot decode {expected}: {exc}") from None
    return msg


def duration(value: Proto, ctx: Ctx, path: str) -> float:
    seconds, nanos = int(value.seconds), int(value.nanos)
    if seconds < 0 or nanos < 0 or nanos >= 1_000_000_000 or seconds > _MAX_DURATION_SECONDS:
        raise ctx.error(path, "must be a valid non-negative duration")
    return seconds + nanos / 1e9


def socket_address(holder: Proto, ctx: Ctx, path: str, min_port: int) -> tuple[str, int]:
    """``holder.address.socket_address.{address,port_value}``, checked."""
    where = at(path, "address.socket_address")
    if not holder.HasField("address"):
        raise ctx.error(where, "a socket address is required")
    check(holder.address, ctx, at(path, "address"))
    if not holder.address.HasField("socket_address"):
        raise ctx.error(where, "a socket address is required")
    sock = holder.address.socket_address
    check(sock, ctx, where)
    if not sock.address:
        raise ctx.error(at(where, "address"), "an address is required")
    port = int(sock.port_value)
    if not min_port <= port <= 65535:
        raise ctx.error(at(where, "port_value"), f"{port} is not a port ({min_port}-65535)")
    return str(sock.address), port


def ads_source(source: Proto, ctx: Ctx, path: str) -> None:
    """A ConfigSource must say ``ads: {}`` (everything comes over the one ADS stream)."""
    check(source, ctx, path)
    if source.WhichOneof("config_source_specifier") != "ads":
        raise ctx.error(at(path, "ads"), "must be set: resources come over ADS")
    check(source.ads, ctx, at(path, "ads"))
    version = int(source.resource_api_version)
    if version not in (config_source_pb2.ApiVersion.AUTO, config_source_pb2.ApiVersion.V3):
        raise ctx.error(at(path, "resource_api_version"), "only V3 is supported")


def enum_name(enum: Any, value: int) -> str:
    """The name of ``value`` in a protobuf ``enum`` (for messages), or the number itself."""
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)
