"""translate(): exact resource shapes for a small shop mesh, per kind of node."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import text_format
from xds_fixtures import (
    ALLOWED,
    CANARY_RULE,
    config,
    endpoints_of,
    grpc_client_node,
    hcm_of,
    parse_route,
    proxy_node,
    proxy_snapshot,
    route,
    service,
    set_field_paths,
    shop_config,
    shop_instances,
    vhost,
)

from plait.model.config import ConfigSet
from plait.xds.inputs import InboundPort, Instance, NodeInfo
from plait.xds.snapshot import Snapshot
from plait.xds.translate import Translator, translate
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

# --- plait proxy: names and shapes ------------------------------------------------------


def test_proxy_node_gets_exactly_the_contract_names() -> None:
    snapshot = proxy_snapshot()
    assert snapshot.names(LISTENER) == ["inbound|frontend", "outbound"]
    assert snapshot.names(ROUTE) == ["outbound"]
    assert snapshot.names(CLUSTER) == [
        "inbound|frontend",
        "outbound|frontend",
        "outbound|inventory",
        "outbound|orders",
        "outbound|orders|version=v1",
        "outbound|orders|version=v2",
    ]
    assert snapshot.names(ENDPOINT) == [n for n in snapshot.names(CLUSTER) if n.startswith("out")]


def test_outbound_listener_uses_rds_outbound_over_ads() -> None:
    listener = proxy_snapshot().items(LISTENER)["outbound"]
    expected = listener_pb2.Listener()
    text_format.Parse(
        """
        name: "outbound"
        address { socket_address { address: "127.0.0.1" port_value: 15001 } }
        traffic_direction: OUTBOUND
        """,
        expected,
    )
    listener_without_chains = listener_pb2.Listener()
    listener_without_chains.CopyFrom(listener)
    del listener_without_chains.filter_chains[:]
    assert listener_without_chains == expected
    assert len(listener.filter_chains) == 1
    (hcm_filter,) = listener.filter_chains[0].filters
    assert hcm_filter.name == "envoy.filters.network.http_connection_manager"
    manager = hcm_of(listener)
    assert manager.stat_prefix == "outbound"
    assert manager.rds.route_config_name == "outbound"
    assert manager.rds.config_source.HasField("ads")
    (router,) = manager.http_filters
    assert router.name == "envoy.filters.http.router"
    assert router.typed_config.type_url.endswith("envoy.extensions.filters.http.router.v3.Router")


def test_inbound_listener_routes_inline_to_the_static_app_cluster() -> None:
    snapshot = proxy_snapshot()
    listener = snapshot.items(LISTENER)["inbound|frontend"]
    assert listener.traffic_direction == base_pb2.INBOUND
    assert listener.address.socket_address.address == "10.0.0.1"
    assert listener.address.socket_address.port_value == 15006
    manager = hcm_of(listener)
    assert not manager.HasField("rds")
    expected = text_format.Parse(
        """
        name: "inbound|frontend"
        virtual_hosts {
          name: "inbound|frontend" domains: "*"
          routes { match { prefix: "/" } route { cluster: "inbound|frontend" timeout {} } }
        }
        """,
        route_pb2.RouteConfiguration(),
    )
    assert manager.route_config == expected

    cluster = snapshot.items(CLUSTER)["inbound|frontend"]
    assert cluster.type == cluster_pb2.Cluster.STATIC
    assert cluster.connect_timeout.ToTimedelta().total_seconds() == 1.0
    assert cluster.load_assignment.cluster_name == "inbound|frontend"
    (lb_endpoint,) = cluster.load_assignment.endpoints[0].lb_endpoints
    assert lb_endpoint.endpoint.address.socket_address.address == "127.0.0.1"
    assert lb_endpoint.endpoint.address.socket_address.port_value == 9000


def test_eds_clusters_take_lb_policy_and_connect_timeout_from_the_service() -> None:
    clusters = proxy_snapshot().items(CLUSTER)
    for name in ("outbound|orders", "outbound|orders|version=v1", "outbound|frontend"):
        cluster = clusters[name]
        assert cluster.type == cluster_pb2.Cluster.EDS
        assert cluster.eds_cluster_config.eds_config.HasField("ads")
        assert cluster.eds_cluster_config.service_name == ""
        assert cluster.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
        assert cluster.connect_timeout.ToMilliseconds() == 1000
    inventory = clusters["outbound|inventory"]
    assert inventory.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
    assert inventory.connect_timeout.ToMilliseconds() == 250


def test_load_assignments_hold_the_subset_members_in_one_weighted_locality() -> None:
    snapshot = proxy_snapshot()
    orders = snapshot.items(ENDPOINT)["outbound|orders"]
    assert orders.cluster_name == "outbound|orders"
    (locality,) = orders.endpoints
    assert locality.HasField("locality")
    assert locality.locality == base_pb2.Locality()
    assert locality.load_balancing_weight.value == 1
    assert {e.health_status for e in locality.lb_endpoints} == {health_check_pb2.HEALTHY}
    assert endpoints_of(snapshot, "outbound|orders") == [
        ("10.0.0.2", 15006),
        ("10.0.0.3", 15006),
        ("10.0.0.4", 15006),
    ]
    # labels *include* the subset: zone=b on 10.0.0.3 does not keep it out of version=v1
    assert endpoints_of(snapshot, "outbound|orders|version=v1") == [
        ("10.0.0.2", 15006),
        ("10.0.0.3", 15006),
    ]
    assert endpoints_of(snapshot, "outbound|orders|version=v2") == [("10.0.0.4", 15006)]
    assert endpoints_of(snapshot, "outbound|inventory") == [("10.0.0.2", 15007)]


def test_outbound_routes_one_virtual_host_per_http_or_grpc_service() -> None:
    routes = proxy_snapshot().items(ROUTE)["outbound"]
    assert [(v.name, list(v.domains)) for v in routes.virtual_hosts] == [
        ("frontend", ["frontend", "frontend:80"]),
        ("inventory", ["inventory", "inventory:80", "inventory:8081"]),
        ("orders", ["orders", "orders:50051"]),
    ]


def test_canary_route_splits_90_10_then_falls_back_to_the_whole_service() -> None:
    orders = vhost(proxy_snapshot(), "orders")
    assert list(orders.routes) == [
        parse_route(
            """
            match { prefix: "/" }
            route {
              weighted_clusters {
                clusters { name: "outbound|orders|version=v1" weight { value: 90 } }
                clusters { name: "outbound|orders|version=v2" weight { value: 10 } }
              }
              timeout { seconds: 15 }
            }
            """
        ),
        parse_route(
            'match { prefix: "/" } route { cluster: "outbound|orders" timeout { seconds: 15 } }'
        ),
    ]


def test_service_without_route_gets_only_the_catch_all() -> None:
    frontend = vhost(proxy_snapshot(), "frontend")
    assert list(frontend.routes) == [
        parse_route(
            'match { prefix: "/" } route { cluster: "outbound|frontend" timeout { seconds: 15 } }'
        )
    ]


def test_proxy_snapshot_sets_only_fields_of_the_supported_subset() -> None:
    rule = {
        "match": {
            "path": "/x",
            "headers": [{"name": "a", "prefix": "b"}, {"name": "c", "present": False}],
        },
        "backends": [{"subset": {"version": "v2"}}],
        "timeout": "1.5s",
        "retries": {"attempts": 2, "on": ["5xx"], "perTryTimeout": "100ms"},
    }
    cfg = config(service("orders"), route("orders", rule, {"match": {"pathPrefix": "/y"}}))
    snapshot = translate(cfg, shop_instances(), proxy_node())
    for type_url in (LISTENER, ROUTE, CLUSTER, ENDPOINT):
        for name, message in snapshot.items(type_url).items():
            unsupported = set(set_field_paths(message)) - ALLOWED[type_url]
            assert not unsupported, f"{name}: {sorted(unsupported)}"


# --- proxyless gRPC clients and Envoy -----------------------------------------------------


def test_grpc_client_gets_api_listeners_and_per_service_route_configs() -> None:
    snapshot = translate(shop_config(), shop_instances(), grpc_client_node())
    assert snapshot.consistency_errors() == []
    assert snapshot.names(LISTENER) == [
        "frontend",
        "frontend:80",
        "inventory",
        "inventory:80",
        "inventory:8081",
        "orders",
        "orders:50051",
    ]
    assert snapshot.names(ROUTE) == ["grpc|frontend", "grpc|inventory", "grpc|orders"]
    assert snapshot.names(CLUSTER) == [
        "outbound|frontend",
        "outbound|inventory",
        "outbound|orders",
        "outbound|orders|version=v1",
        "outbound|orders|version=v2",
    ]
    assert snapshot.names(ENDPOINT) == snapshot.names(CLUSTER)
    for cluster in snapshot.items(CLUSTER).values():
        assert cluster.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN

    listener = snapshot.items(LISTENER)["orders:50051"]
    assert not listener.HasField("address")
    assert list(listener.filter_chains) == []
    manager = hcm_of(listener)
    assert manager.rds.route_config_name == "grpc|orders"
    assert manager.rds.config_source.HasField("ads")
    assert [f.name for f in manager.http_filters] == ["envoy.filters.http.router"]

    (orders,) = snapshot.items(ROUTE)["grpc|orders"].virtual_hosts
    assert orders.name == "orders"
    assert list(orders.domains) == ["*"]
    assert list(orders.routes) == list(vhost(proxy_snapshot(), "orders").routes)


def test_grpc_client_snapshot_does_not_depend_on_the_node() -> None:
    translator = Translator(shop_config(), shop_instances())
    first = translator.for_node(grpc_client_node())
    other = translator.for_node(
        NodeInfo("envoy-1", inbound=(InboundPort("orders", "10.0.0.2", 1, 2),))
    )
    assert other is first
    assert other.versions() == translate(shop_config(), shop_instances(), NodeInfo("x")).versions()


def test_proxy_and_client_share_load_assignments() -> None:
    translator = Translator(shop_config(), shop_instances())
    proxy = translator.for_node(proxy_node())
    client = translator.for_node(grpc_client_node())
    assert proxy.version(ENDPOINT) == client.version(ENDPOINT)
    assert proxy.version(CLUSTER) != client.version(CLUSTER)


# --- versions -------------------------------------------------------------------------------


def test_versions_are_stable_for_the_same_input() -> None:
    first = proxy_snapshot().versions()
    assert first == proxy_snapshot().versions()
    reordered = list(reversed(shop_instances()))
    assert translate(shop_config(), reordered, proxy_node()).versions() == first
    assert Translator(shop_config(), shop_instances()).for_node(proxy_node()).versions() == first


def test_changing_one_endpoint_changes_only_the_eds_version() -> None:
    before = proxy_snapshot()
    instances = shop_instances()
    instances[3] = Instance("orders", "node-d", "10.0.0.44", 15006, {"version": "v2"})
    after = translate(shop_config(), instances, proxy_node())
    changed = {t for t in before.versions() if before.version(t) != after.version(t)}
    assert changed == {ENDPOINT}
    changed_names = {
        n for n in before.names(ENDPOINT) if before.items(ENDPOINT)[n] != after.items(ENDPOINT)[n]
    }
    assert changed_names == {"outbound|orders", "outbound|orders|version=v2"}


def test_changing_the_node_changes_only_its_own_types() -> None:
    before = proxy_snapshot()
    node = proxy_node()
    moved = NodeInfo(node.node_id, True, node.outbound_address, 15002, node.inbound)
    after = translate(shop_config(), shop_instances(), moved)
    assert {t for t in before.versions() if before.version(t) != after.version(t)} == {LISTENER}


def test_changing_a_route_weight_changes_only_rds() -> None:
    before = proxy_snapshot()
    cfg = shop_config()
    shifted = {"backends": [{**b, "weight": 50} for b in CANARY_RULE["backends"]]}
    cfg.routes["orders"] = route("orders", shifted)
    after = translate(cfg, shop_instances(), proxy_node())
    assert {t for t in before.versions() if before.version(t) != after.version(t)} == {ROUTE}


# --- scoping: a proxy gets only what its local services call ----------------------------


def scoped_config(**calls: list[str] | None) -> ConfigSet:
    """The shop mesh, with ``spec.calls`` set on the named services."""
    cfg = shop_config()
    services = dict(cfg.services)
    for name, called in calls.items():
        spec = services[name].spec.model_copy(
            update={"calls": None if called is None else tuple(called)}
        )
        services[name] = services[name].model_copy(update={"spec": spec})
    return ConfigSet(services=services, routes=cfg.routes, policies=cfg.policies)


def node_fronting(*services: str, node_id: str = "node-x") -> NodeInfo:
    return NodeInfo(
        node_id=node_id,
        plait_proxy=True,
        outbound_port=15001,
        inbound=tuple(
            InboundPort(s, "10.0.0.9", 15006 + i, app_port=9000 + i, outbound_port=16000 + i)
            for i, s in enumerate(services)
        ),
    )


def outbound_clusters(snapshot: Snapshot) -> list[str]:
    return [n for n in snapshot.names(CLUSTER) if n.startswith("outbound|")]


def test_a_proxy_for_orders_calling_inventory_gets_exactly_inventory() -> None:
    cfg = scoped_config(orders=["inventory"])
    snapshot = translate(cfg, shop_instances(), node_fronting("orders"))
    assert snapshot.consistency_errors() == []
    assert outbound_clusters(snapshot) == ["outbound|inventory"]
    assert snapshot.names(ENDPOINT) == ["outbound|inventory"]
    assert [v.name for v in snapshot.items(ROUTE)["outbound"].virtual_hosts] == ["inventory"]
    assert endpoints_of(snapshot, "outbound|inventory") == [("10.0.0.2", 15007)]
    # its own side is untouched: inbound listener and STATIC cluster, both outbound listeners
    assert snapshot.names(LISTENER) == ["inbound|orders", "outbound", "outbound|orders"]
    assert "inbound|orders" in snapshot.names(CLUSTER)


def test_a_proxy_whose_service_declares_no_calls_gets_every_service() -> None:
    cfg = scoped_config(frontend=["orders"])  # orders itself declares nothing
    snapshot = translate(cfg, shop_instances(), node_fronting("orders"))
    unscoped = translate(shop_config(), shop_instances(), node_fronting("orders"))
    assert snapshot.versions() == unscoped.versions()
    assert len(outbound_clusters(snapshot)) == 5  # 3 services and the orders v1/v2 subsets
    assert {v.name for v in snapshot.items(ROUTE)["outbound"].virtual_hosts} == {
        "frontend",
        "inventory",
        "orders",
    }


def test_a_proxy_fronting_no_service_gets_every_service() -> None:
    cfg = scoped_config(frontend=[], orders=[], inventory=[])
    bare = NodeInfo("node-y", plait_proxy=True, outbound_port=15001)
    snapshot = translate(cfg, shop_instances(), bare)
    assert snapshot.versions() == translate(shop_config(), shop_instances(), bare).versions()


def test_calls_nothing_gets_no_outbound_clusters_and_an_empty_route_table() -> None:
    cfg = scoped_config(inventory=[])
    snapshot = translate(cfg, shop_instances(), node_fronting("inventory"))
    assert snapshot.consistency_errors() == []
    assert outbound_clusters(snapshot) == []
    assert snapshot.names(ENDPOINT) == []
    assert list(snapshot.items(ROUTE)["outbound"].virtual_hosts) == []


def test_two_local_services_get_the_union_of_their_calls() -> None:
    cfg = scoped_config(frontend=["orders"], inventory=["inventory"])
    snapshot = translate(cfg, shop_instances(), node_fronting("frontend", "inventory"))
    assert snapshot.consistency_errors() == []
    assert outbound_clusters(snapshot) == [
        "outbound|inventory",
        "outbound|orders",
        "outbound|orders|version=v1",
        "outbound|orders|version=v2",
    ]
    assert snapshot.names(ENDPOINT) == outbound_clusters(snapshot)
    vhosts = [v.name for v in snapshot.items(ROUTE)["outbound"].virtual_hosts]
    assert vhosts == ["inventory", "orders"]
    # one local service without calls widens the proxy to everything
    everything = translate(
        scoped_config(frontend=["orders"]), shop_instances(), node_fronting("frontend", "orders")
    )
    assert len(everything.items(ROUTE)["outbound"].virtual_hosts) == 3


def test_scoped_resources_are_the_unscoped_ones() -> None:
    cfg = scoped_config(frontend=["orders"])
    node = node_fronting("frontend")
    scoped = translate(cfg, shop_instances(), node, trust_bundle=b"bundle")
    full = translate(shop_config(), shop_instances(), node, trust_bundle=b"bundle")
    for type_url in (CLUSTER, ENDPOINT):
        for name, message in scoped.items(type_url).items():
            assert message == full.items(type_url)[name]
    assert scoped.items(LISTENER) == full.items(LISTENER)
    assert scoped.version(SECRET) == full.version(SECRET) and scoped.names(SECRET)
    assert [v for v in scoped.items(ROUTE)["outbound"].virtual_hosts] == [
        v for v in full.items(ROUTE)["outbound"].virtual_hosts if v.name == "orders"
    ]


def test_proxies_with_the_same_scope_share_their_resources_and_subset_memo() -> None:
    cfg = scoped_config(frontend=["orders"], inventory=["orders"])
    translator = Translator(cfg, shop_instances())
    a = translator.for_node(node_fronting("frontend", node_id="a"))
    b = translator.for_node(node_fronting("inventory", node_id="b"))
    assert a.items(ENDPOINT) is b.items(ENDPOINT)
    assert a.items(ROUTE)["outbound"] is b.items(ROUTE)["outbound"]
    names = a.names(ENDPOINT)
    assert a.subset_version(ENDPOINT, names) is b.subset_version(ENDPOINT, names)
    other = translator.for_node(node_fronting("orders", node_id="c"))  # calls everything
    assert other.items(ENDPOINT) is not a.items(ENDPOINT)
    assert translator.dependencies(node_fronting("frontend")) == frozenset({"orders"})
    assert translator.dependencies(node_fronting("orders")) is None


def test_an_endpoint_change_leaves_proxies_that_do_not_call_the_service_unchanged() -> None:
    cfg = scoped_config(frontend=["orders"], orders=["inventory"])
    instances = shop_instances()
    moved = [*instances[:4], Instance("inventory", "node-b", "10.0.0.2", 15008)]
    cases = ((node_fronting("frontend"), set()), (node_fronting("orders"), {ENDPOINT}))
    for node, changed in cases:
        before = translate(cfg, instances, node)
        after = translate(cfg, moved, node)
        assert {t for t in before.versions() if before.version(t) != after.version(t)} == changed


def test_calls_naming_a_service_the_config_lacks_are_ignored() -> None:
    cfg = scoped_config(frontend=["orders", "ghost"])  # a ConfigSet made without checks
    snapshot = translate(cfg, shop_instances(), node_fronting("frontend"))
    assert snapshot.consistency_errors() == []
    assert [v.name for v in snapshot.items(ROUTE)["outbound"].virtual_hosts] == ["orders"]
