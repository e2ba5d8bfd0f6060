"""Certificates and keys made with cryptography, for the reader tests (the oracle).

Shared by test_x509_reader.py and test_pem_keys.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID


@cache
def keys() -> dict[str, object]:
    return {
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


def sign(builder: x509.CertificateBuilder, key: object) -> x509.Certificate:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)  # type: ignore[arg-type]


def simple_cert(
    uris: list[str] | None = None,
    *,
    ca: bool | None = False,
    org: str | None = None,
    extra: list[x509.ExtensionType] | None = None,
) -> x509.Certificate:
    key = keys()["p256"]
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, "t")]
    if org is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    name = x509.Name(attrs)
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(0x1234)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
    )
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if uris is not None:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    for ext in extra or []:
        b = b.add_extension(ext, critical=False)
    return sign(b, key)
