"""translate(): how Route rules become routes, and registry instances become endpoints."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2
from google.protobuf import text_format
from xds_fixtures import (
    config,
    endpoints_of,
    grpc_client_node,
    parse_route,
    proxy_node,
    route,
    service,
    shop_config,
    shop_instances,
    vhost,
)

from plait.xds.inputs import InboundPort, Instance, NodeInfo
from plait.xds.translate import translate
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE

# --- route rules -> routes ----------------------------------------------------------------


def orders_routes(*rules: dict[str, Any]) -> list[Any]:
    cfg = config(service("orders"), route("orders", *rules))
    snapshot = translate(cfg, shop_instances(), proxy_node())
    assert snapshot.consistency_errors() == []
    routes = list(vhost(snapshot, "orders").routes)
    assert routes[-1] == parse_route(
        'match { prefix: "/" } route { cluster: "outbound|orders" timeout { seconds: 15 } }'
    )
    return routes[:-1]


def test_path_prefix_and_header_matches() -> None:
    routes = orders_routes(
        {"match": {"path": "/orders.Orders/Get"}},
        {
            "match": {
                "pathPrefix": "/api/",
                "headers": [
                    {"name": "x-canary", "exact": "1"},
                    {"name": "user-agent", "prefix": "curl/", "invert": True},
                    {"name": "x-debug", "present": True},
                    {"name": "x-internal", "present": False},
                    {"name": "x-trace", "present": False, "invert": True},
                ],
            }
        },
    )
    assert [r.match for r in routes] == [
        text_format.Parse('path: "/orders.Orders/Get"', route_components_pb2.RouteMatch()),
        text_format.Parse(
            """
            prefix: "/api/"
            headers { name: "x-canary" string_match { exact: "1" } }
            headers { name: "user-agent" string_match { prefix: "curl/" } invert_match: true }
            headers { name: "x-debug" present_match: true }
            headers { name: "x-internal" present_match: true invert_match: true }
            headers { name: "x-trace" present_match: true }
            """,
            route_components_pb2.RouteMatch(),
        ),
    ]


def test_timeout_and_retries_map_to_envoy_names() -> None:
    (route_,) = orders_routes(
        {
            "timeout": "2.5s",
            "retries": {
                "attempts": 3,
                "on": ["connect-failure", "reset", "5xx", "gateway-error", "retriable-4xx"],
                "perTryTimeout": "500ms",
            },
        }
    )
    assert route_.route == text_format.Parse(
        """
        cluster: "outbound|orders"
        timeout { seconds: 2 nanos: 500000000 }
        retry_policy {
          retry_on: "connect-failure,reset,5xx,gateway-error,retriable-4xx"
          num_retries { value: 3 }
          per_try_timeout { nanos: 500000000 }
        }
        """,
        route_components_pb2.RouteAction(),
    )


@pytest.mark.parametrize(
    ("retries", "expected"),
    [
        ({}, 'retry_on: "connect-failure,reset" num_retries { value: 1 }'),
        ({"attempts": 2, "on": ["5xx", "5xx"]}, 'retry_on: "5xx" num_retries { value: 2 }'),
        ({"attempts": 0}, None),
        ({"attempts": 4, "on": []}, None),
    ],
)
def test_retry_policy_defaults_and_no_retries(
    retries: dict[str, Any], expected: str | None
) -> None:
    (route_,) = orders_routes({"retries": retries})
    if expected is None:
        assert not route_.route.HasField("retry_policy")
    else:
        assert route_.route.retry_policy == text_format.Parse(
            expected, route_components_pb2.RetryPolicy()
        )


def test_rule_without_retries_has_no_retry_policy() -> None:
    (route_,) = orders_routes({"timeout": "3s"})
    assert not route_.route.HasField("retry_policy")
    assert route_.route.timeout.seconds == 3


@pytest.mark.parametrize(
    ("backends", "expected"),
    [
        ([{}], "cluster: 'outbound|orders'"),
        ([{"weight": 5}], "cluster: 'outbound|orders'"),
        ([{}, {"subset": {"version": "v2"}, "weight": 0}], "cluster: 'outbound|orders'"),
        (
            [{"subset": {"version": "v2"}}],
            "weighted_clusters { clusters { name: 'outbound|orders|version=v2' weight {value: 1}}}",
        ),
        (
            [{"weight": 3}, {"subset": {"version": "v2", "zone": "a"}, "weight": 1}],
            """weighted_clusters {
                 clusters { name: 'outbound|orders' weight { value: 3 } }
                 clusters { name: 'outbound|orders|version=v2,zone=a' weight { value: 1 } }
               }""",
        ),
        (
            [
                {"subset": {"version": "v1"}, "weight": 2},
                {"subset": {"version": "v2"}, "weight": 1},
                {"subset": {"version": "v1"}, "weight": 3},
            ],
            """weighted_clusters {
                 clusters { name: 'outbound|orders|version=v1' weight { value: 5 } }
                 clusters { name: 'outbound|orders|version=v2' weight { value: 1 } }
               }""",
        ),
    ],
    ids=["whole", "whole-weighted", "zero-dropped", "one-subset", "mixed", "same-subset-adds"],
)
def test_backends_to_cluster_or_weighted_clusters(
    backends: list[dict[str, Any]], expected: str
) -> None:
    (route_,) = orders_routes({"backends": backends, "timeout": "1s"})
    assert route_.route == text_format.Parse(
        expected + " timeout { seconds: 1 }", route_components_pb2.RouteAction()
    )


def test_zero_weight_subset_still_gets_a_warm_cluster() -> None:
    rule = {"backends": [{"subset": {"version": "v1"}}, {"subset": {"version": "v2"}, "weight": 0}]}
    cfg = config(service("orders"), route("orders", rule))
    snapshot = translate(cfg, shop_instances(), proxy_node())
    assert "outbound|orders|version=v2" in snapshot.names(CLUSTER)
    assert endpoints_of(snapshot, "outbound|orders|version=v2") == [("10.0.0.4", 15006)]


# --- instances -> endpoints -----------------------------------------------------------------


def test_unhealthy_instances_are_left_out() -> None:
    instances = [*shop_instances(), Instance("orders", "node-e", "10.0.0.5", 15006, healthy=False)]
    instances[1] = Instance("orders", "node-b", "10.0.0.2", 15006, {"version": "v1"}, False)
    snapshot = translate(shop_config(), instances, proxy_node())
    assert endpoints_of(snapshot, "outbound|orders") == [("10.0.0.3", 15006), ("10.0.0.4", 15006)]
    assert endpoints_of(snapshot, "outbound|orders|version=v1") == [("10.0.0.3", 15006)]


def test_no_healthy_instance_keeps_one_empty_locality() -> None:
    snapshot = translate(shop_config(), [], proxy_node())
    assignment = snapshot.items(ENDPOINT)["outbound|orders"]
    (locality,) = assignment.endpoints
    assert list(locality.lb_endpoints) == []
    assert locality.load_balancing_weight.value == 1


def test_duplicate_addresses_and_unknown_services_are_dropped() -> None:
    instances = [
        Instance("orders", "node-z", "10.0.0.9", 1, {"version": "v2"}),
        Instance("orders", "node-y", "10.0.0.9", 1, {"version": "v1"}),
        Instance("payments", "node-y", "10.0.0.8", 1),
    ]
    snapshot = translate(shop_config(), instances, proxy_node())
    # one address once per assignment (gRPC refuses duplicates), in every subset it serves
    assert endpoints_of(snapshot, "outbound|orders") == [("10.0.0.9", 1)]
    assert endpoints_of(snapshot, "outbound|orders|version=v1") == [("10.0.0.9", 1)]
    assert endpoints_of(snapshot, "outbound|orders|version=v2") == [("10.0.0.9", 1)]
    assert "outbound|payments" not in snapshot.names(CLUSTER)


def test_tcp_service_gets_cluster_and_endpoints_but_no_routes_on_a_proxy() -> None:
    cfg = config(service("db", protocol="tcp", ports=[{"name": "pg", "port": 5432}]))
    instances = [Instance("db", "node-b", "10.0.0.2", 15008)]
    snapshot = translate(cfg, instances, proxy_node())
    assert snapshot.consistency_errors() == []
    assert snapshot.names(CLUSTER) == ["inbound|frontend", "outbound|db"]
    assert endpoints_of(snapshot, "outbound|db") == [("10.0.0.2", 15008)]
    assert list(snapshot.items(ROUTE)["outbound"].virtual_hosts) == []
    client = translate(cfg, instances, grpc_client_node())
    assert all(client.names(t) == [] for t in (LISTENER, ROUTE, CLUSTER, ENDPOINT))


def test_proxy_with_no_inbound_and_the_same_service_twice() -> None:
    bare = translate(shop_config(), shop_instances(), NodeInfo("n", plait_proxy=True))
    assert bare.names(LISTENER) == ["outbound"]
    assert bare.consistency_errors() == []
    twice = NodeInfo(
        "n",
        plait_proxy=True,
        inbound=(InboundPort("orders", "10.0.0.2", 1, 2), InboundPort("orders", "10.0.0.2", 3, 4)),
    )
    snapshot = translate(shop_config(), shop_instances(), twice)
    listener = snapshot.items(LISTENER)["inbound|orders"]
    assert listener.address.socket_address.port_value == 1
