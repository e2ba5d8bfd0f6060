"""Certificate signing requests for a service identity (used by the key child only).

The CSR carries the SPIFFE id as its only SAN (a URI) and ``CN=<service>``, signed with
the service's key (proof of possession). The CA copies nothing from it but the public
key (:mod:`plait.ca.profile`); the SAN is there so that the request says what it asks
for, and the manager checks the answer carries exactly that id.

This imports ``cryptography``: only :mod:`plait.identity.keygen`'s child process (and the
CA side) use it, never the proxy process itself.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from plait.ca.spiffe import SpiffeId


def build_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: SpiffeId) -> bytes:
    """A PEM CSR for ``spiffe_id``, signed by ``key``."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.service)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)
