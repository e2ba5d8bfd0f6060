"""plait.identity.pem_keys: PEM framing and P-256 private keys, against cryptography."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from x509_factory import keys, simple_cert

from plait.identity.pem_keys import DerError, der_to_pem, p256_spki, pem_blocks, read_private_key
from plait.identity.x509_reader import load_pem_certificates

DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


# -- PEM ------------------------------------------------------------------------------


def test_pem_blocks() -> None:
    a = simple_cert(["spiffe://a/svc/a"]).public_bytes(PEM)
    b = simple_cert(None, org="o").public_bytes(PEM)
    key = keys()["p256"].private_bytes(  # type: ignore[attr-defined]
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    certs = load_pem_certificates(a + key + b)
    assert [c.der for c in certs] == [
        x509.load_pem_x509_certificate(a).public_bytes(DER),
        x509.load_pem_x509_certificate(b).public_bytes(DER),
    ]
    assert load_pem_certificates(b"") == []
    assert [n for n, _ in pem_blocks(a + key)] == ["CERTIFICATE", "PRIVATE KEY"]
    with pytest.raises(DerError, match="base64"):
        load_pem_certificates(a.replace(b"\n", b"\n*", 2))
    with pytest.raises(DerError, match="END"):
        load_pem_certificates(a[:-30])
    with pytest.raises(DerError, match="ends with END"):
        load_pem_certificates(a.replace(b"END CERTIFICATE", b"END X509 CRL"))
    with pytest.raises(DerError):
        load_pem_certificates(a.replace(b"M", b"N", 3))  # base64 of something else


# -- private keys ---------------------------------------------------------------------


def pem_of(key: object, fmt: serialization.PrivateFormat, password: bytes | None = None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(PEM, fmt, enc)  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize(
    "fmt", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL]
)
def test_p256_private_keys_and_their_public_key(fmt: serialization.PrivateFormat) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    info = read_private_key(pem_of(key, fmt))
    assert info.spki == key.public_key().public_bytes(DER, SPKI)
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert p256_spki(point) == info.spki


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: pem_of(keys()["p384"], serialization.PrivateFormat.PKCS8), "P-256"),
        (lambda: pem_of(keys()["p384"], serialization.PrivateFormat.TraditionalOpenSSL), "P-256"),
        (lambda: pem_of(keys()["rsa"], serialization.PrivateFormat.PKCS8), "P-256"),
        (lambda: pem_of(keys()["rsa"], serialization.PrivateFormat.TraditionalOpenSSL), "RSA"),
        (lambda: pem_of(keys()["ed25519"], serialization.PrivateFormat.PKCS8), "P-256"),
        (lambda: pem_of(keys()["p256"], serialization.PrivateFormat.PKCS8, b"pw"), "ENCRYPTED"),
        (lambda: b"hello", "not a PEM private key"),
        (lambda: simple_cert(None).public_bytes(PEM), "not a PEM private key"),
        (lambda: 2 * pem_of(keys()["p256"], serialization.PrivateFormat.PKCS8), "more than one"),
    ],
    ids=["p384", "p384-sec1", "rsa", "rsa-pkcs1", "ed25519", "encrypted", "junk", "cert", "two"],
)
def test_other_keys_are_refused(make: object, message: str) -> None:
    with pytest.raises(DerError, match=message):
        read_private_key(make())  # type: ignore[operator]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_truncated_keys_are_a_clean_error(data: st.DataObject) -> None:
    pem = pem_of(keys()["p256"], serialization.PrivateFormat.PKCS8)
    ((_, der),) = pem_blocks(pem)
    cut = data.draw(st.integers(0, 2**20)) % len(der)
    with pytest.raises(DerError):
        read_private_key(der_to_pem(der[:cut], "PRIVATE KEY"))
