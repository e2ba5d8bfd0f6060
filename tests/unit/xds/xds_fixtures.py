"""Shared helpers for the xDS tests: config, instances and nodes in one line each."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from envoy.config.route.v3 import route_components_pb2
from google.protobuf import any_pb2, descriptor_pool, message_factory, text_format

from plait.model.config import ConfigSet
from plait.model.resources import Route, Service
from plait.xds.builders import http_connection_manager_of
from plait.xds.inputs import InboundPort, Instance, NodeInfo
from plait.xds.snapshot import Snapshot
from plait.xds.translate import translate
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET


def service(name: str, **spec: Any) -> Service:
    return Service.model_validate({"metadata": {"name": name}, "spec": spec})


def route(service_name: str, *rules: dict[str, Any], name: str | None = None) -> Route:
    return Route.model_validate(
        {
            "metadata": {"name": name or service_name},
            "spec": {"service": service_name, "rules": list(rules)},
        }
    )


def config(*resources: Service | Route) -> ConfigSet:
    return ConfigSet(
        services={r.name: r for r in resources if isinstance(r, Service)},
        routes={r.name: r for r in resources if isinstance(r, Route)},
    )


CANARY_RULE: dict[str, Any] = {
    "backends": [
        {"subset": {"version": "v1"}, "weight": 90},
        {"subset": {"version": "v2"}, "weight": 10},
    ]
}


def shop_config() -> ConfigSet:
    """frontend (http), orders (grpc, v1/v2 with a 90/10 Route), inventory (round robin)."""
    return config(
        service("frontend"),
        service("orders", protocol="grpc", ports=[{"name": "grpc", "port": 50051}]),
        service(
            "inventory",
            ports=[{"name": "http", "port": 80}, {"name": "admin", "port": 8081}],
            loadBalancer="round_robin",
            connectTimeout="250ms",
        ),
        route("orders", CANARY_RULE),
    )


def shop_instances() -> list[Instance]:
    return [
        Instance("frontend", "node-a", "10.0.0.1", 15006),
        Instance("orders", "node-b", "10.0.0.2", 15006, {"version": "v1"}),
        Instance("orders", "node-c", "10.0.0.3", 15006, {"version": "v1", "zone": "b"}),
        Instance("orders", "node-d", "10.0.0.4", 15006, {"version": "v2"}),
        Instance("inventory", "node-b", "10.0.0.2", 15007),
    ]


def proxy_node() -> NodeInfo:
    return NodeInfo(
        node_id="node-a",
        plait_proxy=True,
        outbound_address="127.0.0.1",
        outbound_port=15001,
        inbound=(InboundPort("frontend", "10.0.0.1", 15006, app_port=9000),),
    )


def grpc_client_node() -> NodeInfo:
    return NodeInfo(node_id="grpc-client-1")


def proxy_snapshot() -> Snapshot:
    snapshot = translate(shop_config(), shop_instances(), proxy_node())
    assert snapshot.consistency_errors() == []
    return snapshot


def endpoints_of(snapshot: Snapshot, name: str) -> list[tuple[str, int]]:
    assignment = snapshot.items(ENDPOINT)[name]
    assert len(assignment.endpoints) == 1
    return [
        (e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
        for e in assignment.endpoints[0].lb_endpoints
    ]


def vhost(snapshot: Snapshot, service_name: str, config_name: str = "outbound") -> Any:
    (found,) = [
        v for v in snapshot.items(ROUTE)[config_name].virtual_hosts if v.name == service_name
    ]
    return found


def parse_route(text: str) -> Any:
    return text_format.Parse(text, route_components_pb2.Route())


def hcm_of(listener: Any) -> Any:
    """The listener's HTTP connection manager, which must be there."""
    manager = http_connection_manager_of(listener)
    assert manager is not None, f"listener {listener.name!r} has no HTTP connection manager"
    return manager


