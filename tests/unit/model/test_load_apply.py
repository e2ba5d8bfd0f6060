"""apply_resources / apply_text upsert semantics, and delete_resource."""

from __future__ import annotations

import copy
import textwrap

import pytest

from plait.model.config import ConfigSet
from plait.model.load import (
    ConfigError,
    ResourceNotFoundError,
    apply_resources,
    apply_text,
    build_config,
    delete_resource,
    parse_documents,
)
from plait.model.resources import Backend, Metadata, Route, RouteRule, RouteSpec, Service


def service(name: str, protocol: str = "http", port: int = 80) -> Service:
    spec = {"protocol": protocol, "ports": [{"port": port}]}
    return Service.model_validate({"metadata": {"name": name}, "spec": spec})


def route(name: str, target: str, weight: int = 1) -> Route:
    rule = RouteRule(backends=(Backend(weight=weight),))
    return Route(metadata=Metadata(name=name), spec=RouteSpec(service=target, rules=(rule,)))


@pytest.fixture
def current() -> ConfigSet:
    return build_config([service("orders"), service("db", "tcp"), route("orders-r", "orders")])


def test_apply_to_empty_config_adds_everything() -> None:
    cfg, changed = apply_resources(ConfigSet(), [service("a"), route("r", "a")], "a.yaml")
    assert changed == ["Route/r", "Service/a"]
    assert cfg == build_config([service("a"), route("r", "a")])


def test_apply_reports_only_added_and_changed_resources(current: ConfigSet) -> None:
    new = [service("orders", port=8080), service("db", "tcp"), service("web")]
    cfg, changed = apply_resources(current, new, "x.yaml")
    assert changed == ["Service/orders", "Service/web"]
    assert cfg.services["orders"].spec.ports[0].port == 8080
    assert set(cfg.services) == {"orders", "db", "web"}
    assert cfg.routes == current.routes  # untouched resources are kept


def test_noop_apply_changes_nothing(current: ConfigSet) -> None:
    cfg, changed = apply_resources(current, list(current.resources()), "same.yaml")
    assert changed == []
    assert cfg == current


def test_noop_apply_from_text_with_defaults_spelled_out(current: ConfigSet) -> None:
    text = textwrap.dedent("""\
        apiVersion: plait/v1
        kind: Service
        metadata: {name: orders, labels: {}}
        spec:
          protocol: http
          ports: [{name: http, port: 80}]
          loadBalancer: least_request
          connectTimeout: 1000ms
        """)
    cfg, changed = apply_text(current, text, "same.yaml")
    assert (cfg, changed) == (current, [])


def test_rejected_apply_leaves_current_unchanged(current: ConfigSet) -> None:
    before = copy.deepcopy(current)
    with pytest.raises(ConfigError) as info:
        apply_resources(current, [service("web"), route("r2", "missing")], "bad.yaml")
    assert [(e.file, e.document, e.name, e.field) for e in info.value.errors] == [
        ("bad.yaml", 2, "r2", "spec.service")
    ]
    assert current == before


def test_apply_refuses_second_route_for_a_service_already_routed(current: ConfigSet) -> None:
    with pytest.raises(ConfigError) as info:
        apply_resources(current, [route("other", "orders")], "r.yaml")
    (error,) = info.value.errors
    assert (error.file, error.document, error.name) == ("r.yaml", 1, "other")
    assert "already has Route 'orders-r' (<current config>)" in error.message


def test_apply_can_replace_a_route_under_the_same_name(current: ConfigSet) -> None:
    cfg, changed = apply_resources(current, [route("orders-r", "orders", weight=5)], "r.yaml")
    assert changed == ["Route/orders-r"]
    assert cfg.routes["orders-r"].spec.rules[0].backends[0].weight == 5


def test_apply_blames_the_new_service_when_it_turns_tcp_under_a_route(current: ConfigSet) -> None:
    with pytest.raises(ConfigError) as info:
        apply_resources(current, [service("orders", "tcp")], "s.yaml")
    (error,) = info.value.errors
    assert (error.file, error.document, error.kind, error.field) == (
        "s.yaml",
        1,
        "Service",
        "spec.protocol",
    )
    assert "Route 'orders-r' routes this Service" in error.message


def test_apply_refuses_a_route_on_a_tcp_service(current: ConfigSet) -> None:
    with pytest.raises(ConfigError) as info:
        apply_resources(current, [route("db-r", "db")], "r.yaml")
    (error,) = info.value.errors
    assert (error.kind, error.field) == ("Route", "spec.service")


def test_apply_refuses_the_same_resource_twice_in_one_apply() -> None:
    with pytest.raises(ConfigError) as info:
        apply_resources(ConfigSet(), [service("a"), service("a", port=81)], "d.yaml")
    assert [(e.document, e.field) for e in info.value.errors] == [(2, "metadata.name")]


def test_apply_text_errors_carry_lines(current: ConfigSet) -> None:
    text = "# new route\n" + textwrap.dedent("""\
        apiVersion: plait/v1
        kind: Route
        metadata: {name: web-r}
        spec:
          service: web
          rules: [{}]
        """)
    with pytest.raises(ConfigError) as info:
        apply_text(current, text, "web.yaml")
    assert [(e.document, e.field, e.line) for e in info.value.errors] == [(1, "spec.service", 6)]
    web = "apiVersion: plait/v1\nkind: Service\nmetadata: {name: web}\n---\n"
    cfg, changed = apply_text(current, web + text, "web.yaml")
    assert changed == ["Route/web-r", "Service/web"]
    assert cfg.route_for("web") is not None


def test_delete_route_then_service(current: ConfigSet) -> None:
    without_route = delete_resource(current, "Route", "orders-r")
    assert without_route.routes == {}
    assert current.routes  # the original is untouched
    empty = delete_resource(without_route, "Service", "orders")
    assert set(empty.services) == {"db"}


def test_delete_refuses_a_service_a_route_names(current: ConfigSet) -> None:
    with pytest.raises(ConfigError) as info:
        delete_resource(current, "Service", "orders")
    assert not isinstance(info.value, ResourceNotFoundError)
    (error,) = info.value.errors
    assert (error.kind, error.name) == ("Service", "orders")
    assert "Route 'orders-r' still routes this Service" in error.message


@pytest.mark.parametrize(("kind", "name"), [("Service", "nope"), ("Route", "orders"), ("X", "a")])
def test_delete_missing_resource_is_not_found(current: ConfigSet, kind: str, name: str) -> None:
    with pytest.raises(ResourceNotFoundError) as info:
        delete_resource(current, kind, name)
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, ConfigError)
    assert str(info.value).startswith(f"<current config>: {kind}/{name}: ")


def test_parse_then_apply_matches_apply_text(current: ConfigSet) -> None:
    text = "apiVersion: plait/v1\nkind: Service\nmetadata: {name: web}\n"
    via_list = apply_resources(current, parse_documents(text, "w.yaml"), "w.yaml")
    assert via_list == apply_text(current, text, "w.yaml")
