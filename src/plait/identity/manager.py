"""Keep one service's certificate current: first issue, renewals, trust bundle, backoff.

:class:`IdentityManager` owns one identity (one service on one host). Its ``data_dir``
holds ``key.pem`` (0600, made on this host, never sent), ``cert.pem`` (leaf + intermediate),
``bundle.pem`` (the roots the CA answered with) and ``ca-bundle.pem`` (the roots used to
verify the control plane's HTTPS certificate: pinned at first contact). A restart reuses
a stored certificate that is still valid, so a proxy that restarts while the control
plane is down keeps its identity.

The loop (:meth:`IdentityManager.run`):

- no valid certificate: ask for one now; on failure retry with backoff
  (:func:`plait.identity.renewal.retry_delay`);
- a certificate: sleep until :func:`~plait.identity.renewal.next_renewal` (half-life
  +-10%), then renew; while the CA cannot be reached keep the current certificate,
  retry with backoff, and raise :attr:`alarm` when less than 25% of it is left;
- every ``bundle_interval`` seconds, fetch ``GET /v1/ca/bundle`` (verified) so a root
  rotation reaches files and contexts between renewals.

Every change calls ``on_update(identity)`` with the new :class:`Identity`.

**First contact** (how the manager knows which certificate the CA's HTTPS endpoint must
present), in order of preference:

1. ``bundle_file``: a PEM file of the mesh roots given by the operator
   (``plait proxy --ca-bundle``, ``plait identity --ca-bundle``) -- pinned, works across
   hosts; the recommended way off the local host;
2. ``ca-bundle.pem`` in ``data_dir``, pinned at an earlier first contact;
3. trust on first use, **only when the CA URL's host is a loopback address**: the roots
   are fetched once from ``GET /v1/ca/bundle`` (or ``bundle_url``) without verifying
   the server, with the join token as ``Authorization: Bearer``, and pinned. On loopback
   no one off the host can sit in between; anything else without a bundle file is
   refused with an error saying to pass the bundle file. When the CA URL is not given,
   it is discovered from the control plane's HTTP API (``GET /v1/ca/bundle`` answers
   ``ca_url``, ``trust_domain`` and the roots); the same loopback rule applies to
   pinning the roots from that answer.

After first contact the roots are only ever replaced by answers that came over a
verified connection (the sign and bundle answers).

**No cryptography in this process**: the key and each CSR are made by a short-lived child
(:mod:`plait.identity.keygen`, at the first issue and at every renewal), and certificates
are read by :mod:`plait.identity.x509_reader`; a proxy with identities stays as small as a
plaintext one (docs/internals.md, "Memory").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from plait.ca.spiffe import CONTROL_SERVICE, InvalidSpiffeId, SpiffeId
from plait.fsutil import write_atomic
from plait.identity import https, renewal
from plait.identity.files import BUNDLE_FILE, CERT_FILE, KEY_FILE, ensure_private_dir
from plait.identity.keygen import KeygenError, make_csr
from plait.identity.keys import PrivateKeyInfo, read_key, store_key
from plait.identity.x509_reader import Certificate, DerError, load_pem_certificates
from plait.jsonhttp import request_json
from plait.proxy.peer_identity import PeerRejected, check_peer

log = logging.getLogger("plait.identity")

CA_BUNDLE_FILE = "ca-bundle.pem"
SIGN_PATH = "/v1/ca/sign"
BUNDLE_PATH = "/v1/ca/bundle"
DEFAULT_TRUST_DOMAIN = "plait.local"
MIN_RENEW_INTERVAL = 0.5  # seconds between two successful issues, whatever the schedule


class IdentityError(Exception):
    """Getting or checking a certificate failed; the message says what and what to do."""


@dataclass(frozen=True)
class Identity:
    """One issued identity, as handed to ``on_update``."""

    service: str
    spiffe_id: str
    chain_pem: bytes  # leaf + intermediates
    key_pem: bytes
    bundle_pem: bytes  # the roots
    not_before: datetime
    not_after: datetime
    serial: str  # hex
    cert_path: Path
    key_path: Path
    # when this host got it: the start of its lifetime for renewal and the alarm. The CA
    # backdates notBefore (clock skew between hosts, 60 s), which would make a short-lived
    # certificate look half-spent on arrival.
    received_at: datetime | None = None

    @property
    def start(self) -> datetime:
        if self.received_at is None:
            return self.not_before
        return max(self.not_before, min(self.received_at, self.not_after))

    @property
    def bundle_version(self) -> str:
        return bundle_version(self.bundle_pem)


def bundle_version(bundle_pem: bytes) -> str:
    """The sha256 (hex) of a bundle's PEM text, as the CA names bundle versions."""
    return hashlib.sha256(bundle_pem).hexdigest()


