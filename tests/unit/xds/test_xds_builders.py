"""Builders: one message each, in the shapes docs/xds.md fixes."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_components_pb2
from google.protobuf import text_format
from xds_fixtures import hcm_of

from plait.xds import builders as b


def test_duration_from_float_seconds() -> None:
    assert b.make_duration(0.25).nanos == 250_000_000
    assert (b.make_duration(90).seconds, b.make_duration(90).nanos) == (90, 0)
    assert b.make_duration(1.000000001).nanos == 1


def test_load_assignment_shape() -> None:
    expected = text_format.Parse(
        """
        cluster_name: "c"
        endpoints {
          locality {}
          load_balancing_weight { value: 1 }
          lb_endpoints {
            endpoint { address { socket_address { address: "10.0.0.1" port_value: 80 } } }
            health_status: HEALTHY
          }
        }
        """,
        endpoint_pb2.ClusterLoadAssignment(),
    )
    assert b.make_load_assignment("c", [("10.0.0.1", 80)]) == expected


def test_eds_cluster_shape_and_policies() -> None:
    cluster = b.make_eds_cluster("c", connect_timeout=0.5, lb_policy="least_request")
    assert cluster == text_format.Parse(
        """
        name: "c" type: EDS
        eds_cluster_config { eds_config { ads {} } }
        connect_timeout { nanos: 500000000 }
        lb_policy: LEAST_REQUEST
        """,
        cluster_pb2.Cluster(),
    )
    assert not cluster.HasField("least_request_lb_config")
    assert b.make_eds_cluster("c", connect_timeout=1).lb_policy == cluster_pb2.Cluster.ROUND_ROBIN


def test_static_cluster_carries_its_load_assignment() -> None:
    cluster = b.make_static_cluster("app", [("127.0.0.1", 9000)], connect_timeout=1)
    assert cluster.type == cluster_pb2.Cluster.STATIC
    assert cluster.load_assignment == b.make_load_assignment("app", [("127.0.0.1", 9000)])


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"exact": "v"}, 'name: "h" string_match { exact: "v" }'),
        (
            {"prefix": "v", "invert": True},
            'name: "h" string_match { prefix: "v" } invert_match: true',
        ),
        ({"exact": ""}, 'name: "h" string_match { exact: "" }'),
        ({"present": True}, 'name: "h" present_match: true'),
        ({"present": True, "invert": True}, 'name: "h" present_match: true invert_match: true'),
        ({"present": False}, 'name: "h" present_match: true invert_match: true'),
        ({"present": False, "invert": True}, 'name: "h" present_match: true'),
    ],
)
def test_header_matchers(kwargs: dict[str, object], expected: str) -> None:
    matcher = b.make_header_matcher("h", **kwargs)  # type: ignore[arg-type]
    assert matcher == text_format.Parse(expected, route_components_pb2.HeaderMatcher())


def test_exact_empty_string_is_still_set() -> None:
    assert b.make_header_matcher("h", exact="").string_match.HasField("exact")


@pytest.mark.parametrize(
    "kwargs", [{}, {"exact": "a", "prefix": "b"}, {"prefix": "a", "present": True}]
)
def test_header_matcher_needs_exactly_one_kind(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        b.make_header_matcher("h", **kwargs)  # type: ignore[arg-type]


def test_route_match_defaults_to_everything() -> None:
    assert b.make_route_match() == route_components_pb2.RouteMatch(prefix="/")
    assert b.make_route_match(path="/a").path == "/a"


def test_route_needs_exactly_one_destination() -> None:
    match = b.make_route_match()
    with pytest.raises(ValueError):
        b.make_route(match)
    with pytest.raises(ValueError):
        b.make_route(match, cluster="a", weighted_clusters=[("b", 1)])


def test_connection_manager_needs_exactly_one_route_source() -> None:
    with pytest.raises(ValueError):
        b.make_http_connection_manager("x")
    with pytest.raises(ValueError):
        b.make_http_connection_manager(
            "x", rds_name="r", route_config=b.make_route_configuration("r", [])
        )


def test_api_listener_packs_an_rds_connection_manager() -> None:
    listener = b.make_api_listener("orders:50051", "grpc|orders")
    assert listener.api_listener.api_listener.type_url == (
        "type.googleapis.com/"
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    )
    manager = hcm_of(listener)
    assert manager.rds.route_config_name == "grpc|orders"
    assert manager.rds.config_source.HasField("ads")
    (router,) = manager.http_filters
    assert router.name == b.ROUTER_FILTER


def test_connection_manager_of_a_listener_without_one() -> None:
    listener = b.make_http_listener("l", "127.0.0.1", 1, direction="inbound", rds_name="r")
    listener.filter_chains[0].filters[0].typed_config.Pack(b.make_route_configuration("x", []))
    assert b.http_connection_manager_of(listener) is None
