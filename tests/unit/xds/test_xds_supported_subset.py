"""The builders set only fields of the supported subset (docs/xds.md), as ALLOWED lists it.

A resource for a plait proxy that sets anything else would be NACKed.
"""

from __future__ import annotations

from xds_fixtures import ALLOWED, set_field_paths

from plait.xds import builders as b
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE


def assert_supported(type_url: str, message: object) -> None:
    unsupported = set(set_field_paths(message)) - ALLOWED[type_url]
    assert not unsupported, sorted(unsupported)


def test_clusters_stay_in_the_subset() -> None:
    assert_supported(
        CLUSTER, b.make_eds_cluster("c", connect_timeout=0.5, lb_policy="least_request")
    )
    assert_supported(CLUSTER, b.make_static_cluster("s", [("127.0.0.1", 1)], connect_timeout=1))
    assert_supported(ENDPOINT, b.make_load_assignment("c", [("10.0.0.1", 80), ("10.0.0.2", 80)]))


def test_listeners_and_routes_stay_in_the_subset() -> None:
    headers = [
        b.make_header_matcher("a", exact="1"),
        b.make_header_matcher("b", prefix="x", invert=True),
        b.make_header_matcher("c", present=False),
    ]
    routes = [
        b.make_route(
            b.make_route_match(path="/p", headers=headers),
            weighted_clusters=[("x", 1), ("y", 2)],
            timeout=1.5,
            retry_policy=b.make_retry_policy(["5xx", "reset"], 2, 0.25),
        ),
        b.make_route(b.make_route_match(prefix="/"), cluster="x"),
    ]
    config = b.make_route_configuration("r", [b.make_virtual_host("v", ["v", "v:80"], routes)])
    assert_supported(ROUTE, config)
    for listener in (
        b.make_http_listener("l", "127.0.0.1", 1, direction="inbound", route_config=config),
        b.make_http_listener("o", "127.0.0.1", 2, direction="outbound", rds_name="r"),
    ):
        assert_supported(LISTENER, listener)


def test_the_checker_catches_a_field_outside_the_subset() -> None:
    cluster = b.make_eds_cluster("c", connect_timeout=1)
    cluster.least_request_lb_config.choice_count.value = 2
    assert set(set_field_paths(cluster)) - ALLOWED[CLUSTER] == {
        "least_request_lb_config.choice_count.value"
    }
