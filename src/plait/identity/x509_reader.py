"""A small, strict reader of DER X.509 certificates (pure, no I/O).

The proxy needs only a few facts from certificates: validity dates, the serial, the
subject's O=, the public key, BasicConstraints and the URI SANs (peer checks,
:mod:`plait.proxy.peer_identity`; certificate bookkeeping, :mod:`plait.identity.manager`;
bundle de-duplication, :mod:`plait.proxy.tls`). Reading them here keeps ``cryptography``
(about 9 MB resident) out of the proxy process (docs/internals.md, "Memory"). Nothing
here verifies a signature: chains are verified by OpenSSL (the ``ssl`` module) before
any of this is asked.

Strict DER only (read by :mod:`plait.identity.der`); anything else raises
:class:`DerError` (a ``ValueError``) saying what is wrong and where, never a crash and
never a half-read certificate:

- one-byte tags, definite minimal lengths, no trailing bytes at any level;
- INTEGERs minimally encoded, BOOLEANs ``00``/``FF``, BIT STRINGs with zero padding;
  DEFAULT values (``critical FALSE``, ``cA FALSE``, version v1) must be omitted;
- a certificate is v1 (no version, no extensions) or v3; the inner and outer signature
  algorithms are the same; no duplicate extension; UTCTime/GeneralizedTime in the
  RFC 5280 form ``...SSZ``; names and SANs with known tags and well-formed strings.

Entry points: :func:`read_certificate` (DER) and :func:`load_pem_certificates` (PEM
text). PEM framing and private keys are :mod:`plait.identity.pem_keys`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from plait.identity.der import (
    BIT_STRING,
    BMP_STRING,
    BOOLEAN,
    IA5_STRING,
    INTEGER,
    NUMERIC_STRING,
    OCTET_STRING,
    OID,
    PRINTABLE_STRING,
    SEQUENCE,
    SET,
    T61_STRING,
    UNIVERSAL_STRING,
    UTF8_STRING,
    VISIBLE_STRING,
    DerError,
    DerReader,
    check_named_bits,
    check_nesting,
    read_ascii,
    read_bit_string,
    read_boolean,
    read_integer,
    read_oid,
    read_string,
    read_time,
    sub_reader,
)
from plait.identity.pem_keys import OID_EC_PUBLIC_KEY, pem_blocks

__all__ = [
    "BasicConstraints",
    "Certificate",
    "DerError",
    "Extension",
    "load_pem_certificates",
    "read_certificate",
]

# object identifiers (dotted)
OID_BASIC_CONSTRAINTS = "2.5.29.19"
OID_SUBJECT_ALT_NAME = "2.5.29.17"
OID_ORGANIZATION = "2.5.4.10"
OID_COMMON_NAME = "2.5.4.3"
OID_P256 = "1.2.840.10045.3.1.7"

SAN_URI = 0x86  # uniformResourceIdentifier [6] IMPLICIT IA5String

_NULL = b"\x05\x00"
# The algorithms a certificate may use, with their parameters: "oid" a named curve, "null"
# NULL, "none" absent, "null?" NULL or absent, "seq" a SEQUENCE (RSASSA-PSS). Anything
# else is refused: plait's CAs sign with ECDSA (or RSA for an operator's own CA).
_KEY_ALGORITHMS = {
    OID_EC_PUBLIC_KEY: "oid",
    "1.2.840.113549.1.1.1": "null",  # rsaEncryption
    "1.2.840.113549.1.1.10": "seq?",  # RSASSA-PSS
    "1.3.101.112": "none",  # Ed25519
    "1.3.101.113": "none",  # Ed448
}
_SIGNATURE_ALGORITHMS = {
    "1.2.840.113549.1.1.5": "null?",  # sha1WithRSAEncryption
    "1.2.840.113549.1.1.11": "null?",  # sha256WithRSAEncryption .. sha512, sha224
    "1.2.840.113549.1.1.12": "null?",
    "1.2.840.113549.1.1.13": "null?",
    "1.2.840.113549.1.1.14": "null?",
    "1.2.840.113549.1.1.10": "seq",  # RSASSA-PSS
    "1.2.840.10045.4.1": "none",  # ecdsa-with-SHA1
    "1.2.840.10045.4.3.1": "none",  # ecdsa-with-SHA224 .. SHA512
    "1.2.840.10045.4.3.2": "none",
    "1.2.840.10045.4.3.3": "none",
    "1.2.840.10045.4.3.4": "none",
    "1.3.101.112": "none",  # Ed25519
    "1.3.101.113": "none",  # Ed448
}


_CURVES = frozenset(
    (OID_P256, "1.3.132.0.33", "1.3.132.0.34", "1.3.132.0.35", "1.3.132.0.10")
)  # P-256, P-224, P-384, P-521, secp256k1


def _algorithm(content: bytes, what: str, known: dict[str, str]) -> tuple[str, bytes]:
    """An AlgorithmIdentifier of ``known``: its OID and its parameters' TLV (b"" when
    absent)."""
    r = sub_reader(content, what)
    oid = read_oid(r.expect(OID, "an algorithm OBJECT IDENTIFIER"), what)
    params = b""
    tag = 0
    value = b""
    if not r.at_end():
        tag, value, params = r.read()
        if tag & 0x20:
            check_nesting(value, what)
    r.done()
    kind = known.get(oid)
    if kind is None:
        raise DerError(f"{what}: unsupported algorithm {oid}")
    ok = (
        (kind == "oid" and tag == OID)
        or (kind == "null" and params == _NULL)
        or (kind == "null?" and params in (_NULL, b""))
        or (kind == "none" and not params)
        or (kind == "seq" and tag == SEQUENCE)
        or (kind == "seq?" and (tag == SEQUENCE or not params))
    )
    if not ok:
        raise DerError(f"{what}: parameters that algorithm {oid} does not take")
    if kind == "oid":
        curve = read_oid(value, what)
        if curve not in _CURVES:
            raise DerError(f"{what}: unsupported elliptic curve {curve}")
    return oid, params


# -- names ----------------------------------------------------------------------------


_STRING_TAGS = frozenset(
    (
        UTF8_STRING,
        PRINTABLE_STRING,
        IA5_STRING,
        VISIBLE_STRING,
        NUMERIC_STRING,
        T61_STRING,
        BMP_STRING,
        UNIVERSAL_STRING,
    )
)


def _name(content: bytes, what: str) -> tuple[tuple[str, str], ...]:
    """A Name as ``(oid, text)`` pairs in order (every value must be a string type)."""
    out: list[tuple[str, str]] = []
    rdns = sub_reader(content, what)
    while not rdns.at_end():
        rdn = sub_reader(rdns.expect(SET, "a relative distinguished name (SET)"), what)
        if rdn.at_end():
            raise DerError(f"{what}: an empty relative distinguished name")
        while not rdn.at_end():
            atv = sub_reader(rdn.expect(SEQUENCE, "an attribute (SEQUENCE)"), what)
            oid = read_oid(atv.expect(OID, "an attribute type"), what)
            tag, value, _ = atv.read()
            atv.done()
            if tag not in _STRING_TAGS:
                raise DerError(f"{what}: attribute {oid} is not a string (tag 0x{tag:02x})")
            text = read_string(tag, value, f"{what} ({oid})")
            out.append((oid, text))
    return tuple(out)


# -- extensions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Extension:
    oid: str
    critical: bool
    value: bytes  # the extnValue OCTET STRING's content (the extension's own DER)


@dataclass(frozen=True)
class BasicConstraints:
    ca: bool
    path_length: int | None


def _extensions(content: bytes) -> tuple[Extension, ...]:
    what = "extensions"
    r = sub_reader(content, what)
    out: list[Extension] = []
    seen: set[str] = set()
    while not r.at_end():
        e = sub_reader(r.expect(SEQUENCE, "an extension (SEQUENCE)"), what)
        oid = read_oid(e.expect(OID, "an extension id"), what)
        critical = False
        if e.peek() == BOOLEAN:
            critical = read_boolean(e.expect(BOOLEAN, "critical"), f"extension {oid}")
            if not critical:
                raise DerError(f"extension {oid}: critical FALSE must be omitted in DER")
        value = e.expect(OCTET_STRING, "an extension value (OCTET STRING)")
        e.done()
        if oid in seen:
            raise DerError(f"duplicate extension {oid}")
        seen.add(oid)
        out.append(Extension(oid, critical, value))
    return tuple(out)


OID_KEY_USAGE = "2.5.29.15"
OID_EXTENDED_KEY_USAGE = "2.5.29.37"
OID_SUBJECT_KEY_ID = "2.5.29.14"
OID_AUTHORITY_KEY_ID = "2.5.29.35"
OID_ISSUER_ALT_NAME = "2.5.29.18"


def _check_extension(ext: Extension) -> None:
    """The value is one well-formed TLV; the extensions plait's CA writes (and the two it
    reads) are checked field by field."""
    what = f"extension {ext.oid}"
    r = DerReader(ext.value, what)
    tag, content, _ = r.read()
    r.done()
    if tag & 0x20:
        check_nesting(content, what)
    if ext.oid == OID_BASIC_CONSTRAINTS:
        _basic_constraints(ext.value)
    elif ext.oid in (OID_SUBJECT_ALT_NAME, OID_ISSUER_ALT_NAME):
        _general_names(ext.value)
    elif ext.oid == OID_KEY_USAGE:
        if tag != BIT_STRING:
            raise DerError(f"{what}: KeyUsage is a BIT STRING")
        check_named_bits(content, what)
    elif ext.oid == OID_EXTENDED_KEY_USAGE:
        if tag != SEQUENCE:
            raise DerError(f"{what}: ExtendedKeyUsage is a SEQUENCE")
        er = sub_reader(content, what)
        while not er.at_end():
            read_oid(er.expect(OID, "a key purpose OBJECT IDENTIFIER"), what)
    elif ext.oid == OID_SUBJECT_KEY_ID:
        if tag != OCTET_STRING:
            raise DerError(f"{what}: SubjectKeyIdentifier is an OCTET STRING")
    elif ext.oid == OID_AUTHORITY_KEY_ID:
        if tag != SEQUENCE:
            raise DerError(f"{what}: AuthorityKeyIdentifier is a SEQUENCE")
        ar = sub_reader(content, what)
        for want in (0x80, 0xA1, 0x82):
            if ar.peek() == want:
                _, field, _ = ar.read()
                if want == 0xA1:
                    _general_names(tlv_sequence(field))
                elif want == 0x82:
                    read_integer(field, what)
        ar.done()


def tlv_sequence(content: bytes) -> bytes:
    """``content`` wrapped as a SEQUENCE TLV (to read an IMPLICIT SEQUENCE OF)."""
    n = len(content)
    if n < 0x80:
        return bytes([SEQUENCE, n]) + content
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([SEQUENCE, 0x80 | len(raw)]) + raw + content


def _basic_constraints(value: bytes) -> BasicConstraints:
    what = "BasicConstraints"
    outer = DerReader(value, what)
    r = sub_reader(outer.expect(SEQUENCE, "SEQUENCE"), what)
    outer.done()
    ca = False
    path_length: int | None = None
    if r.peek() == BOOLEAN:
        ca = read_boolean(r.expect(BOOLEAN, "cA"), what)
        if not ca:
            raise DerError(f"{what}: cA FALSE must be omitted in DER")
    if r.peek() == INTEGER:
        path_length = read_integer(r.expect(INTEGER, "pathLenConstraint"), what)
        if path_length < 0:
            raise DerError(f"{what}: negative pathLenConstraint")
    r.done()
    return BasicConstraints(ca, path_length)


def _general_names(value: bytes) -> tuple[tuple[int, bytes], ...]:
    """SubjectAltName: ``(tag, content)`` per GeneralName, each checked for its type."""
    what = "SubjectAltName"
    outer = DerReader(value, what)
    r = sub_reader(outer.expect(SEQUENCE, "SEQUENCE"), what)
    outer.done()
    out: list[tuple[int, bytes]] = []
    while not r.at_end():
        tag, content, _ = r.read()
        if tag in (0x81, 0x82, SAN_URI):  # rfc822Name, dNSName, URI: IA5String
            read_ascii(content, what)
        elif tag == 0x87:  # iPAddress
            if len(content) not in (4, 16):
                raise DerError(f"{what}: an iPAddress of {len(content)} bytes")
        elif tag == 0x88:  # registeredID
            read_oid(content, what)
        elif tag == 0xA4:  # directoryName: [4] EXPLICIT Name
            dr = sub_reader(content, what)
            _name(dr.expect(SEQUENCE, "a directoryName (Name)"), what)
            dr.done()
        elif tag == 0xA0:  # otherName: type-id OID, [0] EXPLICIT value
            orr = sub_reader(content, what)
            read_oid(orr.expect(OID, "an otherName type"), what)
            vr = sub_reader(orr.expect(0xA0, "an otherName value [0]"), what)
            vr.read()
            vr.done()
            orr.done()
            check_nesting(content, what)
        else:
            # x400Address and ediPartyName too: nothing plait meets uses them
            raise DerError(f"{what}: unsupported GeneralName tag 0x{tag:02x}")
        out.append((tag, content))
    return tuple(out)


# -- certificates ---------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    """The parts of a certificate plait reads. ``der`` is the whole certificate."""

    der: bytes
    version: int  # 0 (v1) or 2 (v3), as encoded
    serial: int
    issuer: tuple[tuple[str, str], ...]
    subject: tuple[tuple[str, str], ...]
    not_before: datetime
    not_after: datetime
    spki: bytes  # the SubjectPublicKeyInfo's DER
    key_algorithm: str
    key_parameters: bytes  # the algorithm parameters' DER (the curve OID for EC keys)
    public_key: bytes  # the subjectPublicKey bits (for EC: the point)
    extensions: tuple[Extension, ...]

    def extension(self, oid: str) -> Extension | None:
        for ext in self.extensions:
            if ext.oid == oid:
                return ext
        return None

    def subject_attributes(self, oid: str) -> list[str]:
        return [text for o, text in self.subject if o == oid]

    @property
    def subject_organization(self) -> str | None:
        orgs = self.subject_attributes(OID_ORGANIZATION)
        return orgs[0] if orgs else None

    def basic_constraints(self) -> BasicConstraints | None:
        """None when the extension is absent; DerError when it is malformed."""
        ext = self.extension(OID_BASIC_CONSTRAINTS)
        return None if ext is None else _basic_constraints(ext.value)

    def uri_sans(self) -> list[str] | None:
        """The URI SANs in order; None when there is no SubjectAltName extension."""
        ext = self.extension(OID_SUBJECT_ALT_NAME)
        if ext is None:
            return None
        return [c.decode("ascii") for tag, c in _general_names(ext.value) if tag == SAN_URI]


def read_certificate(der: bytes) -> Certificate:
    """Parse one DER certificate strictly; :class:`DerError` if it is not one.

    Every extension value must be one well-formed TLV, and those of BasicConstraints,
    SubjectAltName, IssuerAltName, KeyUsage, ExtendedKeyUsage and the key identifiers
    must be well-formed for their type; duplicates are refused. The values plait uses
    are then read by :meth:`Certificate.basic_constraints` and
    :meth:`Certificate.uri_sans`."""
    if not isinstance(der, bytes | bytearray | memoryview):
        raise DerError(f"a certificate is bytes, got {type(der).__name__}")
    der = bytes(der)
    top = DerReader(der, "certificate")
    cert_body, whole = top.expect_tlv(SEQUENCE, "Certificate (SEQUENCE)")
    top.done()
    cert = sub_reader(cert_body, "certificate")
    tbs_body = cert.expect(SEQUENCE, "TBSCertificate (SEQUENCE)")
    outer_alg = cert.expect(SEQUENCE, "signatureAlgorithm (SEQUENCE)")
    read_bit_string(cert.expect(BIT_STRING, "signatureValue (BIT STRING)"), "signatureValue")
    cert.done()

    tbs = sub_reader(tbs_body, "TBSCertificate")
    version = 0
    if tbs.peek() == 0xA0:
        vr = sub_reader(tbs.expect(0xA0, "version [0]"), "version")
        version = read_integer(vr.expect(INTEGER, "version INTEGER"), "version")
        vr.done()
        if version != 2:
            raise DerError(f"certificate version {version + 1} is not supported (v1 or v3 only)")
    serial = read_integer(tbs.expect(INTEGER, "serialNumber"), "serialNumber")
    inner_alg = tbs.expect(SEQUENCE, "signature (SEQUENCE)")
    if inner_alg != outer_alg:
        raise DerError("the TBSCertificate signature algorithm differs from the outer one")
    _algorithm(inner_alg, "signature algorithm", _SIGNATURE_ALGORITHMS)
    issuer = _name(tbs.expect(SEQUENCE, "issuer (Name)"), "issuer")
    validity = sub_reader(tbs.expect(SEQUENCE, "validity (SEQUENCE)"), "validity")
    tag, content, _ = validity.read()
    not_before = read_time(tag, content, "notBefore")
    tag, content, _ = validity.read()
    not_after = read_time(tag, content, "notAfter")
    validity.done()
    subject = _name(tbs.expect(SEQUENCE, "subject (Name)"), "subject")
    spki_body, spki = tbs.expect_tlv(SEQUENCE, "subjectPublicKeyInfo (SEQUENCE)")
    sr = sub_reader(spki_body, "subjectPublicKeyInfo")
    key_alg, key_params = _algorithm(
        sr.expect(SEQUENCE, "algorithm (SEQUENCE)"), "public key algorithm", _KEY_ALGORITHMS
    )
    public_key = read_bit_string(sr.expect(BIT_STRING, "subjectPublicKey"), "subjectPublicKey")
    sr.done()
    if tbs.peek() in (0x81, 0x82):
        raise DerError("issuer/subject unique identifiers are not supported")
    extensions: tuple[Extension, ...] = ()
    if tbs.peek() == 0xA3:
        if version != 2:
            raise DerError("extensions in a certificate that is not v3")
        er = sub_reader(tbs.expect(0xA3, "extensions [3]"), "extensions")
        extensions = _extensions(er.expect(SEQUENCE, "Extensions (SEQUENCE)"))
        er.done()
        for ext in extensions:
            _check_extension(ext)
    tbs.done()
    return Certificate(
        der=whole,
        version=version,
        serial=serial,
        issuer=issuer,
        subject=subject,
        not_before=not_before,
        not_after=not_after,
        spki=spki,
        key_algorithm=key_alg,
        key_parameters=key_params,
        public_key=public_key,
        extensions=extensions,
    )


# -- PEM ------------------------------------------------------------------------------


def load_pem_certificates(pem: bytes) -> list[Certificate]:
    """Every ``CERTIFICATE`` block of ``pem``, parsed (an empty list if there is none)."""
    return [read_certificate(der) for _, der in pem_blocks(pem, "CERTIFICATE")]
