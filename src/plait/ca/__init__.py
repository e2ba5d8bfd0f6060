"""The service certificate authority (issue 4, mTLS: the CA side).

Pure cores (no sockets, no clock, no globals; time and randomness are arguments):

- ``spiffe`` — :class:`SpiffeId`: ``spiffe://<trust-domain>/svc/<service>``, parsed
  strictly.
- ``profile`` — what goes into every certificate: the leaf profile (ECDSA P-256, one URI
  SAN, 24 h, serverAuth + clientAuth), the root and intermediate profiles, serials,
  renewal at half-life.
- ``authority`` — :class:`CertificateAuthority`: sign a CSR for a service with the leaf
  profile (nothing from the CSR but its key), the trust bundle, the root rotation state
  machine, verifying a client's certificate for renewals.
- ``checks`` — what is verified: CSRs (signature, P-256 key, nothing else taken),
  root + intermediate pairs, the SPIFFE id of a client certificate.
- ``tokens`` — join tokens: created for one service with a ttl, stored as a hash,
  verified, revoked.

Shell-side helpers (small, file I/O only):

- ``pki_files`` — the CA directory layout: keys 0600, certificates 0644, atomic writes.
- ``audit`` — the append-only, fsynced JSON-lines audit log.

The control plane (:mod:`plait.control`) wires these to its HTTP API, its store and its
periodic task; docs/security.md is the operator's view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plait.ca.authority import CertificateAuthority, CsrRefused, IssuedCert
    from plait.ca.spiffe import SpiffeId

__all__ = ["CertificateAuthority", "CsrRefused", "IssuedCert", "SpiffeId"]

# Imported on first use (PEP 562): the proxy imports plait.ca.spiffe and
# plait.ca.token_format, which need no cryptography; plait.ca.authority does
# (docs/internals.md, "Memory").
_LAZY = {
    "CertificateAuthority": "plait.ca.authority",
    "CsrRefused": "plait.ca.authority",
    "IssuedCert": "plait.ca.authority",
    "SpiffeId": "plait.ca.spiffe",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'plait.ca' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
