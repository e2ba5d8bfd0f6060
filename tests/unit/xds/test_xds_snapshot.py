"""Snapshot: content-hash versions, request subsets and the consistency check."""

from __future__ import annotations

from typing import Any

import pytest

from plait.xds import builders as b
from plait.xds.snapshot import Snapshot, describe, resource_digest
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SECRET, SHORT_NAMES


def eds(name: str) -> Any:
    return b.make_eds_cluster(name, connect_timeout=1)


def cla(name: str, *endpoints: tuple[str, int]) -> Any:
    return b.make_load_assignment(name, endpoints)


def routes_to(name: str, *clusters: str) -> Any:
    route = b.make_route(b.make_route_match(), cluster=clusters[0])
    if len(clusters) > 1:
        route = b.make_route(b.make_route_match(), weighted_clusters=[(c, 1) for c in clusters])
    return b.make_route_configuration(name, [b.make_virtual_host("v", ["*"], [route])])


def rds_listener(name: str, rds: str) -> Any:
    return b.make_http_listener(name, "127.0.0.1", 1, direction="outbound", rds_name=rds)


def snapshot(**by_type: dict[str, Any]) -> Snapshot:
    keys = {
        "secrets": SECRET,
        "clusters": CLUSTER,
        "endpoints": ENDPOINT,
        "listeners": LISTENER,
        "routes": ROUTE,
    }
    return Snapshot(resources={keys[k]: v for k, v in by_type.items()})


def consistent() -> Snapshot:
    return snapshot(
        clusters={"c": eds("c")},
        endpoints={"c": cla("c", ("10.0.0.1", 80))},
        listeners={"l": rds_listener("l", "r"), "api": b.make_api_listener("api", "r")},
        routes={"r": routes_to("r", "c")},
    )


def test_types_push_secrets_then_clusters_and_endpoints_first() -> None:
    assert PUSH_ORDER == (SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE)
    assert LISTENER == "type.googleapis.com/envoy.config.listener.v3.Listener"
    assert SECRET == "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
    assert [SHORT_NAMES[t] for t in PUSH_ORDER] == ["SDS", "CDS", "EDS", "LDS", "RDS"]


# --- versions -----------------------------------------------------------------------------


def test_version_is_a_short_hex_content_hash() -> None:
    version = consistent().version(CLUSTER)
    assert len(version) == 16
    int(version, 16)
    assert consistent().version(CLUSTER) == version
    assert snapshot(clusters={"c": eds("c")}).version(CLUSTER) == version


def test_version_depends_on_content_and_names_not_insertion_order() -> None:
    one, two = eds("a"), eds("b")
    assert snapshot(clusters={"a": one, "b": two}).version(CLUSTER) == snapshot(
        clusters={"b": two, "a": one}
    ).version(CLUSTER)
    base = snapshot(clusters={"a": one}).version(CLUSTER)
    assert snapshot(clusters={"renamed": one}).version(CLUSTER) != base
    slower = b.make_eds_cluster("a", connect_timeout=2)
    assert snapshot(clusters={"a": slower}).version(CLUSTER) != base
    assert snapshot(clusters={}).version(CLUSTER) != base


def test_versions_cover_every_type_in_push_order() -> None:
    versions = consistent().versions()
    assert list(versions) == list(PUSH_ORDER)
    assert len(set(versions.values())) == 5


def test_missing_and_unknown_types_are_empty() -> None:
    empty = Snapshot(resources={})
    assert empty.names(CLUSTER) == []
    assert empty.version(CLUSTER) == snapshot(clusters={}).version(CLUSTER)
    scoped = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
    assert empty.subset(scoped, None) == {}
    assert empty.consistency_errors() == []


def test_digest_hints_give_the_same_versions() -> None:
    plain = consistent()
    hinted = Snapshot(
        resources=plain.resources,
        digests={CLUSTER: {"c": resource_digest(plain.items(CLUSTER)["c"])}},
    )
    assert hinted.versions() == plain.versions()
    assert hinted == plain


def test_describe_names_every_type() -> None:
    text = describe(consistent())
    assert text.startswith("SDS 0 ")
    assert "CDS 1 " in text
    assert "EDS 1" in text and "LDS 2" in text and "RDS 1" in text


# --- subsets --------------------------------------------------------------------------------


@pytest.mark.parametrize("names", [None, [], set()])
def test_no_names_means_wildcard(names: Any) -> None:
    assert consistent().subset(LISTENER, names).keys() == {"l", "api"}


def test_named_subset_skips_unknown_names() -> None:
    snap = consistent()
    got = snap.subset(LISTENER, ["api", "nope"])
    assert list(got) == ["api"]
    assert got["api"] is snap.items(LISTENER)["api"]


# --- consistency ----------------------------------------------------------------------------


def test_a_consistent_snapshot_has_no_errors() -> None:
    assert consistent().consistency_errors() == []


def test_route_to_a_missing_cluster() -> None:
    broken = consistent()
    routes = {"r": routes_to("r", "c", "ghost")}
    errors = Snapshot(resources={**broken.resources, ROUTE: routes}).consistency_errors()
    assert errors == [
        "RouteConfiguration 'r' virtual_hosts['v'].routes[0]: cluster 'ghost' is not in CDS"
    ]


