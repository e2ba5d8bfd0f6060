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

The certificate is read by :mod:`plait.identity.x509_reader` (strict DER; a certificate
it cannot read is refused), not by ``cryptography``, which the proxy process never
imports (docs/internals.md, "Memory"). The reader is imported with this module, at the
proxy's start: imported later (with the first identity) its compilation left the heap
about 0.4 MB larger under load in the mTLS benchmark.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache

from plait.ca.spiffe import SCHEME, InvalidSpiffeId, SpiffeId
from plait.identity.x509_reader import DerError, read_certificate


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
    facts = _leaf_facts(bytes(der))
    if isinstance(facts, PeerRejected):
        return facts
    uris = facts
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


@lru_cache(maxsize=64)
def _leaf_facts(der: bytes) -> tuple[str, ...] | PeerRejected:
    """Checks 2 and 5 on ``der``: its URI SANs, or why it is refused. A pure function of
    the bytes, so cached: a peer presents the same certificate on every connection until
    it renews (64 certificates, about 64 KB at most)."""
    try:
        cert = read_certificate(der)
    except DerError as exc:
        return PeerRejected(f"the peer certificate does not parse: {exc}")
    try:
        constraints = cert.basic_constraints()
    except DerError as exc:
        return PeerRejected(f"the peer certificate has malformed extensions: {exc}")
    if constraints is None:
        return PeerRejected("the peer certificate has no BasicConstraints (a leaf needs CA=false)")
    if constraints.ca:
        return PeerRejected("the peer certificate is a CA certificate (CA=true), not a leaf")
    try:
        uris = cert.uri_sans()
    except DerError as exc:
        return PeerRejected(f"the peer certificate has malformed extensions: {exc}")
    if uris is None:
        return PeerRejected("the peer certificate has no subject alternative name")
    if len(uris) != 1:
        return PeerRejected(f"the peer certificate has {len(uris)} URI SANs, expected exactly 1")
    return tuple(uris)
