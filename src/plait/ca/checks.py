"""What the CA verifies: CSRs, root + intermediate pairs, client certificates.

Each check either returns what it vouches for or raises an error saying what is wrong:

- :func:`csr_public_key` (raises :class:`CsrRefused`): at most 16 KiB, exactly one PEM
  ``CERTIFICATE REQUEST``, it parses, its self-signature verifies (the caller holds the
  key), and the key is ECDSA P-256. Nothing else in the CSR is looked at: the CA takes
  only this key from it.
- :func:`check_ca_pair` (raises :class:`CaError`): a root and intermediate (plait's own,
  or an existing PKI's) can issue.
- :func:`spiffe_id_of` (raises :class:`PeerRejected`): the one SAN of a leaf, a SPIFFE id.

Pure: no I/O; time is an argument.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from plait.ca import pki_files
from plait.ca.profile import IssuerKey
from plait.ca.spiffe import InvalidSpiffeId, SpiffeId

MAX_CSR_BYTES = 16 * 1024
CSR_BEGIN = b"-----BEGIN CERTIFICATE REQUEST-----"


class CaError(Exception):
    """The CA cannot do what was asked (bad PKI files, a rotation step out of order)."""


class CsrRefused(Exception):
    """A CSR the CA will not sign; ``reason`` says why (it goes to the audit log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PeerRejected(Exception):
    """A client certificate that is not a valid, current identity of this CA."""


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed ``cert`` (names match and the signature verifies)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE id of a leaf: its one and only SAN, a URI. Raises PeerRejected."""
    try:
        sans = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        raise PeerRejected("the certificate has no SAN") from None
    if len(sans) != 1 or not isinstance(sans[0], x509.UniformResourceIdentifier):
        raise PeerRejected("the certificate must have exactly one SAN, a SPIFFE URI")
    try:
        return SpiffeId.parse(sans[0].value)
    except InvalidSpiffeId as exc:
        raise PeerRejected(str(exc)) from None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_ca_pair(
    root: x509.Certificate,
    root_key: ec.EllipticCurvePrivateKey | None,
    intermediate: x509.Certificate,
    intermediate_key: IssuerKey,
    now: datetime,
) -> None:
    """Raise CaError unless root + intermediate (+ keys) are a usable CA pair at ``now``:
    both CAs with room for the path below them, keyCertSign, valid now; the root
    self-signed, the intermediate signed by it; each key matching its certificate."""
    for role, cert, path_min in (("root", root, 1), ("intermediate", intermediate, 0)):
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            raise CaError(f"the {role} certificate has no BasicConstraints: not a CA") from None
        if not bc.ca:
            raise CaError(f"the {role} certificate is not a CA (BasicConstraints CA=false)")
        if bc.path_length is not None and bc.path_length < path_min:
            raise CaError(f"the {role} certificate's pathLen {bc.path_length} is too small")
        try:
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            ku = None
        if ku is not None and not ku.key_cert_sign:
            raise CaError(f"the {role} certificate's KeyUsage lacks keyCertSign")
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CaError(
                f"the {role} certificate is not valid now (valid "
                f"{iso(cert.not_valid_before_utc)} to {iso(cert.not_valid_after_utc)})"
            )
    if not issued_by(root, root):
        raise CaError("the root certificate is not self-signed")
    if not issued_by(intermediate, root):
        raise CaError("the intermediate certificate is not signed by the root")
    key = intermediate_key
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
        raise CaError("the intermediate's RSA key is shorter than 2048 bits")
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CaError("the intermediate's key must be EC or RSA")
    if pki_files.public_der(key) != pki_files.public_der(intermediate):
        raise CaError("the intermediate key does not match the intermediate certificate")
    if root_key is not None and pki_files.public_der(root_key) != pki_files.public_der(root):
        raise CaError("the root key does not match the root certificate")


def csr_public_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey:
    """The CSR's public key if the CSR is well-formed, self-signed and P-256."""
    if len(csr_pem) > MAX_CSR_BYTES:
        raise CsrRefused(f"the CSR is larger than {MAX_CSR_BYTES} bytes")
    if csr_pem.count(CSR_BEGIN) != 1:
        raise CsrRefused("expected exactly one PEM 'CERTIFICATE REQUEST' block")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CsrRefused(f"the CSR cannot be parsed: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except Exception:  # unsupported signature algorithms raise from the backend
        valid = False
    if not valid:
        raise CsrRefused("the CSR's signature does not verify")
    try:
        key = csr.public_key()
    except Exception as exc:
        raise CsrRefused(f"the CSR's public key is unsupported: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        raise CsrRefused(f"the key must be ECDSA P-256, not RSA-{key.key_size}")
    if not isinstance(key, ec.EllipticCurvePublicKey):
        kind = type(key).__name__.removeprefix("_").replace("PublicKey", "")
        raise CsrRefused(f"the key must be ECDSA P-256, not {kind}")
    if not isinstance(key.curve, ec.SECP256R1):
        raise CsrRefused(f"the key must be ECDSA P-256, not curve {key.curve.name}")
    return key