def load_certs(pem: bytes, what: str) -> list[Certificate]:
    try:
        certs = load_pem_certificates(pem)
    except DerError as exc:
        raise IdentityError(f"{what}: not PEM certificates: {exc}") from None
    if not certs:
        raise IdentityError(f"{what}: no certificate in it")
    return certs


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def utcnow() -> datetime:
    return datetime.now(UTC)


class IdentityManager:
    def __init__(
        self,
        ca_url: str | None,
        service: str,
        token: str | None,
        data_dir: str | Path,
        on_update: Callable[[Identity], None] | None = None,
        *,
        bundle_url: str | None = None,
        bundle_file: str | None = None,
        trust_domain: str | None = None,
        bundle_interval: float = 60.0,
        timeout: float = 10.0,
        rng: random.Random | None = None,
        now: Callable[[], datetime] = utcnow,
        api_url: str | None = None,
    ) -> None:
        if ca_url is None and api_url is None:
            raise ValueError("give the CA's https URL, or the control plane's API URL")
        if ca_url is not None:
            https.split_base(ca_url)  # fails early on a bad URL
        self.ca_url = ca_url.rstrip("/") if ca_url else ""
        # A CA URL learnt from the API is looked up again after a failure: the control
        # plane may have restarted on another CA port.
        self._ca_url_discovered = False
        self.api_url = api_url
        self._bundle_url = bundle_url.rstrip("/") if bundle_url else None
        self.service = service
        self.token = token
        self.data_dir = Path(data_dir)
        self.on_update = on_update
        self.bundle_file = bundle_file
        self.trust_domain = trust_domain
        self.bundle_interval = bundle_interval
        self.timeout = timeout
        self.rng = rng or random.Random()
        self.now = now
        self.current: Identity | None = None
        self.failures = 0
        self.last_error: str | None = None
        self.renewals = 0
        self._ca_bundle: bytes | None = None
        self._key: PrivateKeyInfo | None = None
        self._wake = asyncio.Event()

    # -- what others read ------------------------------------------------------------

    @property
    def key_path(self) -> Path:
        return self.data_dir / KEY_FILE

    @property
    def expires_at(self) -> datetime | None:
        return self.current.not_after if self.current is not None else None

    @property
    def alarm(self) -> bool:
        """True with no certificate, or with less than 25% of its lifetime left."""
        cur = self.current
        return cur is None or renewal.alarm(self.now(), cur.start, cur.not_after)

    def status(self) -> dict[str, Any]:
        cur = self.current
        now = self.now()
        return {
            "service": self.service,
            "spiffe_id": cur.spiffe_id if cur else None,
            "serial": cur.serial if cur else None,
            "not_before": cur.not_before.isoformat() if cur else None,
            "not_after": cur.not_after.isoformat() if cur else None,
            "expires_in": round((cur.not_after - now).total_seconds(), 3) if cur else None,
            "alarm": self.alarm,
            "bundle_version": cur.bundle_version if cur else None,
            "renewals": self.renewals,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    def renew_now(self) -> None:
        """Wake the loop to renew at once (tests, operators)."""
        self._wake.set()

    # -- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the identity current until cancelled. Never raises for CA trouble."""
        self.load_stored()
        next_bundle = 0.0
        loop = asyncio.get_running_loop()
        while True:
            cur = self.current
            now = self.now()
            due = cur is None or now >= self._renew_at
            if due:
                if await self._try(self.issue):
                    self.renewals += 1 if cur is not None else 0
                    delay = max(MIN_RENEW_INTERVAL, self._seconds_until(self._renew_at))
                else:
                    c = self.current
                    delay = renewal.retry_delay(
                        self.failures,
                        self.now(),
                        c.start if c else None,
                        c.not_after if c else None,
                        self.rng,
                    )
            else:
                delay = self._seconds_until(self._renew_at)
            if self.current is not None and self.bundle_interval > 0:
                if loop.time() >= next_bundle:
                    await self._try(self.refresh_bundle, count=False)
                    next_bundle = loop.time() + self.bundle_interval
                delay = min(delay, max(0.0, next_bundle - loop.time()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.05, delay))
            if self._wake.is_set() and self.current is not None:
                self._renew_at = self.now()

    def _seconds_until(self, when: datetime) -> float:
        return max(0.0, (when - self.now()).total_seconds())

    async def _try(self, step: Callable[[], Any], count: bool = True) -> bool:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except (IdentityError, https.HttpsError, ValueError) as exc:
            if count:
                self.failures += 1
            if self._ca_url_discovered:
                self.ca_url = ""
                self._ca_url_discovered = False
            self.last_error = str(exc)
            if not count or self.failures % 10 == 1:
                log.warning("identity %s: %s", self.service, exc)
            return False
        if count:
            if self.failures:
                log.info("identity %s: the CA answers again", self.service)
            self.failures = 0
            self.last_error = None
        return True

    # -- stored state ------------------------------------------------------------------

    def load_stored(self) -> Identity | None:
        """Reuse a stored certificate that matches the key and is still valid.

        Reads the stored key (a key that is there but unusable raises KeyFileError); a
        missing key is made by the first :meth:`issue`."""
        if self.current is not None:
            return self.current
        ensure_private_dir(self.data_dir)
        self._key = read_key(self.key_path)
        if self._key is None:
            return None
        try:
            chain = (self.data_dir / CERT_FILE).read_bytes()
            bundle = (self.data_dir / BUNDLE_FILE).read_bytes()
        except OSError:
            return None
        try:
            received = datetime.fromtimestamp((self.data_dir / CERT_FILE).stat().st_mtime, UTC)
            ident = self._identity(chain, bundle, received)
        except IdentityError as exc:
            log.info("identity %s: not reusing the stored certificate: %s", self.service, exc)
            return None
        if ident.not_after <= self.now():
            return None
        self._install(ident, write=False)
        return ident

    # -- talking to the CA -----------------------------------------------------------

    @property
    def bundle_url(self) -> str:
        return self._bundle_url or self.ca_url

    async def discover(self) -> str:
        """The CA URL: given, or from the control plane's HTTP API (``ca_url`` in
        ``GET /v1/ca/bundle``). On loopback that answer also serves as first contact."""
        if self.ca_url:
            return self.ca_url
        assert self.api_url is not None
        try:
            status, answer = await request_json(
                self.api_url, "GET", BUNDLE_PATH, None, self.timeout
            )
        except (OSError, TimeoutError) as exc:
            where = self.api_url
            raise IdentityError(f"cannot reach the control plane at {where}: {exc}") from None
        data = self._bundle_from(status, answer)
        ca_url = str(answer.get("ca_url") or "")
        https.split_base(ca_url)
        self.ca_url = ca_url.rstrip("/")
        self._ca_url_discovered = True
        host = urlsplit(self.api_url).hostname or ""
        if self.trust_domain is None and answer.get("trust_domain"):
            self.trust_domain = str(answer["trust_domain"])
        if (
            not self.bundle_file
            and not (self.data_dir / CA_BUNDLE_FILE).exists()
            and is_loopback(host)
            and is_loopback(urlsplit(self.ca_url).hostname or "")
        ):
            self._pin(data)
            log.info("identity %s: pinned the CA bundle from %s (first use)", self.service, host)
        return self.ca_url

    async def trust(self) -> bytes:
        """The roots that verify the CA's HTTPS certificate (see First contact)."""
        await self.discover()
        if self._ca_bundle is not None:
            return self._ca_bundle
        if self.bundle_file:
            try:
                data = Path(self.bundle_file).read_bytes()
            except OSError as exc:
                raise IdentityError(f"cannot read the CA bundle file: {exc}") from None
            load_certs(data, self.bundle_file)
            self._ca_bundle = data
            return data
        pinned = self.data_dir / CA_BUNDLE_FILE
        if pinned.exists():
            data = pinned.read_bytes()
            load_certs(data, str(pinned))
            self._ca_bundle = data
            return data
        host, _, _ = https.split_base(self.bundle_url)
        if not is_loopback(host):
            raise IdentityError(
                f"no trust bundle to verify the CA at {self.bundle_url}: give the mesh's root "
                "certificates as a file (bootstrap control_plane.ca_bundle, or --ca-bundle); "
                "trust on first use is allowed only for a CA on 127.0.0.1"
            )
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        status, answer = await https.request(
            self.bundle_url,
            "GET",
            BUNDLE_PATH,
            https.client_context(None, verify=False),
            timeout=self.timeout,
            headers=headers,
        )
        data = self._bundle_from(status, answer)
        self._pin(data)
        log.info("identity %s: pinned the CA bundle from %s (first contact)", self.service, host)
        return data

    def _bundle_from(self, status: int, answer: Any) -> bytes:
        if status != 200 or not isinstance(answer, dict) or not answer.get("bundle"):
            raise IdentityError(f"GET {BUNDLE_PATH}: HTTP {status}: {_error_text(answer)}")
        data = str(answer["bundle"]).encode("ascii")
        load_certs(data, "the CA's bundle")
        return data

    def _pin(self, bundle: bytes) -> None:
        if bundle != self._ca_bundle:
            ensure_private_dir(self.data_dir)
            write_atomic(self.data_dir / CA_BUNDLE_FILE, bundle, 0o644)
            self._ca_bundle = bundle

    def _ctx(self, bundle: bytes) -> Any:
        ctx = https.client_context(bundle)
        cur = self.current
        if cur is not None and cur.not_after > self.now():
            ctx.load_cert_chain(cur.cert_path, cur.key_path)  # renewals present the current one
        return ctx

    def _control_id(self, bundle: bytes) -> str:
        td = self.trust_domain or self._trust_domain_from(bundle)
        return str(SpiffeId.for_service(td, CONTROL_SERVICE))

    async def issue(self) -> Identity:
        """Send a CSR and install the answer (first certificate or renewal).

        A renewal authenticates with the current certificate (join tokens expire); if
        the CA refuses that, and for the first certificate, the join token is sent.
        """
        if self._key is None:
            self.load_stored()
        bundle = await self.trust()
        spiffe = self._spiffe_id(bundle)
        body: dict[str, Any] = {"service": self.service, "csr": await self._csr(spiffe)}
        cur = self.current
        renewing = cur is not None and cur.not_after > self.now()
        status, answer = 0, None
        if renewing:
            status, answer = await self._sign(body, bundle)
        if (not renewing or status == 403) and self.token:
            status, answer = await self._sign({**body, "token": self.token}, bundle)
        if status != 200 or not isinstance(answer, dict) or not answer.get("certificate"):
            raise IdentityError(f"POST {SIGN_PATH}: HTTP {status}: {_error_text(answer)}")
        chain = str(answer["certificate"]).encode("ascii")
        roots = str(answer.get("bundle") or bundle.decode("ascii")).encode("ascii")
        ident = self._identity(chain, roots, self.now())
        self._pin(roots)
        self._install(ident)
        log.info(
            "identity %s: certificate %s valid until %s",
            self.service,
            ident.serial,
            ident.not_after.isoformat(),
        )
        return ident

    async def _csr(self, spiffe: SpiffeId) -> str:
        """A CSR for ``spiffe`` from the key child (:mod:`plait.identity.keygen`); a new
        key the child made is stored (0600) before the CSR leaves this host."""
        key = self._key
        try:
            made = await make_csr(str(spiffe), key.pem if key is not None else None)
        except KeygenError as exc:
            raise IdentityError(f"cannot make the key or the CSR: {exc}") from None
        if key is None:
            key = store_key(self.key_path, made.key_pem)
        if key.spki is None or key.spki != made.spki:
            # the stored key did not carry its public key: take it from the child (OpenSSL)
            key = PrivateKeyInfo(pem=key.pem, spki=made.spki)
        self._key = key
        return made.csr_pem.decode("ascii")

    async def _sign(self, body: dict[str, Any], bundle: bytes) -> tuple[int, Any]:
        return await https.request(
            self.ca_url,
            "POST",
            SIGN_PATH,
            self._ctx(bundle),
            body,
            timeout=self.timeout,
            expect_uri=self._control_id(bundle),
        )

    async def refresh_bundle(self) -> bytes:
        """Fetch the current roots over a verified connection; install them if new."""
        bundle = await self.trust()
        status, answer = await https.request(
            self.bundle_url,
            "GET",
            BUNDLE_PATH,
            self._ctx(bundle),
            timeout=self.timeout,
            expect_uri=self._control_id(bundle),
        )
        roots = self._bundle_from(status, answer)
        cur = self.current
        if cur is not None and roots != cur.bundle_pem:
            ident = self._identity(cur.chain_pem, roots, cur.received_at)
            self._pin(roots)
            self._install(ident)
        return roots

    # -- checking and installing -------------------------------------------------------

    def _spiffe_id(self, bundle: bytes) -> SpiffeId:
        td = self.trust_domain
        if td is None:
            td = self._trust_domain_from(bundle)
        try:
            return SpiffeId.for_service(td, self.service)
        except InvalidSpiffeId as exc:
            raise IdentityError(str(exc)) from None

    def _trust_domain_from(self, bundle: bytes) -> str:
        """The trust domain: our last certificate's, else the roots' O= (the CA's names)."""
        cur = self.current
        if cur is not None:
            return SpiffeId.parse(cur.spiffe_id).trust_domain
        for cert in load_certs(bundle, "the CA bundle"):
            org = cert.subject_organization
            if org is not None:
                return org
        return DEFAULT_TRUST_DOMAIN

    def _identity(
        self, chain_pem: bytes, bundle_pem: bytes, received_at: datetime | None
    ) -> Identity:
        """Check that ``chain_pem`` is ours: our key, our service, a leaf, chains to a root."""
        certs = load_certs(chain_pem, "the issued certificate")
        load_certs(bundle_pem, "the trust bundle")
        leaf = certs[0]
        key = self._key
        if key is None:
            raise IdentityError("no key loaded")
        if key.spki is None:
            raise IdentityError("the key file does not carry its public key: cannot match it")
        if leaf.spki != key.spki:
            raise IdentityError("the issued certificate is not for this host's key")
        verdict = check_peer(leaf.der, self.trust_domain)
        if isinstance(verdict, PeerRejected):
            raise IdentityError(f"the issued certificate is not a valid identity: {verdict.reason}")
        if SpiffeId.parse(verdict).service != self.service:
            raise IdentityError(f"the issued certificate is for {verdict}, not {self.service}")
        return Identity(
            service=self.service,
            spiffe_id=verdict,
            chain_pem=chain_pem,
            key_pem=key.pem,
            bundle_pem=bundle_pem,
            not_before=leaf.not_before,
            not_after=leaf.not_after,
            serial=format(leaf.serial, "x"),
            cert_path=self.data_dir / CERT_FILE,
            key_path=self.key_path,
            received_at=received_at,
        )

    def _install(self, ident: Identity, write: bool = True) -> None:
        if write:
            write_atomic(self.data_dir / BUNDLE_FILE, ident.bundle_pem, 0o644)
            write_atomic(self.data_dir / CERT_FILE, ident.chain_pem, 0o644)
        self.current = ident
        self._renew_at = renewal.next_renewal(ident.start, ident.not_after, self.rng)
        if self.on_update is not None:
            try:
                self.on_update(ident)
            except Exception:
                log.exception("identity %s: applying the new certificate failed", self.service)

    _renew_at: datetime = datetime.min.replace(tzinfo=UTC)


def _error_text(answer: Any) -> str:
    if isinstance(answer, dict) and "error" in answer:
        return str(answer["error"])
    return str(answer)[:200]
