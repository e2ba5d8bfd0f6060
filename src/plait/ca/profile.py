"""Certificate profiles: exactly what the plait CA puts in the certificates it makes.

The CA never copies anything from a request into a certificate except the public key;
every other field comes from here. Three profiles:

- **leaf** (a service's X.509-SVID): ECDSA P-256 subject key; exactly one SAN, the URI
  ``spiffe://<td>/svc/<service>``, and no other SAN; subject ``CN=<service>``;
  BasicConstraints CA=false (critical); KeyUsage digitalSignature only (critical);
  ExtendedKeyUsage serverAuth + clientAuth; SubjectKeyIdentifier and
  AuthorityKeyIdentifier; a random 159-bit serial; ``notBefore = now - 60 s`` (clock
  skew between hosts) and ``notAfter = now + lifetime`` (default 24 h), never past the
  issuer's own ``notAfter``. Renewal is due at half-life, and a certificate with less
  than a quarter of its lifetime left is *expiring*.
- **root**: self-signed, BasicConstraints CA=true pathLen 1, KeyUsage keyCertSign +
  cRLSign (both critical), SKI and AKI, 10 years.
- **intermediate** (the issuer): signed by the root, CA=true pathLen 0, the same key
  usages, SKI and AKI, 1 year.

Pure: time (``now``) and randomness (``rng(n) -> n random bytes``) are passed in. The only
hidden randomness is OpenSSL's, inside key generation and ECDSA signatures.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from plait.ca.spiffe import SpiffeId

Rng = Callable[[int], bytes]
IssuerKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

DEFAULT_LEAF_LIFETIME = timedelta(hours=24)
CLOCK_SKEW = timedelta(seconds=60)
ROOT_LIFETIME = timedelta(days=3650)
INTERMEDIATE_LIFETIME = timedelta(days=365)
SERIAL_BITS = 159
EXPIRING_FRACTION = 0.25


def random_serial(rng: Rng) -> int:
    """A positive serial number of at most 159 bits (20 DER octets with the sign bit)."""
    while True:
        serial = int.from_bytes(rng(20), "big") >> (160 - SERIAL_BITS)
        if serial > 0:
            return serial


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key (the only key type the CA makes)."""
    return ec.generate_private_key(ec.SECP256R1())


def signing_hash(key: IssuerKey) -> hashes.SHA256 | hashes.SHA384:
    """The digest to sign with ``key``: SHA-384 for P-384 and larger curves, else SHA-256."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def renew_at(not_before: datetime, not_after: datetime) -> datetime:
    """When a certificate should be renewed: at half of its lifetime."""
    return not_before + (not_after - not_before) / 2


def is_expiring(not_before: datetime, not_after: datetime, now: datetime) -> bool:
    """Whether less than a quarter of the certificate's lifetime is left at ``now``."""
    return not_after - now < (not_after - not_before) * EXPIRING_FRACTION


def leaf_validity(
    now: datetime, lifetime: timedelta, issuer_not_after: datetime
) -> tuple[datetime, datetime]:
    """``(notBefore, notAfter)`` of a leaf issued at ``now``, capped by its issuer."""
    if lifetime <= timedelta(0):
        raise ValueError(f"a certificate lifetime must be positive, got {lifetime}")
    return now - CLOCK_SKEW, min(now + lifetime, issuer_not_after)


def _key_ids(
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, issuer: x509.Certificate | None
) -> tuple[x509.SubjectKeyIdentifier, x509.AuthorityKeyIdentifier]:
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    if issuer is None:  # self-signed: the authority is the subject itself
        return ski, x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    try:
        issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        issuer_key = issuer.public_key()
        if not isinstance(issuer_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
            raise ValueError("the issuer's key must be EC or RSA") from None
        return ski, x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key)
    return ski, x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski)


def build_leaf(
    public_key: ec.EllipticCurvePublicKey,
    spiffe_id: SpiffeId,
    issuer: x509.Certificate,
    issuer_key: IssuerKey,
    now: datetime,
    lifetime: timedelta,
    serial: int,
) -> x509.Certificate:
    """Sign a leaf certificate for ``spiffe_id`` with the leaf profile (module docstring)."""
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise ValueError("leaf keys must be ECDSA P-256")
    not_before, not_after = leaf_validity(now, lifetime, issuer.not_valid_after_utc)
    ski, aki = _key_ids(public_key, issuer)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.service)]))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .add_extension(aki, critical=False)
    )
    return builder.sign(issuer_key, signing_hash(issuer_key))


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def ca_name(trust_domain: str, role: str, generation: int) -> x509.Name:
    """``CN=plait <role> CA <generation>, O=<trust domain>``."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, f"plait {role} CA {generation}"),
        ]
    )


def build_ca(
    key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    now: datetime,
    lifetime: timedelta,
    serial: int,
    path_length: int,
    issuer: x509.Certificate | None = None,
    issuer_key: IssuerKey | None = None,
) -> x509.Certificate:
    """A CA certificate: self-signed (a root) when ``issuer`` is None, else signed by it."""
    if (issuer is None) != (issuer_key is None):
        raise ValueError("give both the issuer certificate and its key, or neither")
    not_after = now + lifetime
    if issuer is not None:
        not_after = min(not_after, issuer.not_valid_after_utc)
    ski, aki = _key_ids(key.public_key(), issuer)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(aki, critical=False)
    )
    signer: IssuerKey = key if issuer_key is None else issuer_key
    return builder.sign(signer, signing_hash(signer))
