"""parse_documents on valid input, and build_config's cross-resource checks."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from plait.model.load import (
    ConfigError,
    FieldError,
    build_config,
    load_text,
    parse_documents,
)
from plait.model.resources import Backend, Metadata, Route, RouteRule, RouteSpec, Service

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "demo-mesh.yaml"

MESH = textwrap.dedent("""\
    # leading comment, then an explicit document start
    ---
    apiVersion: plait/v1
    kind: Service
    metadata:
      name: orders
      labels: {team: shop}
    spec:
      protocol: grpc
      ports:
        - {name: grpc, port: 8080}
      loadBalancer: round_robin
      connectTimeout: 250ms
    ---
    ---
    apiVersion: plait/v1
    kind: Route
    metadata: {name: orders-canary}
    spec:
      service: orders
      rules:
        - match:
            pathPrefix: /api
            headers:
              - {name: x-canary, exact: "yes"}
          backends:
            - {subset: {version: v2}, weight: 1}
          timeout: 2m
          retries: {attempts: 3, on: [5xx], perTryTimeout: 1.5}
        - {}
    ...
    """)


def service(name: str, protocol: str = "http") -> Service:
    return Service.model_validate({"metadata": {"name": name}, "spec": {"protocol": protocol}})


def route(name: str, target: str, subset: dict[str, str] | None = None) -> Route:
    rule = RouteRule(backends=(Backend(subset=subset or {}),))
    return Route(metadata=Metadata(name=name), spec=RouteSpec(service=target, rules=(rule,)))


def errors_of_build(resources: list[Service | Route]) -> list[FieldError]:
    with pytest.raises(ConfigError) as info:
        build_config(resources, "set.yaml")
    return info.value.errors


def test_valid_multi_document_file() -> None:
    svc, rt = parse_documents(MESH, "mesh.yaml")
    assert isinstance(svc, Service)
    assert svc.name == "orders"
    assert svc.metadata.labels == {"team": "shop"}
    assert svc.spec.protocol == "grpc"
    assert [(p.name, p.port) for p in svc.spec.ports] == [("grpc", 8080)]
    assert svc.spec.load_balancer == "round_robin"
    assert svc.spec.connect_timeout == 0.25
    assert isinstance(rt, Route)
    first, second = rt.spec.rules
    assert first.match.path_prefix == "/api"
    assert first.match.headers[0].exact == "yes"
    assert first.backends[0].subset == {"version": "v2"}
    assert first.timeout == 120.0
    assert first.retries is not None
    assert (first.retries.attempts, first.retries.on) == (3, ("5xx",))
    assert first.retries.per_try_timeout == 1.5
    assert second == RouteRule()
    assert build_config([svc, rt]).route_for("orders") == rt


def test_empty_text_and_empty_documents_give_no_resources() -> None:
    assert parse_documents("", "empty.yaml") == []
    assert parse_documents("# nothing\n---\n---\n...\n", "empty.yaml") == []


def test_empty_documents_still_count_for_numbering() -> None:
    text = "---\n---\nkind: Nope\n"
    with pytest.raises(ConfigError) as info:
        parse_documents(text, "x.yaml")
    assert [(e.document, e.line) for e in info.value.errors] == [(2, 3)]


def test_demo_mesh_example_parses_and_builds() -> None:
    resources = parse_documents(EXAMPLE.read_text(), EXAMPLE.name)
    cfg = build_config(resources, EXAMPLE.name)
    assert sorted(cfg.services) == ["frontend", "inventory", "orders"]
    for svc in cfg.services.values():
        assert svc.spec.protocol == "http"
        assert [p.port for p in svc.spec.ports] == [80]
    rt = cfg.route_for("orders")
    assert rt is not None and rt.name == "orders-split"
    (rule,) = rt.spec.rules
    assert [(b.subset, b.weight) for b in rule.backends] == [
        ({"version": "v1"}, 90),
        ({"version": "v2"}, 10),
    ]
    assert rule.timeout == 5.0
    assert rule.retries is not None
    assert rule.retries.attempts == 2
    assert rule.retries.on == ("connect-failure", "reset")


def test_build_config_keys_resources_by_name() -> None:
    cfg = build_config([service("b"), route("rb", "b"), service("a")])
    assert list(cfg.services) == ["a", "b"]
    assert list(cfg.routes) == ["rb"]
    assert cfg.route_for("a") is None


def test_build_refuses_duplicate_kind_and_name() -> None:
    errors = errors_of_build([service("a"), service("b"), service("a")])
    assert [(e.file, e.document, e.kind, e.name, e.field) for e in errors] == [
        ("set.yaml", 3, "Service", "a", "metadata.name")
    ]
    assert "already defined in document 1" in errors[0].message


def test_build_refuses_route_to_missing_service() -> None:
    errors = errors_of_build([service("orders"), route("r", "order")])
    assert [(e.document, e.kind, e.name, e.field, e.line) for e in errors] == [
        (2, "Route", "r", "spec.service", None)
    ]
    assert "names Service 'order', which does not exist (did you mean 'orders'?)" in (
        errors[0].message
    )


def test_build_refuses_second_route_for_a_service() -> None:
    errors = errors_of_build([service("a"), route("r1", "a"), route("r2", "a")])
    assert [(e.document, e.name, e.field) for e in errors] == [(3, "r2", "spec.service")]
    assert "already has Route 'r1' (document 2)" in errors[0].message


def test_build_refuses_bad_subset_label_keys() -> None:
    errors = errors_of_build([service("a"), route("r", "a", {"bad key": "x", "ok": "y"})])
    assert [(e.document, e.field) for e in errors] == [
        (2, 'spec.rules[0].backends[0].subset["bad key"]')
    ]
    assert "not a valid label key" in errors[0].message


def test_build_refuses_route_on_tcp_service() -> None:
    errors = errors_of_build([service("db", "tcp"), route("r", "db")])
    assert [(e.document, e.kind, e.field) for e in errors] == [(2, "Route", "spec.service")]
    assert "protocol tcp" in errors[0].message


def test_build_reports_every_cross_check_error() -> None:
    errors = errors_of_build(
        [service("db", "tcp"), route("r1", "db"), route("r2", "nope"), service("db")]
    )
    assert [(e.document, e.field) for e in errors] == [
        (2, "spec.service"),
        (3, "spec.service"),
        (4, "metadata.name"),
    ]


def test_load_text_gives_cross_check_errors_a_line() -> None:
    text = textwrap.dedent("""\
        apiVersion: plait/v1
        kind: Route
        metadata: {name: r}
        spec:
          rules: [{}]
          service: orders
        """)
    with pytest.raises(ConfigError) as info:
        load_text(text, "r.yaml")
    assert [(e.file, e.document, e.field, e.line) for e in info.value.errors] == [
        ("r.yaml", 1, "spec.service", 6)
    ]


def test_load_text_subset_error_points_at_the_key() -> None:
    text = MESH.replace("{version: v2}", '{"version!": v2}')
    with pytest.raises(ConfigError) as info:
        load_text(text, "mesh.yaml")
    assert [(e.document, e.field, e.line) for e in info.value.errors] == [
        (3, 'spec.rules[0].backends[0].subset["version!"]', 27)
    ]