def set_field_paths(message: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every set leaf field; ``Any`` fields continue into the packed type
    as ``field<TypeName>`` (repeated fields have no index: the path is per field; a map
    gives ``field.key`` and ``field.value.<...>``)."""
    fields = message.ListFields()
    if not fields and prefix:
        yield prefix.rstrip(".")
    for descriptor, value in fields:
        path = prefix + descriptor.name
        entry = descriptor.message_type
        if entry is not None and entry.GetOptions().map_entry:  # map<k, v>: key and value
            for key in value:
                yield f"{path}.key"
                item = value[key]
                if hasattr(item, "ListFields"):
                    yield from set_field_paths(item, f"{path}.value.")
                else:
                    yield f"{path}.value"
            continue
        values = value if descriptor.is_repeated else [value]
        for item in values:
            if isinstance(item, any_pb2.Any):
                inner = _unpack(item)
                yield from set_field_paths(inner, f"{path}<{inner.DESCRIPTOR.name}>.")
            elif descriptor.message_type is not None:
                yield from set_field_paths(item, path + ".")
            else:
                yield path


def _unpack(packed: Any) -> Any:
    type_name = packed.type_url.split("/")[-1]
    descriptor = descriptor_pool.Default().FindMessageTypeByName(type_name)
    message = message_factory.GetMessageClass(descriptor)()
    packed.Unpack(message)
    return message


# --- the supported subset of docs/xds.md, as leaf field paths ----------------------------
# ALLOWED[type_url] lists every leaf field path a plait proxy honours, spelled as
# set_field_paths() spells them. Anything else in a resource for a plait proxy is NACKed.

_DURATION = ("seconds", "nanos")
_SOCKET = ("address.socket_address.address", "address.socket_address.port_value")

_ROUTE_CONFIG = {
    "name",
    "virtual_hosts.name",
    "virtual_hosts.domains",
    "virtual_hosts.routes.match.prefix",
    "virtual_hosts.routes.match.path",
    "virtual_hosts.routes.match.headers.name",
    "virtual_hosts.routes.match.headers.string_match.exact",
    "virtual_hosts.routes.match.headers.string_match.prefix",
    "virtual_hosts.routes.match.headers.present_match",
    "virtual_hosts.routes.match.headers.invert_match",
    "virtual_hosts.routes.route.cluster",
    "virtual_hosts.routes.route.weighted_clusters.clusters.name",
    "virtual_hosts.routes.route.weighted_clusters.clusters.weight.value",
    "virtual_hosts.routes.route.timeout",  # an empty Duration: 0 switches the timeout off
    *(f"virtual_hosts.routes.route.timeout.{f}" for f in _DURATION),
    "virtual_hosts.routes.route.retry_policy.retry_on",
    "virtual_hosts.routes.route.retry_policy.num_retries.value",
    *(f"virtual_hosts.routes.route.retry_policy.per_try_timeout.{f}" for f in _DURATION),
}

_RBAC_RULES = {
    "action",
    "policies.key",
    "policies.value.permissions.any",
    "policies.value.principals.authenticated",
    "policies.value.principals.authenticated.principal_name.exact",
}

_HCM = {
    "stat_prefix",
    "rds.route_config_name",
    "rds.config_source.ads",
    "http_filters.name",
    "http_filters.typed_config<Router>",
    *(
        f"http_filters.typed_config<RBAC>.{kind}.{p}"
        for kind in ("rules", "shadow_rules")
        for p in _RBAC_RULES
    ),
    *(f"route_config.{path}" for path in _ROUTE_CONFIG),
}

_LOAD_ASSIGNMENT = {
    "cluster_name",
    "endpoints.locality",
    "endpoints.load_balancing_weight.value",
    *(f"endpoints.lb_endpoints.endpoint.{path}" for path in _SOCKET),
    "endpoints.lb_endpoints.health_status",
}

_HCM_FILTER = "filter_chains.filters.typed_config<HttpConnectionManager>"

_SDS = ("name", "sds_config.ads")
_COMMON_TLS = {
    "tls_params.tls_minimum_protocol_version",
    "tls_params.tls_maximum_protocol_version",
    *(f"tls_certificate_sds_secret_configs.{p}" for p in _SDS),
    *(f"combined_validation_context.validation_context_sds_secret_config.{p}" for p in _SDS),
    "combined_validation_context.default_validation_context.match_typed_subject_alt_names.san_type",
}
_SAN_MATCHER = (
    "combined_validation_context.default_validation_context.match_typed_subject_alt_names.matcher"
)
_UPSTREAM_TLS = "transport_socket.typed_config<UpstreamTlsContext>.common_tls_context"
_DOWNSTREAM_TLS = "filter_chains.transport_socket.typed_config<DownstreamTlsContext>"

ALLOWED: dict[str, set[str]] = {
    LISTENER: {
        "name",
        *_SOCKET,
        "filter_chains.filters.name",
        *(f"{_HCM_FILTER}.{path}" for path in _HCM),
        "traffic_direction",
        # mTLS (docs/mtls.md)
        "listener_filters.name",
        "listener_filters.typed_config<TlsInspector>",
        "filter_chains.filter_chain_match.transport_protocol",
        "filter_chains.transport_socket.name",
        f"{_DOWNSTREAM_TLS}.require_client_certificate.value",
        *(f"{_DOWNSTREAM_TLS}.common_tls_context.{path}" for path in _COMMON_TLS),
        f"{_DOWNSTREAM_TLS}.common_tls_context.{_SAN_MATCHER}.prefix",
    },
    ROUTE: _ROUTE_CONFIG,
    CLUSTER: {
        "name",
        "type",
        "eds_cluster_config.eds_config.ads",
        *(f"connect_timeout.{f}" for f in _DURATION),
        "lb_policy",
        *(f"load_assignment.{path}" for path in _LOAD_ASSIGNMENT),
        "transport_socket.name",
        *(f"{_UPSTREAM_TLS}.{path}" for path in _COMMON_TLS),
        f"{_UPSTREAM_TLS}.{_SAN_MATCHER}.exact",
    },
    ENDPOINT: _LOAD_ASSIGNMENT,
    SECRET: {"name", "validation_context.trusted_ca.inline_bytes"},
}
