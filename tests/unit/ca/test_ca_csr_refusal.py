"""What the CA refuses to sign, and what it ignores in a CSR; and the token checks in
front of it (through :class:`~plait.control.ca_plane.CaPlane`, with the refusals in the
audit log)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from ca_fixtures import DAY, NOW, TD, greedy_sans, load, make_csr, new_ca, p256, rsa_key
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from plait.ca.audit import AuditLog
from plait.ca.authority import MAX_CSR_BYTES, CsrRefused
from plait.control.ca_plane import CaPlane, CaSetup, SignRefused
from plait.control.registry import Registry
from plait.control.store import Store


@pytest.fixture(scope="module")
def ca():
    return new_ca()


def refused(ca, csr: bytes, service: str = "orders") -> str:
    with pytest.raises(CsrRefused) as info:
        ca.sign_csr(csr, service, NOW, DAY)
    return info.value.reason


def test_rsa_key_is_refused(ca):
    assert "P-256" in refused(ca, make_csr(rsa_key())) and "RSA" in refused(ca, make_csr(rsa_key()))


def test_p384_key_is_refused(ca):
    reason = refused(ca, make_csr(ec.generate_private_key(ec.SECP384R1())))
    assert "P-256" in reason and "secp384r1" in reason


def test_ed25519_key_is_refused(ca):
    assert "P-256" in refused(ca, make_csr(ed25519.Ed25519PrivateKey.generate()))


def test_bad_signature_is_refused(ca):
    csr = x509.load_pem_x509_csr(make_csr())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last octet of the signature's s integer
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    assert "signature" in refused(ca, tampered)


def test_a_csr_signed_by_another_key_is_refused(ca):
    """The subject key and the signing key differ: proof of possession fails."""
    good = x509.load_pem_x509_csr(make_csr())
    for _ in range(100):  # ECDSA signatures vary in length; splice two of the same length
        other = x509.load_pem_x509_csr(make_csr())
        if len(other.signature) == len(good.signature):
            break
    der = good.public_bytes(serialization.Encoding.DER)
    spliced = der[: -len(good.signature)] + other.signature
    pem = x509.load_der_x509_csr(spliced).public_bytes(serialization.Encoding.PEM)
    assert "signature" in refused(ca, pem)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n",
        make_csr() + make_csr(),
        b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"A" * MAX_CSR_BYTES,
    ],
    ids=["empty", "text", "garbage", "two-csrs", "too-big"],
)
def test_malformed_input_is_refused(ca, data):
    refused(ca, data)


def test_a_certificate_is_not_a_csr(ca):
    out = ca.sign_csr(make_csr(), "orders", NOW, DAY)
    refused(ca, out.cert_pem)


@pytest.mark.parametrize("service", ["", "Orders", "-x", "a/b", "x" * 64, "a.b"])
def test_invalid_service_name_is_refused(ca, service):
    assert "service name" in refused(ca, make_csr(), service)


def test_ca_true_and_extra_sans_are_ignored(ca):
    key = p256()
    csr = make_csr(
        key,
        cn="plait-control",
        sans=greedy_sans(),
        ca=True,
        extensions=[
            (
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=True,
                    key_encipherment=True,
                    data_encipherment=True,
                    key_agreement=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            ),
            (x509.OCSPNoCheck(), False),
        ],
    )
    leaf = load(ca.sign_csr(csr, "orders", NOW, DAY).cert_pem)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(f"spiffe://{TD}/svc/orders")]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign and not ku.crl_sign
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.OCSPNoCheck)
    assert leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "orders"


def test_expired_issuer_refuses(ca):
    late = ca.issuer.intermediate.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(CsrRefused, match="expired"):
        ca.sign_csr(make_csr(), "orders", late, DAY)


# -- tokens and peers in front of the CA (CaPlane) ----------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def plane(tmp_path):
    clock = Clock()
    store = Store(str(tmp_path / "data"))
    setup = CaSetup(new_ca(), AuditLog(str(tmp_path / "audit.jsonl")), None, DAY, rng=new_rng())
    cap = CaPlane(setup, store, Registry(), clock)
    cap.clock = clock  # type: ignore[attr-defined]
    cap.audit_path = tmp_path / "audit.jsonl"  # type: ignore[attr-defined]
    yield cap
    store.close()


def new_rng():
    import random

    return random.Random(9).randbytes


def audit(plane) -> list[dict]:
    return [json.loads(line) for line in plane.audit_path.read_text().splitlines()]


def sign_refused(plane, **kwargs) -> str:
    kwargs.setdefault("service", "orders")
    kwargs.setdefault("csr_pem", make_csr())
    with pytest.raises(SignRefused) as info:
        plane.sign(**kwargs)
    return info.value.reason


def test_unknown_token(plane):
    assert sign_refused(plane, token="plait-jt.0011223344556677.nope") == "token unknown"
    assert sign_refused(plane, token="garbage") == "token unknown"
    last = audit(plane)[-1]
    assert last["event"] == "refused" and last["reason"] == "token unknown"
    assert last["service"] == "orders" and last["auth"] == "token"


def test_right_id_wrong_secret_is_unknown(plane):
    _record, secret = plane.create_token("orders", timedelta(hours=1))
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    assert sign_refused(plane, token=forged) == "token unknown"
    assert "token_id" not in audit(plane)[-1]


def test_expired_token(plane):
    record, secret = plane.create_token("orders", timedelta(hours=1))
    plane.clock.now += 3600
    assert sign_refused(plane, token=secret) == "token expired"
    assert audit(plane)[-1]["token_id"] == record.id


def test_revoked_token(plane):
    record, secret = plane.create_token("orders", timedelta(hours=1))
    plane.revoke_token(record.id)
    assert sign_refused(plane, token=secret) == "token revoked"
    events = [e["event"] for e in audit(plane)]
    assert events == ["token_created", "token_revoked", "refused"]


def test_wrong_service_token(plane):
    _, secret = plane.create_token("orders", timedelta(hours=1))
    assert sign_refused(plane, service="payments", token=secret) == "token wrong service"


def test_no_credentials(plane):
    assert "join token" in sign_refused(plane)
    assert audit(plane)[-1]["auth"] == "none"


def test_good_token_then_bad_csr_is_audited(plane):
    record, secret = plane.create_token("orders", timedelta(hours=1))
    reason = sign_refused(plane, token=secret, csr_pem=make_csr(rsa_key()))
    assert "P-256" in reason
    last = audit(plane)[-1]
    assert last["event"] == "refused" and last["token_id"] == record.id


def test_good_token_issues_and_audits(plane):
    record, secret = plane.create_token("orders", timedelta(hours=1))
    out = plane.sign("orders", make_csr(), token=secret, node="host-a", peer="127.0.0.1:5")
    last = audit(plane)[-1]
    assert last["event"] == "issued"
    assert last["serial"] == format(out.serial, "x")
    assert last["token_id"] == record.id and last["node"] == "host-a"
    assert last["spiffe_id"] == "spiffe://plait.local/svc/orders"
    rows = plane.store.issued_certs()
    assert [(r["serial"], r["node"], r["auth"]) for r in rows] == [
        (format(out.serial, "x"), "host-a", "token")
    ]


def test_renewal_with_a_certificate(plane):
    _, secret = plane.create_token("orders", timedelta(hours=1))
    first = plane.sign("orders", make_csr(), token=secret)
    der = load(first.cert_pem)[0].public_bytes(serialization.Encoding.DER)
    again = plane.sign("orders", make_csr(), peer_cert=der)
    assert again.serial != first.serial
    assert audit(plane)[-1]["auth"] == "certificate"
    assert "'orders'" in sign_refused(plane, service="payments", peer_cert=der)
    plane.clock.now += 2 * 86400
    assert "not valid now" in sign_refused(plane, peer_cert=der)


def test_renewal_with_a_foreign_certificate(plane):
    other = new_ca(seed=3)
    leaf = load(other.sign_csr(make_csr(), "orders", NOW, DAY).cert_pem)[0]
    der = leaf.public_bytes(serialization.Encoding.DER)
    assert "not issued by this CA" in sign_refused(plane, peer_cert=der)
    assert "cannot be parsed" in sign_refused(plane, peer_cert=b"junk")


def test_reserved_service_gets_no_token(plane):
    with pytest.raises(ValueError, match="reserved"):
        plane.create_token("plait-control", timedelta(hours=1))
