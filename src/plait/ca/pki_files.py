"""The CA's files: PEM parsing helpers and the on-disk layout of a plait-managed CA.

``<data-dir>/ca/`` (mode 0700)::

    state.json                 trust domain, rotation state, issuer, bundle, last notAfter
    gen-<N>/root.crt           0644
    gen-<N>/root.key           0600 (PKCS#8, unencrypted: protect the directory)
    gen-<N>/intermediate.crt   0644
    gen-<N>/intermediate.key   0600

Every file is written atomically with :func:`plait.fsutil.write_atomic`: a new file gets
its final mode before the first byte (``fchmod``, so the umask cannot widen or narrow it),
is written, fsynced and renamed over the old one. Generations that are no longer part of
the CA (a retired root) are deleted when the CA is saved.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from plait.fsutil import write_atomic

STATE_FILE = "state.json"
STATE_FORMAT = 1
KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700
SHA256 = hashes.SHA256()

# (id, root cert, root key or None, intermediate cert, intermediate key)
GenerationFiles = tuple[
    int,
    x509.Certificate,
    ec.EllipticCurvePrivateKey | None,
    x509.Certificate,
    ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
]


class PkiFileError(ValueError):
    """A PEM file that is not what it should be; the message names the file."""


def public_der(obj: Any) -> bytes:
    """DER SubjectPublicKeyInfo of a certificate's or a private key's public key."""
    key = obj.public_key()
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def one_cert(data: bytes, what: str) -> x509.Certificate:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PkiFileError(f"{what}: not a PEM certificate ({exc})") from None
    if len(certs) != 1:
        raise PkiFileError(f"{what}: expected exactly one certificate, found {len(certs)}")
    return certs[0]


def issuer_key(data: bytes, what: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiFileError(f"{what}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise PkiFileError(f"{what}: the key must be EC or RSA, not {type(key).__name__}")
    return key


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _private_dir(path: str) -> None:
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    os.chmod(path, DIR_MODE)


def to_blobs(
    trust_domain: str, gens: list[GenerationFiles], state: dict[str, Any]
) -> tuple[bytes, dict[str, tuple[bytes, int]]]:
    """The saved form of a CA: state.json's bytes, and ``gen-<N>/<file>`` -> (bytes, mode)
    for every generation's files (the layout above; the etcd store uses the same names)."""
    files: dict[str, tuple[bytes, int]] = {}
    for gen_id, root, root_key, inter, inter_key in gens:
        base = f"gen-{gen_id}/"
        files[base + "root.crt"] = (cert_pem(root), CERT_MODE)
        files[base + "intermediate.crt"] = (cert_pem(inter), CERT_MODE)
        files[base + "intermediate.key"] = (key_pem(inter_key), KEY_MODE)
        if root_key is not None:
            files[base + "root.key"] = (key_pem(root_key), KEY_MODE)
    payload = {"format": STATE_FORMAT, "trust_domain": trust_domain, **state}
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    return text.encode(), files


def write(
    directory: str, trust_domain: str, gens: list[GenerationFiles], state: dict[str, Any]
) -> None:
    """Write every generation's missing files, then state.json; delete stale generations.

    Key and certificate files of a generation never change, so existing ones are kept."""
    _private_dir(directory)
    state_bytes, files = to_blobs(trust_domain, gens, state)
    keep = {name.split("/")[0] for name in files}
    for gen_dir in sorted(keep):
        _private_dir(os.path.join(directory, gen_dir))
    for name, (data, mode) in files.items():
        path = os.path.join(directory, *name.split("/"))
        if not os.path.exists(path):
            write_atomic(path, data, mode)
    write_atomic(os.path.join(directory, STATE_FILE), state_bytes, CERT_MODE)
    for entry in os.listdir(directory):
        if entry.startswith("gen-") and entry not in keep:
            shutil.rmtree(os.path.join(directory, entry), ignore_errors=True)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read(directory: str) -> tuple[str, list[GenerationFiles], dict[str, Any]]:
    """The trust domain, the generations and the raw state of a saved CA."""

    def blob(name: str) -> bytes | None:
        path = os.path.join(directory, *name.split("/"))
        return _read(path) if os.path.exists(path) else None

    return from_blobs(_read(os.path.join(directory, STATE_FILE)), blob, directory)


def from_blobs(
    state_bytes: bytes, blob: Callable[[str], bytes | None], where: str
) -> tuple[str, list[GenerationFiles], dict[str, Any]]:
    """The inverse of :func:`to_blobs`: ``blob(name)`` is a file's bytes (None: absent);
    ``where`` (a directory or an etcd prefix) names the files in errors."""
    raw = json.loads(state_bytes)
    if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
        raise PkiFileError(f"{where}/{STATE_FILE}: unknown format")
    ids = sorted({int(raw["issuer"]), *(int(i) for i in raw["bundle"])})

    def need(name: str) -> bytes:
        data = blob(name)
        if data is None:
            raise PkiFileError(f"{where}/{name}: missing")
        return data

    gens: list[GenerationFiles] = []
    for gen_id in ids:
        base = f"gen-{gen_id}"
        root_key = None
        root_key_data = blob(f"{base}/root.key")
        if root_key_data is not None:
            loaded = issuer_key(root_key_data, f"{where}/{base}/root.key")
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise PkiFileError(f"{where}/{base}/root.key: a plait root key is ECDSA")
            root_key = loaded
        gens.append(
            (
                gen_id,
                one_cert(need(f"{base}/root.crt"), f"{where}/{base}/root.crt"),
                root_key,
                one_cert(need(f"{base}/intermediate.crt"), f"{where}/{base}/intermediate.crt"),
                issuer_key(need(f"{base}/intermediate.key"), f"{where}/{base}/intermediate.key"),
            )
        )
    return str(raw["trust_domain"]), gens, raw
