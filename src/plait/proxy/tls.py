"""TLS contexts for the proxy's local identities, swapped on renewal and bundle change.

Per local service the proxy holds two ``ssl.SSLContext`` objects built from that
service's certificate chain and key and the trust bundle:

- **server** (inbound listeners): TLS 1.3 only, a client certificate required and
  verified against the bundle, no hostname check (peers are named by SPIFFE id, checked
  after the handshake by :mod:`plait.proxy.peer_identity`);
- **client** (clusters with ``tls``): TLS 1.3 only, the server chain verified against
  the bundle, no hostname check (the SAN check against ``server_sans`` follows the
  handshake).

:class:`TlsContexts` keeps the current pair per service. Contexts are immutable once
built; a renewal or a bundle change builds new ones and replaces the reference, so
connections already open keep the context they were made with, and each new accept or
connect takes the current one (the inbound side looks the context up per accepted
connection, the outbound side per new upstream connection).

The trust bundle is the union of the roots from the control plane over SDS (the
``trust-bundle`` secret, docs/mtls.md) and the roots the CA answered with when it last
signed (so a proxy has a bundle before its first xDS push), duplicates removed.

``ssl.SSLContext.load_cert_chain`` reads files only, so the chain and key are written
to a private temporary directory (0700, in ``$TMPDIR`` or ``/tmp``; the key file 0600)
for the call and removed at once. This module avoids ``tempfile`` and ``shutil`` (with
``bz2`` and ``lzma`` about 0.9 MB resident in every proxy, docs/internals.md).

Server contexts send no TLS 1.3 session tickets (``num_tickets = 0``): nothing resumes
sessions between proxies, and each ticket cost both ends memory per connection.

Bundles are read by :mod:`plait.identity.x509_reader` (a certificate that does not
parse fails the merge), not by ``cryptography``: the proxy process never imports it
(docs/internals.md, "Memory").
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from plait.identity.pem_keys import der_to_pem
from plait.identity.x509_reader import DerError, load_pem_certificates

TRUST_BUNDLE = "trust-bundle"


@dataclass(frozen=True)
class LocalIdentity:
    """A local service's current certificate, as the data plane holds it."""

    service: str
    spiffe_id: str
    chain_pem: bytes
    key_pem: bytes
    not_before: datetime
    not_after: datetime
    serial: str
    ca_bundle_pem: bytes  # the roots the CA answered with


def merge_bundles(pems: Iterable[bytes | None]) -> bytes:
    """One PEM bundle with every distinct certificate of ``pems``, in first-seen order."""
    seen: set[bytes] = set()
    out: list[bytes] = []
    for pem in pems:
        if not pem:
            continue
        certs = load_pem_certificates(pem)
        if not certs:
            raise DerError("a trust bundle with no PEM certificate in it")
        for cert in certs:
            if cert.der not in seen:
                seen.add(cert.der)
                out.append(der_to_pem(cert.der))
    return b"".join(out)


def _private_dir() -> str:
    """A new directory only we can enter (0700) under ``$TMPDIR`` or ``/tmp``."""
    base = os.environ.get("TMPDIR") or "/tmp"
    for _ in range(10):
        path = os.path.join(base, f"plait-tls-{os.urandom(8).hex()}")
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"cannot make a private directory in {base}")


def _load_chain(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    tmp = _private_dir()
    paths = [os.path.join(tmp, "chain.pem"), os.path.join(tmp, "key.pem")]
    try:
        for path, data in zip(paths, (chain_pem, key_pem), strict=True):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(paths[0], paths[1])
    finally:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        os.rmdir(tmp)


def _tls13(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def server_context(chain_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> ssl.SSLContext:
    """Inbound: TLS 1.3, client certificate required and verified, no hostname check."""
    ctx = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.num_tickets = 0  # no resumption: tickets would cost both ends memory per connection
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=bundle_pem.decode("ascii"))
    _load_chain(ctx, chain_pem, key_pem)
    return ctx


def client_context(chain_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> ssl.SSLContext:
    """Outbound: TLS 1.3, our certificate presented, server chain verified, no hostname."""
    ctx = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=bundle_pem.decode("ascii"))
    _load_chain(ctx, chain_pem, key_pem)
    return ctx


class TlsContexts:
    """The current server and client context per local service."""

    def __init__(self) -> None:
        self.identities: dict[str, LocalIdentity] = {}
        self._server: dict[str, ssl.SSLContext] = {}
        self._client: dict[str, ssl.SSLContext] = {}
        self._sds_bundle: bytes | None = None
        self.bundle: bytes = b""
        self.builds = 0  # how many times contexts were (re)built, for tests and admin

    def server(self, service: str | None) -> ssl.SSLContext | None:
        return self._server.get(service) if service is not None else None

    def client(self, service: str | None) -> ssl.SSLContext | None:
        return self._client.get(service) if service is not None else None

    @property
    def bundle_version(self) -> str | None:
        """sha256 (hex) of the newest bundle this proxy trusts in full, as the CA names
        bundle versions: the CA's own answer (fetched over the verified CA API, renewed
        with every certificate and polled), else the SDS secret as received. Both are
        merged into the contexts, so every root of the reported bundle is trusted."""
        source = next((i.ca_bundle_pem for i in self.identities.values()), b"")
        source = source or self._sds_bundle or b""
        return hashlib.sha256(source).hexdigest() if source else None

    def set_identity(self, ident: LocalIdentity) -> None:
        """A new or renewed certificate for ``ident.service``: build its contexts."""
        self.identities[ident.service] = ident
        self._rebuild(only=ident.service)

    def set_sds_bundle(self, pem: bytes | None) -> None:
        """The ``trust-bundle`` secret from the control plane (None: not sent)."""
        if pem == self._sds_bundle:
            return
        self._sds_bundle = pem
        self._rebuild()

    def _rebuild(self, only: str | None = None) -> None:
        if not self.identities:
            # no local identity, no context to build: the bundle is merged when the
            # first certificate arrives
            return
        bundle = merge_bundles(
            [self._sds_bundle, *(i.ca_bundle_pem for i in self.identities.values())]
        )
        if bundle != self.bundle:
            self.bundle = bundle
            only = None  # every service's contexts trust the new bundle
        if not bundle:
            return
        for name, ident in self.identities.items():
            if only is not None and name != only:
                continue
            self._server[name] = server_context(ident.chain_pem, ident.key_pem, bundle)
            self._client[name] = client_context(ident.chain_pem, ident.key_pem, bundle)
            self.builds += 1
