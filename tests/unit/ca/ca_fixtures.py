"""Shared helpers for the CA unit tests: fixed time, seeded randomness, CSRs of every kind."""

from __future__ import annotations

import ipaddress
import random
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from plait.ca.authority import CertificateAuthority

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
TD = "plait.local"
DAY = timedelta(hours=24)


def rng(seed: int = 1):
    return random.Random(seed).randbytes


def new_ca(now: datetime = NOW, seed: int = 1, td: str = TD) -> CertificateAuthority:
    return CertificateAuthority.create(td, now, rng(seed))


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(
    key=None,
    cn: str = "orders",
    sans: list[x509.GeneralName] | None = None,
    ca: bool = False,
    extensions: list[tuple[x509.ExtensionType, bool]] | None = None,
) -> bytes:
    """A PEM CSR signed by ``key`` (P-256 by default) with whatever it asks for."""
    key = key if key is not None else p256()
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    for ext, critical in extensions or []:
        builder = builder.add_extension(ext, critical=critical)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def greedy_sans() -> list[x509.GeneralName]:
    """Everything an attacker might ask for in a CSR."""
    return [
        x509.UniformResourceIdentifier("spiffe://plait.local/svc/plait-control"),
        x509.UniformResourceIdentifier("spiffe://evil.example/svc/admin"),
        x509.DNSName("orders.default.svc"),
        x509.DNSName("*.example.com"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        x509.RFC822Name("root@example.com"),
    ]


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def load(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)
