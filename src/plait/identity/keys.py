"""The private key of one service identity: ECDSA P-256, made here, never sent.

:func:`load_or_create_key` returns the key stored at ``path`` or makes a new one and
stores it (PKCS#8 PEM, unencrypted, mode 0600, atomically). The key is kept across
renewals: each renewal sends a new CSR for the same key, so files handed to apps
(``plait identity``) never show a certificate with a key it does not match. Delete the
file to roll the key; the next renewal makes a new one.

A stored key that is not a P-256 EC key, or not readable, is refused (``KeyFileError``)
rather than silently replaced: a wrong file at that path is an operator problem to see.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from plait.fsutil import write_atomic
from plait.identity.files import ensure_private_dir

PrivateKey = ec.EllipticCurvePrivateKey


class KeyFileError(ValueError):
    """The key file exists but is not a usable P-256 private key."""


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes, where: str = "key") -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{where}: not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{where}: expected an ECDSA P-256 key")
    return key


def load_or_create_key(path: str | os.PathLike[str]) -> PrivateKey:
    """The key at ``path``, or a new one written there with mode 0600."""
    target = Path(path)
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        key = new_key()
        ensure_private_dir(target.parent)
        write_atomic(target, key_pem(key), 0o600)
        return key
    except OSError as exc:
        raise KeyFileError(f"{target}: cannot read the key: {exc}") from None
    mode = target.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(target, 0o600)  # tighten a key someone loosened
    return load_key(data, str(target))
