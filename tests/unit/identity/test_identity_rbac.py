"""RBAC evaluation on the peer identity (plait.proxy.rbac)."""

from __future__ import annotations

from plait.proxy.rbac import evaluate
from plait.proxy.runtime import RbacFilter

FRONT = "spiffe://plait.local/svc/frontend"
BATCH = "spiffe://plait.local/svc/batch"
ALLOW_FRONT = RbacFilter("allow", "ALLOW", frozenset({FRONT}))
DENY_BATCH = RbacFilter("deny", "DENY", frozenset({BATCH}))
ANY = RbacFilter("allow", "ALLOW", authenticated_any=True)


def test_allow_list() -> None:
    assert evaluate([ALLOW_FRONT], FRONT) == (None, None)
    denied, _ = evaluate([ALLOW_FRONT], BATCH)
    assert denied is not None and denied.startswith(f"{BATCH} not allowed by policy allow")


def test_deny_before_allow_and_plaintext_matches_nothing() -> None:
    assert evaluate([DENY_BATCH, ANY], BATCH)[0] is not None
    assert evaluate([DENY_BATCH, ANY], FRONT) == (None, None)
    denied, _ = evaluate([DENY_BATCH, ANY], None)
    assert denied is not None and denied.startswith("plaintext peer not allowed")
    assert evaluate([DENY_BATCH], None) == (None, None)  # deny list only: plaintext passes


def test_shadow_reports_and_lets_through() -> None:
    shadow = RbacFilter("allow", "ALLOW", frozenset({FRONT}), shadow=True)
    denied, would = evaluate([shadow], BATCH)
    assert denied is None
    assert would is not None and would.startswith(f"would-deny: {BATCH} not allowed")
    assert evaluate([shadow], FRONT) == (None, None)
