"""The private key of one service identity: ECDSA P-256, made on this host, never sent.

The key is made by a short-lived child process (:mod:`plait.identity.keygen`, which also
signs the CSRs with it) and handed back over a pipe; this module only stores and reads it,
so the proxy process never imports ``cryptography`` (docs/internals.md, "Memory").

:func:`store_key` writes it (PKCS#8 PEM, unencrypted, mode 0600 from the first byte,
atomically); :func:`read_key` returns the stored key, or None when there is none yet.
The key is kept across renewals: each renewal sends a new CSR for the same key, so files
handed to apps (``plait identity``) never show a certificate with a key it does not
match. Delete the file to roll the key; the next renewal makes a new one.

A stored key that is not an unencrypted P-256 EC key, or not readable, is refused
(``KeyFileError``) rather than silently replaced: a wrong file at that path is an
operator problem to see. The structure is checked here (:mod:`plait.identity.x509_reader`);
the key child checks the key itself with OpenSSL whenever it signs a CSR.
"""

from __future__ import annotations

import os
from pathlib import Path

from plait.fsutil import write_atomic
from plait.identity.files import ensure_private_dir
from plait.identity.pem_keys import DerError, PrivateKeyInfo, read_private_key

__all__ = ["KeyFileError", "PrivateKeyInfo", "load_key", "read_key", "store_key"]


class KeyFileError(ValueError):
    """The key file exists but is not a usable P-256 private key."""


def load_key(pem: bytes, where: str = "key") -> PrivateKeyInfo:
    """``pem`` checked to be one unencrypted ECDSA P-256 private key."""
    try:
        return read_private_key(pem, where)
    except DerError as exc:
        raise KeyFileError(str(exc)) from None


def read_key(path: str | os.PathLike[str]) -> PrivateKeyInfo | None:
    """The key stored at ``path`` (its mode tightened to 0600), or None if there is none."""
    target = Path(path)
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"{target}: cannot read the key: {exc}") from None
    mode = target.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(target, 0o600)  # tighten a key someone loosened
    return load_key(data, str(target))


def store_key(path: str | os.PathLike[str], pem: bytes) -> PrivateKeyInfo:
    """Write a new key at ``path`` (0600, atomically, in a 0700 directory if made here)."""
    key = load_key(pem, "the new key")
    target = Path(path)
    ensure_private_dir(target.parent)
    write_atomic(target, pem, 0o600)
    return key
