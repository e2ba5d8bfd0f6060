"""Property tests: for any valid config, registry state and node, translation

- never raises and always gives a consistent snapshot with the contract's names;
- sets only fields of the supported subset for plait proxies;
- is deterministic: same input, same versions, whatever the order of the instances;
- gives the same snapshot through a shared Translator as through translate().
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st
from xds_fixtures import ALLOWED, set_field_paths
from xds_strategies import (
    PROPERTY_SETTINGS,
    TRUST_BUNDLE,
    configs,
    configs_and_proxies,
    instances,
    nodes,
    trust_bundles,
)

from plait.model.config import ConfigSet
from plait.model.resources import subset_key
from plait.xds.inputs import Instance, NodeInfo
from plait.xds.translate import Translator, translate
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SECRET


@PROPERTY_SETTINGS
@given(config=configs(), registry=instances, node=nodes, bundle=trust_bundles)
def test_translation_is_consistent_and_names_follow_the_contract(
    config: ConfigSet, registry: list[Instance], node: NodeInfo, bundle: bytes
) -> None:
    snapshot = translate(config, registry, node, trust_bundle=bundle)
    if bundle:
        assert snapshot.consistency_errors() == []
    else:  # no CA bundle yet: TLS contexts stay, and only the missing bundle is reported
        for error in snapshot.consistency_errors():
            assert error.endswith("secret 'trust-bundle' is not in SDS")
    routed = {n for n, s in config.services.items() if s.spec.protocol in ("http", "grpc")}
    clusters = set(snapshot.names(CLUSTER))
    if node.plait_proxy:
        scope = expected_scope(config, node)
        assert "outbound" in snapshot.names(LISTENER)
        assert snapshot.names(ROUTE) == ["outbound"]
        outbound = {n.split("|")[1] for n in clusters if n.startswith("outbound|")}
        assert outbound == scope  # exactly the services it may call
        assert {f"outbound|{n}" for n in scope} <= clusters
        assert {f"inbound|{p.service}" for p in node.inbound} <= clusters
        vhosts = snapshot.items(ROUTE)["outbound"].virtual_hosts
        assert [v.name for v in vhosts] == sorted(routed & scope)
    else:  # proxyless clients: plaintext only, strict services left out
        routed = {n for n in routed if config.services[n].spec.mtls != "strict"}
        assert {f"outbound|{n}" for n in routed} <= clusters
        assert snapshot.names(ROUTE) == sorted(f"grpc|{n}" for n in routed)
        expected_listeners = {
            name
            for n in routed
            for name in (n, *(f"{n}:{p.port}" for p in config.services[n].spec.ports))
        }
        assert set(snapshot.names(LISTENER)) == expected_listeners


def expected_scope(config: ConfigSet, node: NodeInfo) -> set[str]:
    """The services a plait proxy may call (docs/xds.md, "Scoping"), computed afresh."""
    local = {p.service for p in node.inbound}
    if not local:
        return set(config.services)
    called: set[str] = set()
    for name in local:
        service = config.services.get(name)
        if service is None or service.spec.calls is None:
            return set(config.services)
        called.update(service.spec.calls)
    return called & set(config.services)


def without_calls(config: ConfigSet) -> ConfigSet:
    services = {
        name: s.model_copy(update={"spec": s.spec.model_copy(update={"calls": None})})
        for name, s in config.services.items()
    }
    return ConfigSet(services=services, routes=config.routes, policies=config.policies)


@PROPERTY_SETTINGS
@given(mesh=configs_and_proxies(), registry=instances, bundle=trust_bundles)
def test_a_scoped_snapshot_is_the_unscoped_one_cut_to_its_scope(
    mesh: tuple[ConfigSet, NodeInfo], registry: list[Instance], bundle: bytes
) -> None:
    config, node = mesh
    scoped = translate(config, registry, node, trust_bundle=bundle)
    full = translate(without_calls(config), registry, node, trust_bundle=bundle)
    scope = expected_scope(config, node)
    for type_url in (SECRET, LISTENER):
        assert scoped.items(type_url) == full.items(type_url)
    for type_url in (CLUSTER, ENDPOINT):
        expected = {
            name: message
            for name, message in full.items(type_url).items()
            if not name.startswith("outbound|") or name.split("|")[1] in scope
        }
        assert dict(scoped.items(type_url)) == expected
    vhosts = full.items(ROUTE)["outbound"].virtual_hosts
    assert list(scoped.items(ROUTE)["outbound"].virtual_hosts) == [
        v for v in vhosts if v.name in scope
    ]
    # every cluster a route names is in CDS; every EDS cluster has its assignment
    assert [e for e in scoped.consistency_errors() if "trust-bundle" not in e] == []
    outbound = {n.split("|")[1] for n in scoped.names(CLUSTER) if n.startswith("outbound|")}
    assert outbound == scope


@PROPERTY_SETTINGS
@given(config=configs(), registry=instances, node=nodes)
def test_routes_end_in_a_catch_all_and_weights_are_positive(
    config: ConfigSet, registry: list[Instance], node: NodeInfo
) -> None:
    snapshot = translate(config, registry, node)
    for route_config in snapshot.items(ROUTE).values():
        for vhost in route_config.virtual_hosts:
            last = vhost.routes[-1]
            assert last.match.prefix == "/" and not last.match.headers
            assert last.route.cluster == f"outbound|{vhost.name}"
            for route in vhost.routes:
                weights = [c.weight.value for c in route.route.weighted_clusters.clusters]
                assert all(w > 0 for w in weights)
                names = [c.name for c in route.route.weighted_clusters.clusters]
                assert len(names) == len(set(names))
                if route.route.HasField("retry_policy"):
                    assert route.route.retry_policy.num_retries.value > 0
                    assert route.route.retry_policy.retry_on


@PROPERTY_SETTINGS
@given(config=configs(), registry=instances, node=nodes)
def test_endpoints_are_the_unique_healthy_members_of_each_subset(
    config: ConfigSet, registry: list[Instance], node: NodeInfo
) -> None:
    snapshot = translate(config, registry, node)
    for name, assignment in snapshot.items(ENDPOINT).items():
        (locality,) = assignment.endpoints
        assert locality.load_balancing_weight.value == 1
        got = [
            (
                e.endpoint.address.socket_address.address,
                e.endpoint.address.socket_address.port_value,
            )
            for e in locality.lb_endpoints
        ]
        assert got == sorted(set(got)), "sorted, no duplicate address (gRPC refuses those)"
        service = name.split("|")[1]
        members = {
            (i.address, i.port)
            for i in registry
            if i.healthy and i.service == service and _in_subset(name, i.labels)
        }
        assert set(got) == members


def _in_subset(cluster: str, labels: dict[str, str]) -> bool:
    parts = cluster.split("|")
    if len(parts) == 2:
        return True
    wanted = dict(item.split("=", 1) for item in parts[2].split(","))
    assert subset_key(wanted) == parts[2]
    return all(labels.get(k) == v for k, v in wanted.items())


@PROPERTY_SETTINGS
@given(config=configs(), registry=instances, node=nodes, seed=st.integers(0, 2**32))
def test_versions_are_deterministic_and_ignore_instance_order(
    config: ConfigSet, registry: list[Instance], node: NodeInfo, seed: int
) -> None:
    versions = translate(config, registry, node).versions()
    assert list(versions) == list(PUSH_ORDER)
    assert translate(config, registry, node).versions() == versions
    shuffled = list(registry)
    random.Random(seed).shuffle(shuffled)
    again = translate(config, shuffled, node)
    assert again.versions() == versions
    assert again == translate(config, registry, node)


@PROPERTY_SETTINGS
@given(config=configs(), registry=instances, node_list=st.lists(nodes, min_size=1, max_size=4))
def test_a_shared_translator_matches_translate(
    config: ConfigSet, registry: list[Instance], node_list: list[NodeInfo]
) -> None:
    translator = Translator(config, registry)
    for node in node_list:
        assert translator.for_node(node).versions() == translate(config, registry, node).versions()


@PROPERTY_SETTINGS
@given(config=configs(), registry=instances, node=nodes.filter(lambda n: n.plait_proxy))
def test_plait_proxies_only_get_fields_of_the_supported_subset(
    config: ConfigSet, registry: list[Instance], node: NodeInfo
) -> None:
    snapshot = translate(config, registry, node, trust_bundle=TRUST_BUNDLE)
    for type_url in PUSH_ORDER:
        for name, message in snapshot.items(type_url).items():
            unsupported = set(set_field_paths(message)) - ALLOWED[type_url]
            assert not unsupported, f"{name}: {sorted(unsupported)}"
