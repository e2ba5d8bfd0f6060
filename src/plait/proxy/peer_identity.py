"""Who is on the other end of a TLS connection: checks on the peer's leaf certificate.

Pure (DER bytes in, a SPIFFE id or a reason out). The TLS library has already verified
the chain against the trust bundle; these are the checks it cannot make (docs/mtls.md,
"Data path rules"):

1. there is a certificate at all;
2. it has exactly one URI SAN;
3. that URI is a plait SPIFFE id, ``spiffe://<td>/svc/<service>`` (:mod:`plait.ca.spiffe`);
4. its trust domain is ours;
5. it is a leaf: BasicConstraints present with CA=false;
6. when the caller expects particular ids (the outbound side: the destination's
   ``server_sans``), it is one of them.

:func:`check_peer` returns the SPIFFE id as text, or a :class:`PeerRejected` whose
``reason`` goes to the log and the counters; the caller closes the connection before
reading or writing any application byte.

``cryptography`` is imported on the first certificate checked, not with the module: the
data plane imports this module, and a plaintext proxy does without it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from plait.ca.spiffe import SCHEME, InvalidSpiffeId, SpiffeId


@dataclass(frozen=True)
class PeerRejected:
    reason: str


def trust_domain_of(text: str) -> str | None:
    """The trust domain in ``spiffe://td/...`` or ``spiffe://td/`` (a SAN prefix)."""
    if not text.startswith(SCHEME):
        return None
    td = text[len(SCHEME) :].split("/", 1)[0]
    return td or None


def check_peer(
    der: bytes | None,
    trust_domain: str | None,
    expected: Collection[str] | None = None,
) -> str | PeerRejected:
    """The peer's SPIFFE id if ``der`` passes every check above, else why not.

    ``trust_domain`` None skips check 4 (only when the caller has none configured);
    ``expected`` None or empty skips check 6.
    """
    if not der:
        return PeerRejected("the peer presented no certificate")
    # imported here: a proxy without TLS peers never loads cryptography (docs/internals.md)
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        return PeerRejected(f"the peer certificate does not parse: {exc}")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return PeerRejected("the peer certificate has no BasicConstraints (a leaf needs CA=false)")
    except ValueError as exc:
        return PeerRejected(f"the peer certificate has malformed extensions: {exc}")
    if constraints.ca:
        return PeerRejected("the peer certificate is a CA certificate (CA=true), not a leaf")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return PeerRejected("the peer certificate has no subject alternative name")
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        return PeerRejected(f"the peer certificate has {len(uris)} URI SANs, expected exactly 1")
    uri = uris[0]
    try:
        spiffe = SpiffeId.parse(uri)
    except InvalidSpiffeId as exc:
        return PeerRejected(f"the peer's URI SAN is not a plait SPIFFE id: {exc}")
    if trust_domain is not None and spiffe.trust_domain != trust_domain:
        return PeerRejected(
            f"the peer {uri} is in trust domain {spiffe.trust_domain!r}, not ours "
            f"({trust_domain!r})"
        )
    if expected and uri not in expected:
        wanted = ", ".join(sorted(expected))
        return PeerRejected(f"the peer presented {uri}, expected {wanted}")
    return uri