def test_inline_route_to_a_missing_cluster() -> None:
    inline = b.make_http_listener(
        "in", "127.0.0.1", 2, direction="inbound", route_config=routes_to("in", "c", "gone")
    )
    base = consistent()
    listeners = {**base.items(LISTENER), "in": inline}
    errors = Snapshot(resources={**base.resources, LISTENER: listeners}).consistency_errors()
    assert errors == [
        "Listener 'in' route_config virtual_hosts['v'].routes[0]: cluster 'gone' is not in CDS"
    ]


def test_listener_naming_a_missing_route_configuration() -> None:
    base = consistent()
    listeners = {**base.items(LISTENER), "x": rds_listener("x", "missing")}
    errors = Snapshot(resources={**base.resources, LISTENER: listeners}).consistency_errors()
    assert errors == ["Listener 'x': RouteConfiguration 'missing' is not in RDS"]


def test_eds_cluster_without_endpoints_and_leftovers() -> None:
    errors = snapshot(
        clusters={"c": eds("c"), "s": b.make_static_cluster("s", [], connect_timeout=1)},
        endpoints={"orphan": cla("orphan")},
        routes={"unused": routes_to("unused", "c")},
    ).consistency_errors()
    assert errors == [
        "RouteConfiguration 'unused': no listener uses it",
        "Cluster 'c': ClusterLoadAssignment 'c' is not in EDS",
        "ClusterLoadAssignment 'orphan': no EDS cluster uses it",
    ]


def test_eds_service_name_is_honoured() -> None:
    cluster = eds("c")
    cluster.eds_cluster_config.service_name = "other"
    assert (
        snapshot(clusters={"c": cluster}, endpoints={"other": cla("other")}).consistency_errors()
        == []
    )


def test_listener_without_a_connection_manager() -> None:
    bare = rds_listener("l", "r")
    del bare.filter_chains[:]
    errors = snapshot(listeners={"l": bare}).consistency_errors()
    assert errors == ["Listener 'l': no HTTP connection manager"]


# --- replace ----------------------------------------------------------------------------------


def test_replace_keeps_untouched_types_and_their_versions() -> None:
    base = consistent()
    versions = base.versions()
    listeners = {"l": rds_listener("l", "r")}
    changed = base.replace({LISTENER: listeners})
    assert changed.items(CLUSTER) is base.items(CLUSTER)
    assert changed.items(LISTENER) == listeners
    assert changed.version(CLUSTER) == versions[CLUSTER]
    assert changed.version(LISTENER) != versions[LISTENER]
    assert changed.version(LISTENER) == snapshot(listeners=listeners).version(LISTENER)
    assert base.version(LISTENER) == versions[LISTENER]


def test_replace_drops_digest_hints_of_replaced_types() -> None:
    stale = Snapshot(
        resources={CLUSTER: {"c": eds("c")}},
        digests={CLUSTER: {"c": resource_digest(eds("c"))}},
    )
    slower = {"c": b.make_eds_cluster("c", connect_timeout=9)}
    assert stale.replace({CLUSTER: slower}).version(CLUSTER) == snapshot(clusters=slower).version(
        CLUSTER
    )


def test_subset_takes_any_iterable_of_names() -> None:
    assert list(consistent().subset(LISTENER, iter(["l"]))) == ["l"]
    assert consistent().subset(LISTENER, iter([])).keys() == {"l", "api"}


# --- secrets (docs/mtls.md) ----------------------------------------------------------------

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def tls_world(**secrets: Any) -> Snapshot:
    tls = b.make_upstream_tls("default", "trust-bundle", "spiffe://td/svc/c")
    downstream = b.make_downstream_tls("spiffe://td/svc/web", "trust-bundle", "spiffe://td/")
    inbound = b.make_http_listener(
        "inbound|web",
        "127.0.0.1",
        2,
        direction="inbound",
        route_config=routes_to("inbound|web", "c"),
        tls_mode="permissive",
        downstream_tls=downstream,
    )
    return snapshot(
        secrets=secrets,
        clusters={"c": b.make_eds_cluster("c", connect_timeout=1, transport_socket=tls)},
        endpoints={"c": cla("c", ("10.0.0.1", 80))},
        listeners={"l": rds_listener("l", "r"), "inbound|web": inbound},
        routes={"r": routes_to("r", "c")},
    )


def test_tls_contexts_name_secrets_that_exist_or_are_local_identities() -> None:
    bundle = b.make_trust_bundle_secret("trust-bundle", PEM)
    assert tls_world(**{"trust-bundle": bundle}).consistency_errors() == []
    assert tls_world().consistency_errors() == [
        "Cluster 'c': secret 'trust-bundle' is not in SDS",
        "Listener 'inbound|web' filter_chains[0]: secret 'trust-bundle' is not in SDS",
    ]


def test_an_unused_secret_is_fine() -> None:
    bundle = b.make_trust_bundle_secret("other", PEM)
    assert consistent().replace({SECRET: {"other": bundle}}).consistency_errors() == []
