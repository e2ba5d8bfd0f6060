"""Every point of the leaf profile (docs/security.md), checked on issued certificates
parsed back with cryptography; and the root and intermediate profiles."""

from __future__ import annotations

from datetime import timedelta

import pytest
from ca_fixtures import DAY, NOW, TD, load, make_csr, new_ca, p256
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from plait.ca.authority import CertificateAuthority
from plait.ca.profile import (
    CLOCK_SKEW,
    SERIAL_BITS,
    is_expiring,
    random_serial,
    renew_at,
)
from plait.ca.spiffe import SpiffeId

LEAF_EXTENSIONS = {
    x509.BasicConstraints,
    x509.KeyUsage,
    x509.ExtendedKeyUsage,
    x509.SubjectAlternativeName,
    x509.SubjectKeyIdentifier,
    x509.AuthorityKeyIdentifier,
}


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return new_ca()


@pytest.fixture(scope="module")
def issued(ca):
    key = p256()
    return key, ca.sign_csr(make_csr(key), "orders", NOW, DAY)


def ext(cert: x509.Certificate, kind):
    return cert.extensions.get_extension_for_class(kind)


def test_chain_is_leaf_then_intermediate(ca, issued):
    _, out = issued
    leaf, inter = load(out.chain_pem)
    assert load(out.cert_pem) == [leaf]
    assert inter == ca.issuer.intermediate
    assert leaf.issuer == inter.subject
    leaf.verify_directly_issued_by(inter)
    assert leaf.version is x509.Version.v3
    assert leaf.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256


def test_key_is_the_csr_key_and_p256(issued):
    key, out = issued
    leaf = load(out.cert_pem)[0]
    pub = leaf.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert isinstance(pub.curve, ec.SECP256R1)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert pub.public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def test_exactly_one_san_the_spiffe_uri(issued):
    _, out = issued
    leaf = load(out.cert_pem)[0]
    san = ext(leaf, x509.SubjectAlternativeName)
    assert list(san.value) == [x509.UniformResourceIdentifier(f"spiffe://{TD}/svc/orders")]
    assert out.spiffe_id == SpiffeId(TD, "orders")


def test_basic_constraints_and_key_usage_are_critical(issued):
    leaf = load(issued[1].cert_pem)[0]
    bc = ext(leaf, x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False and bc.value.path_length is None
    ku = ext(leaf, x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    for other in (
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
    ):
        assert getattr(ku.value, other) is False, other


def test_eku_server_and_client_auth(issued):
    leaf = load(issued[1].cert_pem)[0]
    eku = ext(leaf, x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def test_ski_and_aki(ca, issued):
    leaf = load(issued[1].cert_pem)[0]
    ski = ext(leaf, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    aki = ext(leaf, x509.AuthorityKeyIdentifier).value
    issuer_ski = ext(ca.issuer.intermediate, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == issuer_ski.digest


def test_no_other_extensions(issued):
    leaf = load(issued[1].cert_pem)[0]
    assert {type(e.value) for e in leaf.extensions} == LEAF_EXTENSIONS
    assert len(leaf.extensions) == len(LEAF_EXTENSIONS)


def test_subject_is_just_the_service_name(issued):
    leaf = load(issued[1].cert_pem)[0]
    assert [(a.oid, a.value) for a in leaf.subject] == [(NameOID.COMMON_NAME, "orders")]


def test_validity_has_clock_skew_and_default_lifetime(issued):
    _, out = issued
    leaf = load(out.cert_pem)[0]
    assert timedelta(seconds=60) == CLOCK_SKEW
    assert leaf.not_valid_before_utc == NOW - timedelta(seconds=60)
    assert leaf.not_valid_after_utc == NOW + timedelta(hours=24)
    assert (out.not_before, out.not_after) == (leaf.not_valid_before_utc, leaf.not_valid_after_utc)


def test_lifetime_is_capped_by_the_issuer(ca):
    end = ca.issuer.intermediate.not_valid_after_utc
    out = ca.sign_csr(make_csr(), "orders", end - timedelta(hours=1), DAY)
    assert out.not_after == end


def test_serial_is_random_159_bits_from_the_injected_rng():
    calls = []

    def rng(n: int) -> bytes:
        data = bytes([0xFF] * n)
        calls.append(n)
        return data

    assert random_serial(rng) == 2**SERIAL_BITS - 1
    assert calls == [20]
    ca = CertificateAuthority.create(TD, NOW, rng)
    leaf = load(ca.sign_csr(make_csr(), "orders", NOW, DAY).cert_pem)[0]
    assert leaf.serial_number == 2**159 - 1
    assert 0 < leaf.serial_number < 2**159
    # 20 DER octets at most: positive, so the top bit of the first octet is clear
    assert len(leaf.serial_number.to_bytes(20, "big")) == 20


def test_serials_differ_and_are_reproducible():
    import random

    a = [random_serial(random.Random(5).randbytes) for _ in range(2)]
    assert a[0] == a[1]
    r = random.Random(5).randbytes
    assert random_serial(r) != random_serial(r)


def test_zero_serial_is_never_used():
    outputs = iter([bytes(20), bytes(19) + b"\x02"])
    assert random_serial(lambda n: next(outputs)) == 1


def test_root_profile(ca):
    root = ca.issuer.root
    assert root.issuer == root.subject
    root.verify_directly_issued_by(root)
    bc = ext(root, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 1
    ku = ext(root, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(root.public_key().curve, ec.SECP256R1)
    lifetime = root.not_valid_after_utc - root.not_valid_before_utc
    assert timedelta(days=3650) <= lifetime <= timedelta(days=3650, seconds=60)
    ext(root, x509.SubjectKeyIdentifier)
    ext(root, x509.AuthorityKeyIdentifier)


def test_intermediate_profile(ca):
    inter, root = ca.issuer.intermediate, ca.issuer.root
    inter.verify_directly_issued_by(root)
    bc = ext(inter, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ext(inter, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    lifetime = inter.not_valid_after_utc - inter.not_valid_before_utc
    assert timedelta(days=365) <= lifetime <= timedelta(days=365, seconds=60)
    aki = ext(inter, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(root, x509.SubjectKeyIdentifier).value.digest
    assert inter.signature_hash_algorithm.name == hashes.SHA256().name


def test_renewal_at_half_life_and_expiring_at_a_quarter():
    start = NOW
    end = NOW + timedelta(hours=24)
    assert renew_at(start, end) == NOW + timedelta(hours=12)
    assert not is_expiring(start, end, NOW + timedelta(hours=17))
    assert not is_expiring(start, end, NOW + timedelta(hours=18))
    assert is_expiring(start, end, NOW + timedelta(hours=18, seconds=1))
    assert is_expiring(start, end, end)


def test_lifetime_must_be_positive(ca):
    with pytest.raises(ValueError):
        ca.sign_csr(make_csr(), "orders", NOW, timedelta(0))
