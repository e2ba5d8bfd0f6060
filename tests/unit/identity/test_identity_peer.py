"""Peer identity checks on leaf certificates (plait.proxy.peer_identity)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from plait.proxy.peer_identity import PeerRejected, check_peer, trust_domain_of

ME = "spiffe://plait.local/svc/frontend"


def leaf_der(
    uris: list[str], *, ca: bool = False, basic_constraints: bool = True, dns: bool = False
) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.now(UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
    )
    if basic_constraints:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    if dns:
        names.append(x509.DNSName("frontend.example"))
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_valid_leaf_gives_its_spiffe_id() -> None:
    assert check_peer(leaf_der([ME]), "plait.local") == ME
    assert check_peer(leaf_der([ME], dns=True), "plait.local") == ME  # other SAN types ok


@pytest.mark.parametrize(
    ("der", "reason"),
    [
        (None, "no certificate"),
        (b"junk", "does not parse"),
        (leaf_der([ME, "spiffe://plait.local/svc/batch"]), "2 URI SANs"),
        (leaf_der([]), "no subject alternative name"),
        (leaf_der([], dns=True), "0 URI SANs"),
        (leaf_der(["spiffe://evil.example/svc/frontend"]), "trust domain 'evil.example'"),
        (leaf_der(["spiffe://plait.local/ns/default/sa/x"]), "not a plait SPIFFE id"),
        (leaf_der(["https://plait.local/svc/frontend"]), "not a plait SPIFFE id"),
        (leaf_der([ME], ca=True), "CA=true"),
        (leaf_der([ME], basic_constraints=False), "no BasicConstraints"),
    ],
    ids=[
        "none", "garbage", "two-uri-sans", "no-san", "dns-only", "foreign-td", "bad-path",
        "not-spiffe", "ca-true", "no-basic-constraints",
    ],
)  # fmt: skip
def test_bad_leaves_are_rejected_with_a_reason(der: bytes | None, reason: str) -> None:
    verdict = check_peer(der, "plait.local")
    assert isinstance(verdict, PeerRejected)
    assert reason in verdict.reason


def test_expected_ids_on_the_outbound_side() -> None:
    der = leaf_der([ME])
    assert check_peer(der, "plait.local", (ME,)) == ME
    verdict = check_peer(der, "plait.local", ("spiffe://plait.local/svc/orders",))
    assert isinstance(verdict, PeerRejected) and "expected spiffe://plait.local/svc/orders" in (
        verdict.reason
    )


def test_trust_domain_of() -> None:
    assert trust_domain_of("spiffe://plait.local/") == "plait.local"
    assert trust_domain_of(ME) == "plait.local"
    assert trust_domain_of("https://x/") is None
    assert trust_domain_of("spiffe:///") is None
