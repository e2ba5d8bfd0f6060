"""Authorization on inbound listeners: the RBAC filters, evaluated on the peer's identity.

Pure. The filters come from the control plane in listener order
(:class:`~plait.proxy.runtime.RbacFilter`, docs/mtls.md); the principal is the peer's
SPIFFE id from the mTLS handshake, or None for a plaintext peer, which has no identity
and matches no principal (not even "any authenticated peer").

Envoy's semantics, filter by filter:

- ``ALLOW``: the request is denied unless its principal matches;
- ``DENY``: the request is denied if its principal matches;
- a ``shadow`` filter (Policy ``mode: audit``) decides the same way but only reports
  what it would have done.

The first enforcing filter that denies decides; shadow filters are all evaluated so the
access log can say "would-deny". :func:`evaluate` returns ``(denied, would_deny)``, each
None or the details text for the Proxy-Status header / the access log.
"""

from __future__ import annotations

from collections.abc import Sequence

from plait.proxy.runtime import RbacFilter

PLAINTEXT_PEER = "plaintext peer"


def matches(rule: RbacFilter, principal: str | None) -> bool:
    if principal is None:
        return False
    return rule.authenticated_any or principal in rule.principals


def denies(rule: RbacFilter, principal: str | None) -> bool:
    hit = matches(rule, principal)
    return not hit if rule.action == "ALLOW" else hit


def details(rule: RbacFilter, principal: str | None) -> str:
    who = principal or PLAINTEXT_PEER
    why = "not in its allow list" if rule.action == "ALLOW" else "in its deny list"
    return f"{who} not allowed by policy {rule.name} ({why})"


def evaluate(filters: Sequence[RbacFilter], principal: str | None) -> tuple[str | None, str | None]:
    """``(denied details, would-deny details)`` for a request from ``principal``."""
    would: str | None = None
    for rule in filters:
        if not denies(rule, principal):
            continue
        if rule.shadow:
            if would is None:
                would = f"would-deny: {details(rule, principal)}"
            continue
        return details(rule, principal), would
    return None, would
