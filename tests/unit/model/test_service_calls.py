"""Service.spec.calls: what a service calls (docs/xds.md, "Scoping"): field, checks, round trip."""

from __future__ import annotations

import pytest

from plait.model.config import ConfigSet
from plait.model.load import (
    ConfigError,
    config_from_documents,
    config_to_documents,
    delete_resource,
    load_text,
)

MESH = """\
kind: Service
metadata: {name: frontend}
spec:
  calls: [orders]
---
kind: Service
metadata: {name: orders}
spec:
  calls:
    - inventory
---
kind: Service
metadata: {name: inventory}
spec: {calls: []}
---
kind: Service
metadata: {name: batch}
"""


def errors_of(text: str) -> list[tuple[int, str, int | None, str]]:
    with pytest.raises(ConfigError) as info:
        load_text(text, "mesh.yaml")
    return [(e.document, e.field, e.line, e.message) for e in info.value.errors]


def test_calls_load_absent_empty_and_listed() -> None:
    cfg = load_text(MESH, "mesh.yaml")
    assert cfg.services["frontend"].spec.calls == ("orders",)
    assert cfg.services["orders"].spec.calls == ("inventory",)
    assert cfg.services["inventory"].spec.calls == ()
    assert cfg.services["batch"].spec.calls is None


def test_calls_round_trip_and_absent_stays_absent() -> None:
    cfg = load_text(MESH, "mesh.yaml")
    docs = {d["metadata"]["name"]: d for d in config_to_documents(cfg)}
    assert docs["inventory"]["spec"] == {"calls": []}
    assert docs["frontend"]["spec"] == {"calls": ["orders"]}
    assert "spec" not in docs["batch"]
    assert config_from_documents(config_to_documents(cfg)) == cfg


def test_a_missing_service_is_refused_with_a_hint_and_its_line() -> None:
    text = MESH.replace("    - inventory\n", "    - inventory\n    - inventroy\n    - nope\n")
    assert errors_of(text) == [
        (
            2,
            "spec.calls[1]",
            11,
            "names Service 'inventroy', which does not exist (did you mean 'inventory'?); "
            "define that Service or fix the name",
        ),
        (
            2,
            "spec.calls[2]",
            12,
            "names Service 'nope', which does not exist; define that Service or fix the name",
        ),
    ]


def test_a_duplicate_is_refused_at_its_index() -> None:
    text = MESH.replace("    - inventory\n", "    - inventory\n    - frontend\n    - inventory\n")
    assert errors_of(text) == [
        (
            2,
            "spec.calls[2]",
            12,
            "Service 'inventory' is listed twice (first at spec.calls[0]); "
            "list each called Service once",
        )
    ]


def test_a_name_that_is_not_a_dns_label_is_refused_at_its_index() -> None:
    text = MESH.replace("calls: [orders]", "calls: [orders, Orders_2]")
    ((document, field, line, message),) = errors_of(text)
    assert (document, field, line) == (1, "spec.calls[1]", 4)
    assert message.startswith("must be a DNS label")


def test_calls_must_be_a_list() -> None:
    ((_, field, _, message),) = errors_of(MESH.replace("calls: [orders]", "calls: orders"))
    assert field == "spec.calls"
    assert "list" in message


def test_deleting_a_called_service_is_refused() -> None:
    cfg = load_text(MESH, "mesh.yaml")
    with pytest.raises(ConfigError) as info:
        delete_resource(cfg, "Service", "orders")
    (error,) = info.value.errors
    assert (error.kind, error.name) == ("Service", "orders")
    assert "Service 'frontend' still calls this Service (spec.calls)" in error.message
    without_frontend = delete_resource(cfg, "Service", "frontend")
    assert isinstance(without_frontend, ConfigSet)
    assert set(delete_resource(without_frontend, "Service", "orders").services) == {
        "inventory",
        "batch",
    }
