"""Keys and CSRs made by the key child (plait.identity.keygen), for real: the child process
runs, the parent never imports cryptography for it; and how the manager uses them
(plait.identity.keys, IdentityManager.load_stored)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from plait.identity import keygen
from plait.identity.keygen import KeygenError, make_csr, parse_answer
from plait.identity.keys import KeyFileError, read_key, store_key
from plait.identity.manager import IdentityManager

SPIFFE = "spiffe://plait.local/svc/orders"
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
DER = serialization.Encoding.DER


def pkcs8(key: object, password: bytes | None = None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc
    )


def test_a_new_key_and_its_csr_come_from_the_child() -> None:
    made = asyncio.run(make_csr(SPIFFE, None))
    assert made.created
    key = serialization.load_pem_private_key(made.key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert made.spki == key.public_key().public_bytes(DER, SPKI)
    csr = x509.load_pem_x509_csr(made.csr_pem)
    assert csr.is_signature_valid
    assert csr.public_key().public_bytes(DER, SPKI) == made.spki
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE]
    cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["orders"]


def test_an_existing_key_signs_the_csr() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    made = asyncio.run(make_csr(SPIFFE, pkcs8(key)))
    assert not made.created
    assert made.key_pem == pkcs8(key)
    csr = x509.load_pem_x509_csr(made.csr_pem)
    assert csr.public_key().public_bytes(DER, SPKI) == key.public_key().public_bytes(DER, SPKI)


@pytest.mark.parametrize(
    ("key_pem", "message"),
    [
        (lambda: pkcs8(ec.generate_private_key(ec.SECP384R1())), "P-256"),
        (lambda: pkcs8(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "P-256"),
        (lambda: pkcs8(ec.generate_private_key(ec.SECP256R1()), b"pw"), "not a PEM private key"),
        (lambda: b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "PEM"),
    ],
    ids=["p384", "rsa", "encrypted", "garbage"],
)
def test_the_child_refuses_bad_keys_with_a_clear_error(key_pem: object, message: str) -> None:
    with pytest.raises(KeygenError, match=f"the key child failed: .*{message}"):
        asyncio.run(make_csr(SPIFFE, key_pem()))  # type: ignore[operator]


def test_the_child_refuses_a_bad_spiffe_id() -> None:
    with pytest.raises(KeygenError, match="does not start with 'spiffe://'"):
        asyncio.run(make_csr("https://x/svc/a", None))


def test_the_child_speaks_json_on_its_pipes() -> None:
    # what make_csr runs, by hand: the key never appears in argv
    cmd = keygen.child_command()
    assert cmd[-2:] == ["-m", "plait.identity.keygen"] and "-P" in cmd
    r = subprocess.run(
        cmd, input=json.dumps({"spiffe_id": SPIFFE, "key_pem": None}).encode(),
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert set(answer) == {"key_pem", "public_key", "csr_pem"}
    bad = subprocess.run(cmd, input=b"not json", capture_output=True, timeout=60)
    assert bad.returncode == 1 and "error" in json.loads(bad.stdout)


def test_a_child_that_dies_or_hangs_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        keygen, "child_command", lambda: [sys.executable, "-c", "import sys; sys.exit('boom')"]
    )
    with pytest.raises(KeygenError, match=r"exit status 1\): boom"):
        asyncio.run(make_csr(SPIFFE, None))
    monkeypatch.setattr(
        keygen, "child_command", lambda: [sys.executable, "-c", "import time; time.sleep(30)"]
    )
    with pytest.raises(KeygenError, match=r"did not answer within 0\.5s"):
        asyncio.run(make_csr(SPIFFE, None, timeout=0.5))


def test_answers_are_checked() -> None:
    made = asyncio.run(make_csr(SPIFFE, None))
    good = {
        "key_pem": made.key_pem.decode(),
        "public_key": __import__("base64").b64encode(made.spki).decode(),
        "csr_pem": made.csr_pem.decode(),
    }
    assert parse_answer(0, json.dumps(good).encode(), b"", None).spki == made.spki
    other = ec.generate_private_key(ec.SECP256R1())
    for bad, message in [
        ({**good, "public_key": "AAAA"}, "not its key's"),
        ({**good, "csr_pem": "nope"}, "CERTIFICATE REQUEST"),
        ({**good, "key_pem": "nope"}, "unexpected"),
        ({"key_pem": good["key_pem"]}, "unexpected"),
    ]:
        with pytest.raises(KeygenError, match=message):
            parse_answer(0, json.dumps(bad).encode(), b"", None)
    with pytest.raises(KeygenError, match="another key than the one given"):
        parse_answer(0, json.dumps(good).encode(), b"", pkcs8(other))
    with pytest.raises(KeygenError, match="failed: nope"):
        parse_answer(1, b'{"error": "nope"}', b"", None)


# -- key files ------------------------------------------------------------------------


def test_store_and_read_key(tmp_path: Path) -> None:
    made = asyncio.run(make_csr(SPIFFE, None))
    path = tmp_path / "id" / "key.pem"
    assert read_key(path) is None
    info = store_key(path, made.key_pem)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert info.spki == made.spki
    os.chmod(path, 0o644)
    again = read_key(path)
    assert again is not None and again.pem == made.key_pem and again.spki == made.spki
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # tightened
    path.write_bytes(pkcs8(ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(KeyFileError, match="P-256"):
        read_key(path)


# -- the manager: reusing a stored certificate ----------------------------------------


def issue(key_spki_from: ec.EllipticCurvePrivateKey, ca: ec.EllipticCurvePrivateKey) -> bytes:
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "plait.local")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(name)
        .public_key(key_spki_from.public_key())
        .serial_number(0xABC)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SPIFFE)]), False)
        .sign(ca, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def root_pem(ca: ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "plait.local")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(ca, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def manager(tmp_path: Path) -> IdentityManager:
    return IdentityManager("https://127.0.0.1:1", "orders", "t", tmp_path / "id")


def test_no_key_yet_means_nothing_stored_and_no_key_made(tmp_path: Path) -> None:
    m = manager(tmp_path)
    assert m.load_stored() is None
    assert not (tmp_path / "id" / "key.pem").exists()  # the first issue makes it (child)


def test_a_stored_certificate_for_the_stored_key_is_reused(tmp_path: Path) -> None:
    ca = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    d = tmp_path / "id"
    store_key(d / "key.pem", pkcs8(key))
    (d / "cert.pem").write_bytes(issue(key, ca))
    (d / "bundle.pem").write_bytes(root_pem(ca))
    ident = manager(tmp_path).load_stored()
    assert ident is not None
    assert ident.spiffe_id == SPIFFE and ident.serial == "abc"
    assert ident.key_pem == pkcs8(key)
    assert ident.not_after > datetime.now(UTC)


def test_a_stored_certificate_for_another_key_is_not_reused(tmp_path: Path) -> None:
    ca = ec.generate_private_key(ec.SECP256R1())
    d = tmp_path / "id"
    store_key(d / "key.pem", pkcs8(ec.generate_private_key(ec.SECP256R1())))
    (d / "cert.pem").write_bytes(issue(ec.generate_private_key(ec.SECP256R1()), ca))
    (d / "bundle.pem").write_bytes(root_pem(ca))
    assert manager(tmp_path).load_stored() is None


def test_trust_domain_from_the_roots_organization(tmp_path: Path) -> None:
    ca = ec.generate_private_key(ec.SECP256R1())
    assert manager(tmp_path)._trust_domain_from(root_pem(ca)) == "plait.local"
