"""PEM framing and ECDSA P-256 private keys: a small, strict reader (pure, no I/O).

What the proxy and the key child (:mod:`plait.identity.keygen`) need without
``cryptography``: the blocks of a PEM text (:func:`pem_blocks`, :func:`der_to_pem`), and
the one private key of a key file (:func:`read_private_key`: PKCS#8 ``PRIVATE KEY`` or
SEC1 ``EC PRIVATE KEY``, unencrypted, P-256), with its public key when the file carries
it. Structure only, read as strict DER by :mod:`plait.identity.der`: the key itself is
used, and fully checked, by OpenSSL. Anything else raises
:class:`~plait.identity.der.DerError` saying what is wrong. Certificates are
:mod:`plait.identity.x509_reader`.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from plait.identity.der import (
    BIT_STRING,
    INTEGER,
    OCTET_STRING,
    OID,
    SEQUENCE,
    DerError,
    DerReader,
    read_bit_string,
    read_integer,
    read_oid,
    sub_reader,
)

__all__ = [
    "DerError",
    "PrivateKeyInfo",
    "der_to_pem",
    "p256_spki",
    "pem_blocks",
    "read_private_key",
]

OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END ([A-Z0-9 ]+)-----", re.DOTALL
)
_B64 = re.compile(rb"[A-Za-z0-9+/=\s]*")
# the DER prefix of a P-256 SubjectPublicKeyInfo, up to the 65-byte uncompressed point
_P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")


# -- PEM ------------------------------------------------------------------------------


def pem_blocks(pem: bytes, label: str | None = None) -> list[tuple[str, bytes]]:
    """``(label, DER)`` for each PEM block in ``pem`` (only ``label``'s when given).

    Text between blocks is ignored (as OpenSSL does); a block that is not clean base64,
    or whose END line does not match its BEGIN line, raises :class:`DerError`."""
    out: list[tuple[str, bytes]] = []
    matches = list(_PEM_BLOCK.finditer(pem))
    if len(matches) != pem.count(b"-----BEGIN "):
        raise DerError("a PEM block without its END line (truncated PEM)")
    for m in matches:
        begin, body, end = m.group(1), m.group(2), m.group(3)
        if begin != end:
            raise DerError(f"PEM block BEGIN {begin.decode()} ends with END {end.decode()}")
        name = begin.decode("ascii")
        if label is not None and name != label:
            continue
        if not _B64.fullmatch(body):
            raise DerError(f"PEM block {name}: not base64")
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            raise DerError(f"PEM block {name}: not valid base64") from None
        if not der:
            raise DerError(f"PEM block {name}: empty")
        out.append((name, der))
    return out


def der_to_pem(der: bytes, label: str = "CERTIFICATE") -> bytes:
    """PEM text for ``der`` (64-character lines, as OpenSSL and cryptography write it)."""
    b64 = base64.b64encode(der)
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    head = f"-----BEGIN {label}-----\n".encode("ascii")
    tail = f"-----END {label}-----\n".encode("ascii")
    return head + b"\n".join(lines) + b"\n" + tail


# -- private keys ---------------------------------------------------------------------


@dataclass(frozen=True)
class PrivateKeyInfo:
    """An ECDSA P-256 private key as stored: its PEM, and its public key when the file
    carries it (``spki``: the SubjectPublicKeyInfo DER of the uncompressed point)."""

    pem: bytes
    spki: bytes | None


def p256_spki(point: bytes) -> bytes:
    """The SubjectPublicKeyInfo DER for an uncompressed P-256 point (65 bytes, 04||X||Y)."""
    if len(point) != 65 or point[0] != 0x04:
        raise DerError("a P-256 public key is 65 bytes starting with 04 (uncompressed)")
    return _P256_SPKI_PREFIX + point


_P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")


def _ec_private_key(content: bytes, curve_params: bytes | None, what: str) -> bytes | None:
    """An ECPrivateKey (RFC 5915); its public point or None. ``curve_params`` is the
    curve from the PKCS#8 wrapper (None for a bare SEC1 key, which must name it)."""
    r = sub_reader(content, what)
    if read_integer(r.expect(INTEGER, "version"), what) != 1:
        raise DerError(f"{what}: ECPrivateKey version must be 1")
    scalar = r.expect(OCTET_STRING, "privateKey (OCTET STRING)")
    if not 1 <= len(scalar) <= 32 or not any(scalar):
        raise DerError(f"{what}: not a P-256 private key (bad length)")
    params: bytes | None = None
    if r.peek() == 0xA0:
        pr = sub_reader(r.expect(0xA0, "parameters [0]"), what)
        _, _, params = pr.read()
        pr.done()
    point: bytes | None = None
    if r.peek() == 0xA1:
        pk = sub_reader(r.expect(0xA1, "publicKey [1]"), what)
        point = read_bit_string(pk.expect(BIT_STRING, "publicKey (BIT STRING)"), what)
        pk.done()
    r.done()
    curve = params if params is not None else curve_params
    if curve != _P256_PARAMS or (curve_params is not None and curve != curve_params):
        raise DerError(f"{what}: expected an ECDSA P-256 key")
    if point is not None and (len(point) != 65 or point[0] != 0x04):
        return None  # compressed or odd: the public key is not known here
    return point


def read_private_key(pem: bytes, what: str = "key") -> PrivateKeyInfo:
    """The one private key in ``pem``: PKCS#8 ``PRIVATE KEY`` or SEC1 ``EC PRIVATE KEY``,
    unencrypted, ECDSA P-256; :class:`DerError` otherwise. This checks the structure;
    the key itself is used (and fully checked) by OpenSSL."""
    blocks = [(n, d) for n, d in pem_blocks(pem) if "PRIVATE KEY" in n]
    if not blocks:
        raise DerError(f"{what}: not a PEM private key: no PRIVATE KEY block in it")
    if len(blocks) > 1:
        raise DerError(f"{what}: more than one private key in it")
    name, der = blocks[0]
    if name == "EC PRIVATE KEY":
        point = _ec_private_key(_one(der, what), None, what)
    elif name == "PRIVATE KEY":
        r = sub_reader(_one(der, what), what)
        if read_integer(r.expect(INTEGER, "version"), what) not in (0, 1):
            raise DerError(f"{what}: unknown PKCS#8 version")
        alg_r = sub_reader(r.expect(SEQUENCE, "privateKeyAlgorithm"), what)
        alg = read_oid(alg_r.expect(OID, "an algorithm OBJECT IDENTIFIER"), what)
        if alg != OID_EC_PUBLIC_KEY:
            raise DerError(f"{what}: expected an ECDSA P-256 key (algorithm {alg})")
        _, _, params = alg_r.read()
        alg_r.done()
        point = _ec_private_key(_one(r.expect(OCTET_STRING, "privateKey"), what), params, what)
        while not r.at_end():  # attributes [0], publicKey [1] (v2): not needed
            tag, _, _ = r.read()
            if tag not in (0xA0, 0x81, 0xA1):
                raise DerError(f"{what}: unexpected PKCS#8 field (tag 0x{tag:02x})")
    else:
        raise DerError(f"{what}: {name} is not supported (an unencrypted P-256 key is)")
    return PrivateKeyInfo(pem=pem, spki=None if point is None else p256_spki(point))


def _one(der: bytes, what: str) -> bytes:
    r = DerReader(der, what)
    content = r.expect(SEQUENCE, "SEQUENCE")
    r.done()
    return content
