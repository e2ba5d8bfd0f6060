"""Service.spec.mtls and the Policy kind (docs/mtls.md): fields, cross-checks, round trip."""

from __future__ import annotations

import pytest

from plait.model.config import ConfigSet
from plait.model.load import (
    ConfigError,
    apply_text,
    config_from_documents,
    config_to_documents,
    delete_resource,
    load_text,
    resource_from_dict,
    resource_to_dict,
)
from plait.model.resources import Policy

MESH = """\
kind: Service
metadata: {name: orders}
spec: {mtls: strict}
---
kind: Service
metadata: {name: frontend}
---
kind: Policy
metadata: {name: orders-callers}
spec:
  service: orders
  mode: audit
  allow: [frontend, "spiffe://plait.local/svc/batch"]
  deny: [batch]
"""


def test_mesh_loads() -> None:
    cfg = load_text(MESH, "mesh.yaml")
    assert cfg.services["orders"].spec.mtls == "strict"
    assert cfg.services["frontend"].spec.mtls == "plaintext"
    policy = cfg.policies["orders-callers"]
    assert policy.spec.mode == "audit"
    assert policy.spec.allow == ("frontend", "spiffe://plait.local/svc/batch")
    assert cfg.policy_for("orders") is policy and cfg.policy_for("frontend") is None


def test_policy_defaults_and_dict_round_trip() -> None:
    data = {"kind": "Policy", "metadata": {"name": "p"}, "spec": {"service": "orders"}}
    policy = resource_from_dict(data, "api")
    assert isinstance(policy, Policy)
    assert (policy.spec.mode, policy.spec.allow, policy.spec.deny) == ("enforce", (), ())
    assert resource_to_dict(policy) == {"apiVersion": "plait/v1", **data}
    cfg = load_text(MESH, "mesh.yaml")
    assert config_from_documents(config_to_documents(cfg)) == cfg
    assert [d["kind"] for d in config_to_documents(cfg)] == ["Service", "Service", "Policy"]


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ("{service: orders, allow: [Frontend]}", "spec.allow[0]", "neither a service name"),
        ("{service: orders, deny: ['spiffe://td/ns/x']}", "spec.deny[0]", "SPIFFE id"),
        ("{service: orders, allow: [a, a]}", "spec.allow", "listed twice"),
        ("{service: orders, mode: dry-run}", "spec.mode", "'enforce' or 'audit'"),
        ("{service: Orders}", "spec.service", "DNS label"),
        ("{allow: [a]}", "spec.service", "required"),
    ],
)
def test_policy_field_errors(spec: str, field: str, words: str) -> None:
    text = f"kind: Policy\nmetadata: {{name: p}}\nspec: {spec}\n"
    with pytest.raises(ConfigError) as info:
        load_text(text, "p.yaml")
    (error,) = info.value.errors
    assert error.field.startswith(field), error
    assert words in error.message


def test_mtls_mode_is_checked() -> None:
    with pytest.raises(ConfigError) as info:
        load_text("kind: Service\nmetadata: {name: a}\nspec: {mtls: on}\n", "s.yaml")
    (error,) = info.value.errors
    assert error.field == "spec.mtls" and "'plaintext', 'permissive' or 'strict'" in error.message


def test_policy_must_name_an_existing_service() -> None:
    text = "kind: Policy\nmetadata: {name: p}\nspec: {service: ordres}\n"
    with pytest.raises(ConfigError) as info:
        apply_text(load_text(MESH, "m.yaml"), text, "p.yaml")
    (error,) = info.value.errors
    assert (error.kind, error.field, error.line) == ("Policy", "spec.service", 3)
    assert "did you mean 'orders'" in error.message


def test_at_most_one_policy_per_service() -> None:
    text = "kind: Policy\nmetadata: {name: second}\nspec: {service: orders}\n"
    with pytest.raises(ConfigError) as info:
        apply_text(load_text(MESH, "m.yaml"), text, "p.yaml")
    (error,) = info.value.errors
    assert error.name == "second" and "already has Policy 'orders-callers'" in error.message
    # replacing the same Policy is fine
    same = "kind: Policy\nmetadata: {name: orders-callers}\nspec: {service: orders}\n"
    cfg, changed = apply_text(load_text(MESH, "m.yaml"), same, "p.yaml")
    assert changed == ["Policy/orders-callers"] and cfg.policies["orders-callers"].spec.allow == ()


def test_deleting_a_protected_service_is_refused() -> None:
    cfg = load_text(MESH, "m.yaml")
    with pytest.raises(ConfigError) as info:
        delete_resource(cfg, "Service", "orders")
    assert "Policy 'orders-callers' still protects" in info.value.errors[0].message
    without = delete_resource(cfg, "Policy", "orders-callers")
    assert without.policies == {}
    assert "orders" not in delete_resource(without, "Service", "orders").services
    with pytest.raises(KeyError):
        delete_resource(ConfigSet(), "Policy", "nope")
