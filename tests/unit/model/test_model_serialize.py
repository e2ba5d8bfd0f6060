"""resource_to_dict / resource_from_dict and the ConfigSet <-> documents round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from plait.model.config import ConfigSet
from plait.model.load import (
    ConfigError,
    build_config,
    config_from_documents,
    config_to_documents,
    parse_documents,
    resource_from_dict,
    resource_to_dict,
)
from plait.model.resources import Metadata, Service, format_duration, parse_duration

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "demo-mesh.yaml"


def demo() -> ConfigSet:
    return build_config(parse_documents(EXAMPLE.read_text(), "demo-mesh.yaml"))


def test_minimal_service_keeps_only_the_identity() -> None:
    svc = Service(metadata=Metadata(name="orders"))
    assert resource_to_dict(svc) == {
        "apiVersion": "plait/v1",
        "kind": "Service",
        "metadata": {"name": "orders"},
    }


def test_route_dict_is_the_yaml_shape() -> None:
    route = demo().routes["orders-split"]
    assert resource_to_dict(route) == {
        "apiVersion": "plait/v1",
        "kind": "Route",
        "metadata": {"name": "orders-split"},
        "spec": {
            "service": "orders",
            "rules": [
                {
                    "backends": [
                        {"subset": {"version": "v1"}, "weight": 90},
                        {"subset": {"version": "v2"}, "weight": 10},
                    ],
                    "timeout": "5s",
                    "retries": {"attempts": 2},
                }
            ],
        },
    }


def test_durations_come_back_as_strings_in_camel_case_fields() -> None:
    svc = Service.model_validate(
        {"metadata": {"name": "a"}, "spec": {"connectTimeout": 0.25, "ports": [{"port": 81}]}}
    )
    assert resource_to_dict(svc)["spec"] == {"ports": [{"port": 81}], "connectTimeout": "250ms"}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "250ms"),
        (5.0, "5s"),
        (60.0, "1m"),
        (7200.0, "2h"),
        (1.5, "1500ms"),
        (1e-4, "0.0001s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_dicts_are_json_safe() -> None:
    docs = config_to_documents(demo())
    assert json.loads(json.dumps(docs)) == docs


def test_config_documents_round_trip() -> None:
    cfg = demo()
    docs = config_to_documents(cfg)
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("Service", "frontend"),
        ("Service", "inventory"),
        ("Service", "orders"),
        ("Route", "orders-split"),
    ]
    assert config_from_documents(docs) == cfg
    assert config_from_documents(json.loads(json.dumps(docs))) == cfg


def test_config_documents_read_back_through_yaml() -> None:
    cfg = demo()
    text = yaml.safe_dump_all(config_to_documents(cfg), sort_keys=False)
    assert build_config(parse_documents(text, "dump.yaml")) == cfg


def test_resource_round_trip() -> None:
    for r in demo().resources():
        assert resource_from_dict(resource_to_dict(r), "test") == r


def test_resource_from_dict_error_names_where() -> None:
    with pytest.raises(ConfigError) as info:
        resource_from_dict({"kind": "Service", "metadata": {"name": "x"}, "spec": 1}, "v3")
    (error,) = info.value.errors
    assert (error.file, error.document, error.field, error.line) == ("v3", 1, "spec", None)
    assert str(error) == "v3: document 1 (Service/x): spec: must be a mapping of fields, got 1"


def test_config_from_documents_reports_every_bad_document() -> None:
    docs: list[object] = [
        {"kind": "Service", "metadata": {"name": "a"}},
        {"kind": "Route", "metadata": {"name": "r"}, "spec": {"service": "b", "rules": [{}]}},
        "junk",
    ]
    with pytest.raises(ConfigError) as info:
        config_from_documents(docs, where="store v7")
    assert [(e.file, e.document) for e in info.value.errors] == [("store v7", 3)]
    with pytest.raises(ConfigError) as info:
        config_from_documents(docs[:2], where="store v7")
    assert [(e.document, e.field) for e in info.value.errors] == [(2, "spec.service")]
