"""xDS protos -> runtime types: every supported field, every refusal names its field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    health_check_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import any_pb2, descriptor, duration_pb2, wrappers_pb2
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plait.model.resources import Route as ModelRoute
from plait.model.resources import Service
from plait.proxy import xds_schema
from plait.proxy.runtime import (
    Cluster,
    Endpoint,
    HeaderMatcher,
    Listener,
    ProxyConfig,
    RetryPolicy,
    RouteMatch,
    UnsupportedConfig,
    WeightedCluster,
)
from plait.proxy.xds_decode import (
    apply_response,
    decode_cluster,
    decode_listener,
    decode_load_assignment,
    decode_resources,
    decode_route_configuration,
    decode_secret,
    eds_names,
    rds_names,
)
from plait.xds import builders as b
from plait.xds.inputs import InboundPort, Instance, NodeInfo
from plait.xds.translate import translate
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SECRET

# --- valid resources ----------------------------------------------------------------------


def rds_listener(name: str = "outbound", port: int = 15001, rds: str = "outbound") -> Any:
    return b.make_http_listener(name, "127.0.0.1", port, direction="outbound", rds_name=rds)


def full_route_config(name: str = "outbound") -> Any:
    """Every route feature of the subset."""
    canary = b.make_route(
        b.make_route_match(
            prefix="/api",
            headers=[
                b.make_header_matcher("X-Canary", exact="1"),
                b.make_header_matcher("user-agent", prefix="curl/", invert=True),
                b.make_header_matcher("x-debug", present=True),
            ],
        ),
        weighted_clusters=[("outbound|orders|version=v1", 90), ("outbound|orders|version=v2", 10)],
        timeout=2.5,
        retry_policy=b.make_retry_policy(["5xx", "connect-failure"], 3, 0.5),
    )
    exact = b.make_route(b.make_route_match(path="/health"), cluster="outbound|orders", timeout=0)
    catch_all = b.make_route(b.make_route_match(prefix="/"), cluster="outbound|orders")
    return b.make_route_configuration(
        name,
        [
            b.make_virtual_host("orders", ["Orders", "orders:8080"], [canary, exact, catch_all]),
            b.make_virtual_host("any", ["*"], [catch_all]),
        ],
    )


def http_filter_any(message: Any) -> Any:
    return b.pack(message)


def listener_with_hcm(hcm: Any, name: str = "outbound") -> Any:
    lst = rds_listener(name)
    lst.filter_chains[0].filters[0].typed_config.CopyFrom(b.pack(hcm))
    return lst


def hcm_of(lst: Any) -> Any:
    manager = hcm_pb2.HttpConnectionManager()
    lst.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def eds_cluster(name: str = "outbound|orders") -> Any:
    return b.make_eds_cluster(name, connect_timeout=0.25, lb_policy="least_request")


def cla(name: str = "outbound|orders", *eps: tuple[str, int]) -> Any:
    return b.make_load_assignment(name, eps or [("10.0.0.1", 15006)])


def refusal(call: Callable[[], object]) -> UnsupportedConfig:
    with pytest.raises(UnsupportedConfig) as info:
        call()
    return info.value


# --- listeners ----------------------------------------------------------------------------


def test_outbound_listener_with_rds() -> None:
    lst = decode_listener(rds_listener())
    assert lst == Listener(
        name="outbound",
        address="127.0.0.1",
        port=15001,
        direction="outbound",
        route_config_name="outbound",
        stat_prefix="outbound",
    )


def test_inbound_listener_with_inline_routes_names_its_service() -> None:
    routes = b.make_route_configuration(
        "inbound|orders",
        [
            b.make_virtual_host(
                "inbound|orders",
                ["*"],
                [b.make_route(b.make_route_match(prefix="/"), cluster="inbound|orders")],
            )
        ],
    )
    msg = b.make_http_listener(
        "inbound|orders", "0.0.0.0", 15006, direction="inbound", route_config=routes
    )
    lst = decode_listener(msg)
    assert (lst.direction, lst.service, lst.route_config_name) == ("inbound", "orders", None)
    assert lst.route_table is not None
    assert lst.route_table.wildcard is lst.route_table.virtual_hosts[0]
    assert lst.route_table.by_domain == {}


@pytest.mark.parametrize(
    ("name", "direction"), [("inbound|web", "inbound"), ("outbound", "outbound")]
)
def test_unspecified_direction_follows_the_name(name: str, direction: str) -> None:
    msg = rds_listener(name)
    msg.ClearField("traffic_direction")
    assert decode_listener(msg).direction == direction


def test_port_zero_is_a_valid_listener_port() -> None:
    assert decode_listener(rds_listener(port=0)).port == 0


def _listener_refusals() -> list[tuple[str, Callable[[Any], None], str, str]]:
    fc = "filter_chains[0]"
    tc = f"{fc}.filters[0].typed_config"

    def set_hcm(change: Callable[[Any], None]) -> Callable[[Any], None]:
        def mutate(lst: Any) -> None:
            manager = hcm_of(lst)
            change(manager)
            lst.filter_chains[0].filters[0].typed_config.CopyFrom(b.pack(manager))

        return mutate

    def tls(lst: Any) -> None:
        lst.filter_chains[0].transport_socket.name = "envoy.transport_sockets.tls"
        lst.filter_chains[0].transport_socket.typed_config.CopyFrom(
            b.pack(tls_pb2.DownstreamTlsContext())
        )

    def cors_filter(m: Any) -> None:
        m.http_filters.insert(
            0,
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.cors", typed_config=b.pack(cors_pb2.Cors())
            ),
        )

    def named_filter(m: Any) -> None:
        del m.http_filters[:]
        m.http_filters.append(hcm_pb2.HttpFilter(name="envoy.filters.http.lua"))

    def router_option(m: Any) -> None:
        m.http_filters[0].typed_config.CopyFrom(
            b.pack(router_pb2.Router(suppress_envoy_headers=True))
        )

    def path_source(m: Any) -> None:
        m.rds.config_source.path = "/etc/routes.yaml"

    def v2_source(m: Any) -> None:
        m.rds.config_source.resource_api_version = config_source_pb2.ApiVersion.V2

    def unknown_field(lst: Any) -> None:
        lst.ParseFromString(lst.SerializeToString() + b"\xf8\x3f\x05")  # field 1023, varint

    return [
        ("tls", tls, f"{fc}.transport_socket", "only inbound listeners terminate mTLS"),
        ("chain match", lambda m: m.filter_chains[0].filter_chain_match.server_names.append("x"),
         f"{fc}.filter_chain_match.server_names", "transport_protocol only"),
        ("listener filter", lambda m: m.listener_filters.add(name="tls_inspector"),
         "listener_filters[0]", "not supported"),
        ("api listener", lambda m: m.api_listener.api_listener.CopyFrom(b.pack(hcm_of(m))),
         "api_listener", "not supported"),
        ("no address", lambda m: m.ClearField("address"), "address.socket_address", "required"),
        ("pipe", lambda m: m.address.pipe.SetInParent(), "address.pipe", "not supported"),
        ("udp", lambda m: setattr(m.address.socket_address, "protocol", 1),
         "address.socket_address.protocol", "not supported"),
        ("named port", lambda m: setattr(m.address.socket_address, "named_port", "http"),
         "address.socket_address.named_port", "not supported"),
        ("big port", lambda m: setattr(m.address.socket_address, "port_value", 70000),
         "address.socket_address.port_value", "70000 is not a port"),
        ("no host", lambda m: setattr(m.address.socket_address, "address", ""),
         "address.socket_address.address", "required"),
        ("two chains", lambda m: m.filter_chains.append(m.filter_chains[0]), "filter_chains",
         "give one chain (plaintext)"),
        ("no filter", lambda m: m.filter_chains[0].ClearField("filters"), f"{fc}.filters",
         "exactly one"),
        ("tcp proxy", lambda m: m.filter_chains[0].filters[0].typed_config.CopyFrom(
            b.pack(tcp_proxy_pb2.TcpProxy(stat_prefix="x", cluster="c"))), tc,
         "TcpProxy is not supported"),
        ("no typed config", lambda m: m.filter_chains[0].filters[0].ClearField("typed_config"),
         tc, "config is required"),
        ("bad direction", lambda m: setattr(m, "traffic_direction", 7), "traffic_direction",
         "INBOUND or OUTBOUND"),
        ("unknown field", unknown_field, "#1023", "unknown to plait"),
        ("cors", set_hcm(cors_filter), f"{tc}.http_filters[0].typed_config",
         "envoy.extensions.filters.http.cors.v3.Cors is not supported"),
        ("lua by name", set_hcm(named_filter), f"{tc}.http_filters[0]",
         "'envoy.filters.http.lua' is not supported"),
        ("no router", set_hcm(lambda m: m.ClearField("http_filters")), f"{tc}.http_filters",
         "router filter is required"),
        ("router twice", set_hcm(lambda m: m.http_filters.append(m.http_filters[0])),
         f"{tc}.http_filters[1]", "must be the last filter"),
        ("router option", set_hcm(router_option),
         f"{tc}.http_filters[0].typed_config.suppress_envoy_headers", "not supported"),
        ("codec", set_hcm(lambda m: setattr(m, "codec_type", 2)), f"{tc}.codec_type",
         "not supported"),
        ("idle timeout", set_hcm(lambda m: m.common_http_protocol_options.CopyFrom(
            protocol_pb2.HttpProtocolOptions(idle_timeout=duration_pb2.Duration(seconds=1)))),
         f"{tc}.common_http_protocol_options", "not supported"),
        ("path source", set_hcm(path_source), f"{tc}.rds.config_source.path", "not supported"),
        ("no source", set_hcm(lambda m: m.rds.ClearField("config_source")),
         f"{tc}.rds.config_source.ads", "must be set"),
        ("v2 source", set_hcm(v2_source), f"{tc}.rds.config_source.resource_api_version",
         "only V3"),
        ("no rds name", set_hcm(lambda m: setattr(m.rds, "route_config_name", "")),
         f"{tc}.rds.route_config_name", "name is needed"),
        ("no routes", set_hcm(lambda m: m.ClearField("rds")), f"{tc}.route_specifier",
         "give rds"),
        ("scoped", set_hcm(lambda m: m.scoped_routes.SetInParent()), f"{tc}.scoped_routes",
         "use rds"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [pytest.param(m, f, w, id=i) for i, m, f, w in _listener_refusals()],
)
def test_listener_refusals_name_the_field(
    mutate: Callable[[Any], None], field: str, words: str
) -> None:
    msg = rds_listener()
    mutate(msg)
    err = refusal(lambda: decode_listener(msg))
    assert (err.type_name, err.resource, err.field_path) == ("Listener", "outbound", field)
    assert words in err.message
    assert str(err).startswith(f"Listener 'outbound': {field}: ")


def test_a_config_source_with_no_ads_names_the_missing_field() -> None:
    manager = hcm_of(rds_listener())
    manager.rds.config_source.Clear()
    manager.rds.config_source.resource_api_version = config_source_pb2.ApiVersion.V3
    err = refusal(lambda: decode_listener(listener_with_hcm(manager)))
    assert err.field_path.endswith("rds.config_source.ads")


def test_an_unnamed_listener_is_refused() -> None:
    msg = rds_listener()
    msg.name = ""
    assert refusal(lambda: decode_listener(msg)).field_path == "name"


# --- routes -------------------------------------------------------------------------------


def test_every_route_feature_decodes() -> None:
    table = decode_route_configuration(full_route_config())
    orders, anything = table.virtual_hosts
    assert table.name == "outbound"
    assert orders.domains == ("orders", "orders:8080")
    assert table.by_domain == {"orders": orders, "orders:8080": orders}
    assert table.wildcard is anything
    canary, exact, catch_all = orders.routes
    assert canary.match == RouteMatch(
        prefix="/api",
        headers=(
            HeaderMatcher("x-canary", exact="1"),
            HeaderMatcher("user-agent", prefix="curl/", invert=True),
            HeaderMatcher("x-debug", present=True),
        ),
    )
    assert canary.clusters == (
        WeightedCluster("outbound|orders|version=v1", 90),
        WeightedCluster("outbound|orders|version=v2", 10),
    )
    assert canary.total_weight == 100
    assert canary.timeout == 2.5
    assert canary.retry == RetryPolicy(3, frozenset({"5xx", "connect-failure"}), 0.5)
    assert exact.match == RouteMatch(path="/health")
    assert exact.timeout is None  # 0 switches the route timeout off
    assert catch_all.timeout == 15.0  # Envoy's default when unset
    assert catch_all.clusters == (WeightedCluster("outbound|orders", 1),)
    assert catch_all.total_weight == 1
    assert catch_all.retry is None


def test_present_false_and_retry_defaults() -> None:
    route = route_components_pb2.Route(
        name="r",
        match=route_components_pb2.RouteMatch(
            prefix="",
            headers=[route_components_pb2.HeaderMatcher(name="X-A", present_match=False)],
        ),
        route=route_components_pb2.RouteAction(
            cluster="c", retry_policy=route_components_pb2.RetryPolicy(retry_on="reset")
        ),
    )
    table = decode_route_configuration(b.make_route_configuration("t", [
        b.make_virtual_host("v", ["a"], [route])]))  # fmt: skip
    decoded = table.virtual_hosts[0].routes[0]
    assert decoded.name == "r"
    assert decoded.match == RouteMatch(prefix="", headers=(HeaderMatcher("x-a", present=False),))
    assert decoded.retry == RetryPolicy(1, frozenset({"reset"}), None)


def test_a_weighted_cluster_without_weight_counts_zero() -> None:
    msg = full_route_config()
    clusters = msg.virtual_hosts[0].routes[0].route.weighted_clusters.clusters
    clusters[1].ClearField("weight")
    route = decode_route_configuration(msg).virtual_hosts[0].routes[0]
    assert [c.weight for c in route.clusters] == [90, 0]
    assert route.total_weight == 90


R0 = "virtual_hosts[0].routes[0]"


def _route_refusals() -> list[tuple[str, Callable[[Any], None], str, str]]:
    def r0(m: Any) -> Any:
        return m.virtual_hosts[0].routes[0]

    def wc(m: Any) -> Any:
        return r0(m).route.weighted_clusters

    def retry(m: Any) -> Any:
        return r0(m).route.retry_policy

    def regex(m: Any) -> None:
        r0(m).match.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex="/a.*"))

    def zero_weights(m: Any) -> None:
        for c in r0(m).route.weighted_clusters.clusters:
            c.weight.value = 0

    def header_regex(m: Any) -> None:
        r0(m).match.headers[0].safe_regex_match.CopyFrom(regex_pb2.RegexMatcher(regex="1"))

    def header_suffix(m: Any) -> None:
        r0(m).match.headers[0].string_match.CopyFrom(string_pb2.StringMatcher(suffix="1"))

    def redirect(m: Any) -> None:
        r0(m).redirect.host_redirect = "example.com"

    def dup_domain(m: Any) -> None:
        m.virtual_hosts[1].domains.append("ORDERS")

    return [
        ("regex path", regex, f"{R0}.match.safe_regex", "regular expressions"),
        ("zero weights", zero_weights, f"{R0}.route.weighted_clusters.clusters", "add up to 0"),
        ("no weighted", lambda m: r0(m).route.weighted_clusters.ClearField("clusters"),
         f"{R0}.route.weighted_clusters.clusters", "add up to 0"),
        ("total weight", lambda m: setattr(wc(m).total_weight, "value", 100),
         f"{R0}.route.weighted_clusters.total_weight", "not supported"),
        ("unnamed backend", lambda m: setattr(wc(m).clusters[0], "name", ""),
         f"{R0}.route.weighted_clusters.clusters[0].name", "required"),
        ("header regex", header_regex, f"{R0}.match.headers[0].safe_regex_match",
         "regular expressions"),
        ("header suffix", header_suffix, f"{R0}.match.headers[0].string_match.suffix",
         "not supported"),
        ("ignore case", lambda m: setattr(r0(m).match.headers[0].string_match, "ignore_case", True),
         f"{R0}.match.headers[0].string_match.ignore_case", "not supported"),
        ("empty string match", lambda m: r0(m).match.headers[0].string_match.Clear(),
         f"{R0}.match.headers[0].string_match", "give exact or prefix"),
        ("legacy exact", lambda m: setattr(r0(m).match.headers[0], "exact_match", "1"),
         f"{R0}.match.headers[0].exact_match", "use string_match.exact"),
        ("no header kind", lambda m: r0(m).match.headers[0].ClearField("string_match"),
         f"{R0}.match.headers[0].string_match", "give string_match or present_match"),
        ("unnamed header", lambda m: setattr(r0(m).match.headers[0], "name", ""),
         f"{R0}.match.headers[0].name", "required"),
        ("query match", lambda m: r0(m).match.query_parameters.add(name="q"),
         f"{R0}.match.query_parameters", "not supported"),
        ("case", lambda m: setattr(r0(m).match.case_sensitive, "value", False),
         f"{R0}.match.case_sensitive", "not supported"),
        ("no path kind", lambda m: r0(m).match.ClearField("prefix"), f"{R0}.match.prefix",
         "give prefix or path"),
        ("no match", lambda m: r0(m).ClearField("match"), f"{R0}.match", "needs a match"),
        ("redirect", redirect, f"{R0}.redirect", "no redirect"),
        ("no action", lambda m: r0(m).ClearField("route"), f"{R0}.route", "action is required"),
        ("rewrite", lambda m: setattr(r0(m).route, "prefix_rewrite", "/"),
         f"{R0}.route.prefix_rewrite", "not supported"),
        ("hash policy", lambda m: r0(m).route.hash_policy.add(),
         f"{R0}.route.hash_policy", "not supported"),
        ("cluster header", lambda m: setattr(r0(m).route, "cluster_header", "x-cluster"),
         f"{R0}.route.cluster_header", "not supported"),
        ("no cluster", lambda m: r0(m).route.ClearField("weighted_clusters"),
         f"{R0}.route.cluster", "give cluster or weighted_clusters"),
        ("retry 429", lambda m: setattr(retry(m), "retry_on", "5xx,retriable-status-codes"),
         f"{R0}.route.retry_policy.retry_on", "'retriable-status-codes' is not supported"),
        ("retry backoff", lambda m: retry(m).retry_back_off.base_interval.FromSeconds(1),
         f"{R0}.route.retry_policy.retry_back_off", "not supported"),
        ("negative timeout", lambda m: setattr(r0(m).route.timeout, "seconds", -1),
         f"{R0}.route.timeout", "non-negative duration"),
        ("bad nanos", lambda m: setattr(retry(m).per_try_timeout, "nanos", 2_000_000_000),
         f"{R0}.route.retry_policy.per_try_timeout", "valid"),
        ("route headers", lambda m: r0(m).request_headers_to_add.add(),
         f"{R0}.request_headers_to_add", "not supported"),
        ("tls vhost", lambda m: setattr(m.virtual_hosts[0], "require_tls", 1),
         "virtual_hosts[0].require_tls", "not supported"),
        ("no domains", lambda m: m.virtual_hosts[0].ClearField("domains"),
         "virtual_hosts[0].domains", "at least one domain"),
        ("suffix domain", lambda m: m.virtual_hosts[0].domains.append("*.example.com"),
         "virtual_hosts[0].domains[2]", "exact host"),
        ("empty domain", lambda m: m.virtual_hosts[0].domains.append(""),
         "virtual_hosts[0].domains[2]", "exact host"),
        ("dup domain", dup_domain, "virtual_hosts[1].domains[1]", "already used"),
        ("two wildcards", lambda m: m.virtual_hosts[0].domains.append("*"),
         "virtual_hosts[1].domains[0]", "already used"),
        ("validate", lambda m: setattr(m.validate_clusters, "value", True), "validate_clusters",
         "not supported"),
        ("vhds", lambda m: m.vhds.SetInParent(), "vhds", "not supported"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [pytest.param(m, f, w, id=i) for i, m, f, w in _route_refusals()],
)
def test_route_refusals_name_the_field(
    mutate: Callable[[Any], None], field: str, words: str
) -> None:
    msg = full_route_config()
    mutate(msg)
    err = refusal(lambda: decode_route_configuration(msg))
    assert (err.type_name, err.resource, err.field_path) == (
        "RouteConfiguration",
        "outbound",
        field,
    )
    assert words in err.message


def test_an_inline_route_refusal_is_the_listeners_with_the_full_path() -> None:
    routes = full_route_config("inline")
    routes.virtual_hosts[0].routes[0].match.safe_regex.regex = "x"
    msg = b.make_http_listener(
        "inbound|a", "127.0.0.1", 1, direction="inbound", route_config=routes
    )
    err = refusal(lambda: decode_listener(msg))
    assert str(err) == (
        "Listener 'inbound|a': filter_chains[0].filters[0].typed_config.route_config."
        "virtual_hosts[0].routes[0].match.safe_regex: "
        "regular expressions are not supported (use prefix or path)"
    )


def test_an_unnamed_route_configuration_is_refused() -> None:
    msg = full_route_config("")
    assert refusal(lambda: decode_route_configuration(msg)).field_path == "name"


# --- clusters -----------------------------------------------------------------------------


def test_eds_cluster() -> None:
    assert decode_cluster(eds_cluster()) == Cluster(
        "outbound|orders", "least_request", 0.25, "eds", ()
    )


def test_cluster_defaults_follow_envoy() -> None:
    msg = eds_cluster()
    msg.ClearField("connect_timeout")
    msg.ClearField("lb_policy")
    msg.eds_cluster_config.service_name = "outbound|orders"  # same as the name: allowed
    msg.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.ApiVersion.V3
    cluster = decode_cluster(msg)
    assert (cluster.lb_policy, cluster.connect_timeout) == ("round_robin", 5.0)


def test_static_cluster_carries_its_endpoints() -> None:
    msg = b.make_static_cluster(
        "inbound|orders", [("127.0.0.1", 9001)], connect_timeout=1, lb_policy="round_robin"
    )
    assert decode_cluster(msg) == Cluster(
        "inbound|orders", "round_robin", 1.0, "static", (Endpoint("127.0.0.1", 9001),)
    )


def test_a_cluster_without_type_is_static_as_in_envoy() -> None:
    msg = b.make_static_cluster("s", [("127.0.0.1", 9001)], connect_timeout=1)
    msg.ClearField("type")
    assert decode_cluster(msg).discovery == "static"


def test_ring_hash_refusal_reads_well() -> None:
    msg = eds_cluster("x")
    msg.lb_policy = cluster_pb2.Cluster.RING_HASH
    assert str(refusal(lambda: decode_cluster(msg))) == (
        "Cluster 'x': lb_policy: RING_HASH is not supported (use ROUND_ROBIN or LEAST_REQUEST)"
    )


def _cluster_refusals() -> list[tuple[str, Callable[[Any], None], str, str]]:
    def tls(m: Any) -> None:
        m.transport_socket.name = "envoy.transport_sockets.tls"
        m.transport_socket.typed_config.CopyFrom(b.pack(tls_pb2.UpstreamTlsContext()))

    def static_with_eds(m: Any) -> None:
        m.type = cluster_pb2.Cluster.STATIC

    def eds(m: Any) -> Any:
        return m.eds_cluster_config.eds_config

    def zero_connect_timeout(m: Any) -> None:
        m.ClearField("connect_timeout")
        m.connect_timeout.SetInParent()

    return [
        ("tls", tls, "transport_socket.typed_config.common_tls_context", "is required"),
        ("tls matches", lambda m: m.transport_socket_matches.add(name="x"),
         "transport_socket_matches", "give one transport_socket"),
        ("dns", lambda m: setattr(m, "type", cluster_pb2.Cluster.STRICT_DNS), "type",
         "STRICT_DNS is not supported (use EDS or STATIC)"),
        ("odd type", lambda m: setattr(m, "type", 42), "type", "42 is not supported"),
        ("custom type", lambda m: setattr(m.cluster_type, "name", "envoy.clusters.aggregate"),
         "cluster_type", "not supported"),
        ("maglev", lambda m: setattr(m, "lb_policy", cluster_pb2.Cluster.MAGLEV), "lb_policy",
         "MAGLEV is not supported"),
        ("lr config", lambda m: setattr(m.least_request_lb_config.choice_count, "value", 3),
         "least_request_lb_config", "not supported"),
        ("health checks", lambda m: m.health_checks.add(), "health_checks", "not supported"),
        ("breakers", lambda m: m.circuit_breakers.CopyFrom(circuit_breaker_pb2.CircuitBreakers(
            thresholds=[circuit_breaker_pb2.CircuitBreakers.Thresholds()])),
         "circuit_breakers", "not supported"),
        ("outliers", lambda m: m.outlier_detection.CopyFrom(
            outlier_detection_pb2.OutlierDetection(consecutive_5xx=wrappers_pb2.UInt32Value(value=5))),
         "outlier_detection", "not supported"),
        ("http2", lambda m: m.http2_protocol_options.SetInParent(), "http2_protocol_options",
         "not supported"),
        ("no eds config", lambda m: m.eds_cluster_config.ClearField("eds_config"),
         "eds_cluster_config.eds_config.ads", "needs ADS"),
        ("no eds cluster config", lambda m: m.ClearField("eds_cluster_config"),
         "eds_cluster_config.eds_config.ads", "needs ADS"),
        ("eds self", lambda m: m.eds_cluster_config.eds_config.self.SetInParent(),
         "eds_cluster_config.eds_config.self", "not supported"),
        ("eds fetch timeout", lambda m: eds(m).initial_fetch_timeout.FromSeconds(1),
         "eds_cluster_config.eds_config.initial_fetch_timeout", "not supported"),
        ("service name", lambda m: setattr(m.eds_cluster_config, "service_name", "other"),
         "eds_cluster_config.service_name", "leave empty"),
        ("eds with endpoints", lambda m: m.load_assignment.CopyFrom(cla("x")), "load_assignment",
         "over EDS"),
        ("static without endpoints", static_with_eds, "eds_cluster_config", "only an EDS cluster"),
        ("zero connect timeout", zero_connect_timeout, "connect_timeout", "greater than 0"),
        ("unnamed", lambda m: setattr(m, "name", ""), "name", "needs a name"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [pytest.param(m, f, w, id=i) for i, m, f, w in _cluster_refusals()],
)
def test_cluster_refusals_name_the_field(
    mutate: Callable[[Any], None], field: str, words: str
) -> None:
    msg = eds_cluster("x")
    mutate(msg)
    err = refusal(lambda: decode_cluster(msg))
    assert (err.type_name, err.field_path) == ("Cluster", field)
    assert words in err.message


def test_static_cluster_without_load_assignment_is_refused() -> None:
    msg = b.make_static_cluster("s", [("127.0.0.1", 1)], connect_timeout=1)
    msg.ClearField("load_assignment")
    assert refusal(lambda: decode_cluster(msg)).field_path == "load_assignment"


def test_static_cluster_endpoint_refusal_has_the_load_assignment_path() -> None:
    msg = b.make_static_cluster("s", [("127.0.0.1", 1)], connect_timeout=1)
    msg.load_assignment.endpoints[0].lb_endpoints[0].endpoint.ClearField("address")
    err = refusal(lambda: decode_cluster(msg))
    assert err.field_path == (
        "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address"
    )


# --- endpoints ----------------------------------------------------------------------------


def test_load_assignment_keeps_unhealthy_endpoints_marked() -> None:
    msg = cla("c", ("10.0.0.1", 1), ("10.0.0.2", 2), ("10.0.0.3", 3))
    statuses = [
        health_check_pb2.UNKNOWN,
        health_check_pb2.HEALTHY,
        health_check_pb2.UNHEALTHY,
        health_check_pb2.DRAINING,
        health_check_pb2.TIMEOUT,
        health_check_pb2.DEGRADED,
    ]
    second = msg.endpoints.add(locality=base_pb2.Locality(region="r", zone="z", sub_zone="s"))
    for i, status in enumerate(statuses):
        second.lb_endpoints.add(
            endpoint=endpoint_components_pb2.Endpoint(
                address=b.make_socket_address("10.1.0.1", 100 + i)
            ),
            health_status=status,
        )
    name, endpoints = decode_load_assignment(msg)
    assert name == "c"
    assert endpoints[:3] == (
        Endpoint("10.0.0.1", 1),
        Endpoint("10.0.0.2", 2),
        Endpoint("10.0.0.3", 3),
    )
    assert [e.healthy for e in endpoints[3:]] == [True, True, False, False, False, True]


def test_an_empty_load_assignment_has_no_endpoints() -> None:
    assert decode_load_assignment(endpoint_pb2.ClusterLoadAssignment(cluster_name="c")) == ("c", ())


PIPE = address_pb2.Address(pipe=address_pb2.Pipe(path="/s"))


def _endpoint_refusals() -> list[tuple[str, Callable[[Any], None], str, str]]:
    e0 = "endpoints[0]"
    lb0 = f"{e0}.lb_endpoints[0]"

    def lbe(m: Any) -> Any:
        return m.endpoints[0].lb_endpoints[0]

    return [
        ("no address", lambda m: lbe(m).endpoint.ClearField("address"),
         f"{lb0}.endpoint.address.socket_address", "a socket address is required"),
        ("pipe", lambda m: lbe(m).endpoint.address.CopyFrom(PIPE),
         f"{lb0}.endpoint.address.pipe", "not supported"),
        ("port 0", lambda m: setattr(lbe(m).endpoint.address.socket_address, "port_value", 0),
         f"{lb0}.endpoint.address.socket_address.port_value", "0 is not a port (1-65535)"),
        ("no endpoint", lambda m: lbe(m).ClearField("endpoint"), f"{lb0}.endpoint", "required"),
        ("named", lambda m: setattr(lbe(m), "endpoint_name", "x"), f"{lb0}.endpoint_name",
         "not supported"),
        ("weight", lambda m: setattr(lbe(m).load_balancing_weight, "value", 3),
         f"{lb0}.load_balancing_weight", "not supported"),
        ("hostname", lambda m: setattr(lbe(m).endpoint, "hostname", "h"),
         f"{lb0}.endpoint.hostname", "not supported"),
        ("hc port", lambda m: setattr(lbe(m).endpoint.health_check_config, "port_value", 9),
         f"{lb0}.endpoint.health_check_config", "not supported"),
        ("odd health", lambda m: setattr(lbe(m), "health_status", 99), f"{lb0}.health_status",
         "unknown health status 99"),
        ("priority", lambda m: setattr(m.endpoints[0], "priority", 1), f"{e0}.priority",
         "not supported"),
        ("policy", lambda m: setattr(m.policy.overprovisioning_factor, "value", 140), "policy",
         "not supported"),
        ("unnamed", lambda m: setattr(m, "cluster_name", ""), "cluster_name", "required"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [pytest.param(m, f, w, id=i) for i, m, f, w in _endpoint_refusals()],
)
def test_endpoint_refusals_name_the_field(
    mutate: Callable[[Any], None], field: str, words: str
) -> None:
    msg = cla("c")
    mutate(msg)
    err = refusal(lambda: decode_load_assignment(msg))
    assert (err.type_name, err.field_path) == ("ClusterLoadAssignment", field)
    assert words in err.message


# --- whole responses ----------------------------------------------------------------------


def packed(*messages: Any) -> list[Any]:
    return [b.pack(m) for m in messages]


def base_config() -> ProxyConfig:
    cfg = apply_response(
        ProxyConfig(), CLUSTER, packed(eds_cluster("a"), eds_cluster("b")), version="c1"
    )
    cfg = apply_response(cfg, ENDPOINT, packed(cla("a"), cla("b")), version="e1")
    cfg = apply_response(cfg, LISTENER, packed(rds_listener()), version="l1")
    return apply_response(cfg, ROUTE, packed(full_route_config()), version="r1")


def test_responses_build_a_whole_config() -> None:
    cfg = base_config()
    assert sorted(cfg.clusters) == ["a", "b"]
    assert sorted(cfg.endpoints) == ["a", "b"]
    assert list(cfg.listeners) == ["outbound"]
    assert list(cfg.route_tables) == ["outbound"]
    assert cfg.versions == {CLUSTER: "c1", ENDPOINT: "e1", LISTENER: "l1", ROUTE: "r1"}
    assert eds_names(cfg) == ["a", "b"]
    assert rds_names(cfg) == ["outbound"]


def test_a_response_replaces_its_whole_type_and_returns_a_new_config() -> None:
    cfg = base_config()
    after = apply_response(cfg, CLUSTER, packed(eds_cluster("b"), eds_cluster("c")), version="c2")
    assert sorted(after.clusters) == ["b", "c"]
    assert sorted(after.endpoints) == ["b"]  # a's endpoints went with cluster a
    assert after.versions[CLUSTER] == "c2"
    assert sorted(cfg.clusters) == ["a", "b"]  # the old config is untouched
    assert cfg.versions[CLUSTER] == "c1"


def test_an_empty_response_removes_every_resource_of_the_type() -> None:
    cfg = apply_response(base_config(), LISTENER, [], version="l2")
    assert cfg.listeners == {}
    assert cfg.route_tables == {}  # nothing names "outbound" any more
    assert rds_names(cfg) == []


def test_resources_nobody_asked_for_are_dropped() -> None:
    cfg = apply_response(base_config(), ENDPOINT, packed(cla("a"), cla("zzz")), version="e2")
    assert sorted(cfg.endpoints) == ["a", "b"]  # EDS merges: b is kept, zzz is not needed
    cfg = apply_response(cfg, ROUTE, packed(full_route_config("other")), version="r2")
    assert list(cfg.route_tables) == ["outbound"]  # RDS merges too; "other" is not needed


def test_static_clusters_are_not_eds_names() -> None:
    static = b.make_static_cluster("s", [("127.0.0.1", 1)], connect_timeout=1)
    cfg = apply_response(ProxyConfig(), CLUSTER, packed(static, eds_cluster("e")))
    assert eds_names(cfg) == ["e"]
    assert cfg.versions == {}  # no version given, none recorded


def test_a_bad_resource_refuses_the_whole_response() -> None:
    cfg = base_config()
    bad = eds_cluster("bad")
    bad.lb_policy = cluster_pb2.Cluster.RANDOM
    err = refusal(lambda: apply_response(cfg, CLUSTER, packed(eds_cluster("new"), bad)))
    assert str(err) == (
        "Cluster 'bad': lb_policy: RANDOM is not supported (use ROUND_ROBIN or LEAST_REQUEST)"
    )
    assert sorted(cfg.clusters) == ["a", "b"]


def test_response_level_refusals() -> None:
    cfg = ProxyConfig()
    wrong_type = refusal(lambda: apply_response(cfg, CLUSTER, packed(rds_listener())))
    assert (wrong_type.type_name, wrong_type.field_path) == ("Cluster", "resources[0]")
    garbage = any_pb2.Any(type_url=CLUSTER, value=b"\xff\xff\xff")
    undecodable = refusal(lambda: apply_response(cfg, CLUSTER, [packed(eds_cluster())[0], garbage]))
    assert undecodable.field_path == "resources[1]"
    assert "cannot decode envoy.config.cluster.v3.Cluster" in undecodable.message
    twice = refusal(
        lambda: apply_response(cfg, CLUSTER, packed(eds_cluster("a"), eds_cluster("a")))
    )
    assert (twice.resource, twice.field_path) == ("a", "name")
    scoped = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
    unknown = refusal(lambda: apply_response(cfg, scoped, []))
    assert (unknown.type_name, unknown.field_path) == ("ScopedRouteConfiguration", "type_url")


def test_what_the_translator_serves_a_plait_proxy_decodes() -> None:
    """The contract, end to end: translate() output is inside the subset."""
    services = [
        Service.model_validate({"metadata": {"name": "web"}}),
        Service.model_validate(
            {"metadata": {"name": "orders"}, "spec": {"loadBalancer": "round_robin"}}
        ),
    ]
    route = ModelRoute.model_validate({
        "metadata": {"name": "orders"},
        "spec": {"service": "orders", "rules": [{
            "match": {"pathPrefix": "/v2", "headers": [{"name": "x-user", "present": False}]},
            "backends": [{"subset": {"version": "v1"}, "weight": 1},
                         {"subset": {"version": "v2"}, "weight": 3}],
            "timeout": "2s",
            "retries": {"attempts": 2, "on": ["5xx", "reset"], "perTryTimeout": "500ms"},
        }]},
    })  # fmt: skip
    from plait.model.config import ConfigSet

    config = ConfigSet(services={s.name: s for s in services}, routes={"orders": route})
    instances = [
        Instance("orders", "n1", "10.0.0.1", 15006, {"version": "v1"}),
        Instance("orders", "n2", "10.0.0.2", 15006, {"version": "v2"}),
        Instance("web", "n1", "10.0.0.1", 15007),
    ]
    node = NodeInfo(
        "n1",
        plait_proxy=True,
        outbound_port=15001,
        inbound=(InboundPort("web", "127.0.0.1", 15007, 9001),),
    )
    snapshot = translate(config, instances, node)
    cfg = ProxyConfig()
    for type_url in PUSH_ORDER:
        resources = snapshot.resources.get(type_url, {})
        cfg = apply_response(cfg, type_url, packed(*resources.values()), version="v")
    assert set(cfg.listeners) == {"outbound", "inbound|web"}
    assert cfg.listeners["inbound|web"].service == "web"
    assert set(cfg.endpoints) == set(eds_names(cfg))
    assert cfg.endpoints["outbound|orders|version=v2"] == (Endpoint("10.0.0.2", 15006),)
    host = cfg.route_tables["outbound"].by_domain["orders"]
    first = host.routes[0]
    assert first.match.headers == (HeaderMatcher("x-user", present=True, invert=True),)
    assert first.total_weight == 4
    assert first.retry == RetryPolicy(2, frozenset({"5xx", "reset"}), 0.5)
    assert cfg.clusters["inbound|web"].endpoints == (Endpoint("127.0.0.1", 9001),)


# --- fuzzing: any input decodes or raises UnsupportedConfig -------------------------------

_FD = descriptor.FieldDescriptor
_INT_RANGES = {
    _FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    _FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _FD.TYPE_UINT32: (0, 2**32 - 1),
    _FD.TYPE_FIXED32: (0, 2**32 - 1),
    _FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    _FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _FD.TYPE_UINT64: (0, 2**64 - 1),
    _FD.TYPE_FIXED64: (0, 2**64 - 1),
}
_WORDS = [
    "", "*", "/", "a", "A.b:80", "inbound|x", "outbound", "5xx,reset", "x,,y", "retriable-4xx",
    "envoy.filters.http.router", "envoy.filters.network.http_connection_manager",
]  # fmt: skip
_TEXT = st.sampled_from(_WORDS) | st.text(st.characters(exclude_categories=("Cs",)), max_size=8)
_ANY_TYPES = [
    hcm_pb2.HttpConnectionManager,
    router_pb2.Router,
    cors_pb2.Cors,
    tcp_proxy_pb2.TcpProxy,
    route_pb2.RouteConfiguration,
]


def _scalar(fd: Any) -> st.SearchStrategy[Any]:
    if fd.type == _FD.TYPE_BOOL:
        return st.booleans()
    if fd.type == _FD.TYPE_STRING:
        return _TEXT
    if fd.type == _FD.TYPE_BYTES:
        return st.binary(max_size=8)
    if fd.type == _FD.TYPE_ENUM:
        return st.sampled_from([v.number for v in fd.enum_type.values]) | st.integers(-2, 99)
    if fd.type in (_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT):
        return st.floats(width=32 if fd.type == _FD.TYPE_FLOAT else 64)
    low, high = _INT_RANGES[fd.type]
    return st.sampled_from([0, 1, 65535, 65536, -1 if low < 0 else high]) | st.integers(low, high)


def _all_messages(msg: Any) -> list[Any]:
    out = [msg]
    for fd, value in msg.ListFields():
        if fd.type != _FD.TYPE_MESSAGE or fd.message_type.GetOptions().map_entry:
            continue
        for item in value if fd.is_repeated else [value]:
            out.extend(_all_messages(item))
    return out


def _mutate_once(msg: Any, data: st.DataObject) -> None:
    target = data.draw(st.sampled_from(_all_messages(msg)))
    fields = [f for f in target.DESCRIPTOR.fields if not _is_map(f)]
    if not fields:
        return
    fd = data.draw(st.sampled_from(fields))
    if data.draw(st.integers(0, 4)) == 0:
        target.ClearField(fd.name)
        return
    try:
        if fd.type == _FD.TYPE_MESSAGE:
            holder = getattr(target, fd.name)
            sub = holder.add() if fd.is_repeated else holder
            sub.SetInParent()
            if fd.message_type.full_name == "google.protobuf.Any":
                kind = data.draw(st.sampled_from(_ANY_TYPES))
                sub.type_url = "type.googleapis.com/" + kind.DESCRIPTOR.full_name
                sub.value = data.draw(st.just(b"") | st.binary(max_size=12))
        elif fd.is_repeated:
            getattr(target, fd.name).append(data.draw(_scalar(fd)))
        else:
            setattr(target, fd.name, data.draw(_scalar(fd)))
    except (ValueError, TypeError, OverflowError):
        pass  # a value the protobuf runtime itself refuses: not an input we can receive


def _is_map(fd: Any) -> bool:
    return fd.type == _FD.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


def _mutated(msg: Any, data: st.DataObject) -> Any:
    for _ in range(data.draw(st.integers(1, 6))):
        _mutate_once(msg, data)
    return msg


def _inbound_listener() -> Any:
    return b.make_http_listener(
        "inbound|a", "127.0.0.1", 1, direction="inbound", route_config=full_route_config("in")
    )


_SEEDS: list[tuple[str, Callable[[], Any]]] = [
    (LISTENER, rds_listener),
    (LISTENER, _inbound_listener),
    (ROUTE, full_route_config),
    (CLUSTER, eds_cluster),
    (CLUSTER, lambda: b.make_static_cluster("s", [("127.0.0.1", 1)], connect_timeout=1)),
    (ENDPOINT, lambda: cla("c", ("10.0.0.1", 1), ("10.0.0.2", 2))),
]


def _check_invariant(type_url: str, resources: list[Any]) -> None:
    try:
        cfg = apply_response(ProxyConfig(), type_url, resources, version="v")
    except UnsupportedConfig as err:
        assert str(err).count(": ") >= 2  # "<Type> '<name>': <field path>: <what>"
    else:
        assert isinstance(cfg, ProxyConfig)


def _mutated_seed(type_url: str, make: Callable[[], Any], data: st.DataObject) -> Any:
    """A seed message with drawn field mutations (for a Listener, sometimes inside its
    packed HttpConnectionManager first)."""
    msg = make()
    if type_url == LISTENER and data.draw(st.booleans()):  # reach inside the packed HCM
        manager = _mutated(hcm_of(msg), data)
        msg.filter_chains[0].filters[0].typed_config.CopyFrom(b.pack(manager))
    return _mutated(msg, data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(_SEEDS), data=st.data())
def test_field_mutations_decode_or_are_refused(
    seed: tuple[str, Callable[[], Any]], data: st.DataObject
) -> None:
    type_url, make = seed
    _check_invariant(type_url, [b.pack(_mutated_seed(type_url, make, data))])


@settings(max_examples=300, deadline=None)
@given(seed=st.sampled_from(_SEEDS), data=st.data())
def test_byte_mutations_decode_or_are_refused(
    seed: tuple[str, Callable[[], Any]], data: st.DataObject
) -> None:
    type_url, make = seed
    raw = bytearray(make().SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw)))
        edit = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if edit == "insert" or at == len(raw):
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif edit == "delete":
            del raw[at : at + data.draw(st.integers(1, 4))]
        else:
            raw[at] ^= data.draw(st.integers(1, 255))
    _check_invariant(type_url, [any_pb2.Any(type_url=type_url, value=bytes(raw))])


# --- the proxy's private schema decodes like the generated protos --------------------------
# The proxy parses what it receives with plait.proxy.xds_schema's classes (a private pool,
# stripped of options); the decoders must do with those exactly what they do with the real
# generated classes: same values, same refusals (test_xds_schema.py checks the fields).

_TD = "plait.local"
_PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _mtls_inbound_listener() -> Any:
    tls = b.make_downstream_tls(f"spiffe://{_TD}/svc/a", "trust-bundle", f"spiffe://{_TD}/")
    rbac = [
        b.make_rbac_filter("deny", "DENY", [f"spiffe://{_TD}/svc/x"]),
        b.make_rbac_filter("audit", "ALLOW", shadow=True),
    ]
    return b.make_http_listener(
        "inbound|a",
        "127.0.0.1",
        15006,
        direction="inbound",
        route_config=full_route_config("in"),
        http_filters=rbac,
        tls_mode="strict",
        downstream_tls=tls,
    )


def _mtls_cluster() -> Any:
    tls = b.make_upstream_tls("default", "trust-bundle", f"spiffe://{_TD}/svc/orders")
    return b.make_eds_cluster("outbound|orders", connect_timeout=1, transport_socket=tls)


_SCHEMA_SEEDS: list[tuple[str, Callable[[], Any]]] = [
    *_SEEDS,
    (LISTENER, _mtls_inbound_listener),
    (CLUSTER, _mtls_cluster),
    (SECRET, lambda: b.make_trust_bundle_secret("trust-bundle", _PEM)),
]
_SCHEMA_DECODERS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    LISTENER: (decode_listener, xds_schema.listener_pb2.Listener),
    ROUTE: (decode_route_configuration, xds_schema.route_pb2.RouteConfiguration),
    CLUSTER: (decode_cluster, xds_schema.cluster_pb2.Cluster),
    ENDPOINT: (decode_load_assignment, xds_schema.endpoint_pb2.ClusterLoadAssignment),
    SECRET: (decode_secret, xds_schema.secret_pb2.Secret),
}


def _outcome(decode: Callable[[Any], Any], msg: Any) -> tuple[str, Any]:
    try:
        return "decoded", decode(msg)
    except UnsupportedConfig as err:
        return "refused", str(err)


def _decode_alike(type_url: str, real: Any, raw: bytes | None = None) -> None:
    """``real`` (a generated message) and the schema message parsed from its bytes (or
    from ``raw``, which ``real`` was parsed from) decode to the same value or refusal."""
    decode, schema_class = _SCHEMA_DECODERS[type_url]
    data = real.SerializeToString() if raw is None else raw
    mine = schema_class.FromString(data)
    assert mine.SerializeToString() == real.SerializeToString()  # unknown fields too
    assert _outcome(decode, mine) == _outcome(decode, real)
    # the whole path the xDS client takes: a response of schema Anys
    packed = xds_schema.message_class("google.protobuf.Any")(type_url=type_url, value=data)
    real_packed = any_pb2.Any(type_url=type_url, value=data)
    assert _outcome(lambda r: decode_resources(type_url, [r]), packed) == _outcome(
        lambda r: decode_resources(type_url, [r]), real_packed
    )


def test_schema_and_generated_seeds_decode_alike() -> None:
    for type_url, make in _SCHEMA_SEEDS:
        kind, value = _outcome(_SCHEMA_DECODERS[type_url][0], make())
        assert kind == "decoded", value
        _decode_alike(type_url, make())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(_SCHEMA_SEEDS), data=st.data())
def test_schema_and_generated_messages_decode_alike_after_field_mutations(
    seed: tuple[str, Callable[[], Any]], data: st.DataObject
) -> None:
    type_url, make = seed
    _decode_alike(type_url, _mutated_seed(type_url, make, data))


@settings(max_examples=300, deadline=None)
@given(seed=st.sampled_from(_SCHEMA_SEEDS), data=st.data())
def test_schema_and_generated_messages_decode_alike_after_byte_mutations(
    seed: tuple[str, Callable[[], Any]], data: st.DataObject
) -> None:
    type_url, make = seed
    raw = bytearray(make().SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw)))
        if data.draw(st.booleans()) or at == len(raw):  # extra (often unknown) fields
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            raw[at] ^= data.draw(st.integers(1, 255))
    real_class = type(make())
    try:
        real = real_class.FromString(bytes(raw))
    except DecodeError:
        with pytest.raises(DecodeError):
            _SCHEMA_DECODERS[type_url][1].FromString(bytes(raw))
        return
    _decode_alike(type_url, real, bytes(raw))


def test_an_unknown_field_is_refused_alike_by_schema_and_generated_messages() -> None:
    raw = eds_cluster().SerializeToString() + b"\xb8\x3e\x07"  # field 999 = 7
    real = cluster_pb2.Cluster.FromString(raw)
    _decode_alike(CLUSTER, real, raw)
    assert _outcome(decode_cluster, real) == (
        "refused",
        "Cluster 'outbound|orders': #999: field number 999 is unknown to plait",
    )
