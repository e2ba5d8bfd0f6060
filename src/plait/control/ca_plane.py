"""The service CA inside the control plane: tokens, issuance, audit, rotation steps.

:class:`CaPlane` is to the CA what :class:`~plait.control.plane.ControlPlane` is to config
and the registry: the one place that changes CA state. It joins the pure cores of
:mod:`plait.ca` with the store (join tokens as hashes, issued certificates), the audit log
and the CA directory:

- every issuance and every refusal is written to the audit log (fsynced) before the
  answer leaves; a failed audit write fails the request, and no certificate leaves;
- a caller gets a certificate for a service if it holds a join token for that service,
  or (renewal) presents a current certificate of this CA for the same service;
- the CA's state (rotation, last notAfter per issuer) is saved after every change: to
  the CA directory, or with an etcd store to etcd (``CaSetup.shared``,
  :mod:`plait.control.ca_etcd`), where a write holds only if no other replica changed the
  CA since this one read it; otherwise the step is taken again on the newer CA;
- :meth:`CaPlane.tick`, run by the control plane's periodic task, takes the rotation step
  :mod:`plait.control.rotation` plans, and forgets certificates expired for a week.

Time comes from the injected ``wall`` clock (unix seconds), randomness from
``CaSetup.rng``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from plait.ca.audit import AuditLog
from plait.ca.authority import (
    CaError,
    CertificateAuthority,
    CsrRefused,
    IssuedCert,
    PeerRejected,
    iso,
)
from plait.ca.profile import DEFAULT_LEAF_LIFETIME, Rng, renew_at
from plait.ca.spiffe import CONTROL_SERVICE
from plait.ca.tokens import JoinTokens, TokenRecord
from plait.control import rotation
from plait.control.ca_etcd import EtcdCa, retry_conflicts
from plait.control.registry import Registry
from plait.control.store import Store

log = logging.getLogger("plait.control.ca")

CERT_HISTORY = timedelta(days=7)  # expired certificates stay listed (with ?all=1) this long


class SignRefused(Exception):
    """The CA refused a certificate; ``reason`` is what the caller and the audit log see."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenNotFound(LookupError):
    """There is no token with that id."""


@dataclass
class CaSetup:
    """What the control plane needs to run the CA. ``directory`` is where the CA's state
    is saved (None for an existing PKI, whose files are not plait's to write); ``shared``
    is set instead when the CA lives in etcd, shared by every replica."""

    ca: CertificateAuthority
    audit: AuditLog
    directory: str | None
    cert_ttl: timedelta = DEFAULT_LEAF_LIFETIME
    rng: Rng = secrets.token_bytes
    shared: EtcdCa | None = None


class CaPlane:
    def __init__(
        self, setup: CaSetup, store: Store, registry: Registry, wall: Callable[[], float]
    ) -> None:
        self.setup = setup
        self.ca = setup.ca
        self.store = store
        self.registry = registry
        self.wall = wall
        self.tokens = JoinTokens(store.load_tokens())
        self.bundle_versions: dict[str, str] = {}  # node id -> bundle version it reported

    def utcnow(self) -> datetime:
        return datetime.fromtimestamp(self.wall(), UTC)

    def _audit(self, event: str, **fields: Any) -> None:
        self.setup.audit.record(event, self.utcnow(), **fields)

    def _save_ca(self) -> None:
        if self.setup.directory is not None:
            self.ca.save(self.setup.directory)

    def _change(self, step: Callable[[], Any]) -> Any:
        """Take a CA step and save it (see :func:`retry_conflicts` for a shared CA)."""
        shared = self.setup.shared
        if shared is None:
            result = step()
            if result is not False:
                self._save_ca()
            return result
        return retry_conflicts(shared, self.ca, self.utcnow, self.setup.rng, step)

    def _save_issued(self, issued: IssuedCert) -> None:
        """Save the issuer's new last notAfter; with a shared CA that another replica
        changed meanwhile, merge it into that CA and save again."""
        shared = self.setup.shared
        if shared is None:
            self._save_ca()
            return
        for _ in range(5):
            if shared.save(self.ca):
                return
            shared.refresh(self.ca, self.utcnow(), self.setup.rng)
            self.ca.note_issued(issued.generation, issued.not_after)
        raise CaError("the shared CA kept changing on other replicas; try again")

    def refresh_shared(self, revision: int | None = None) -> bool:
        """Another replica changed the shared CA (a watch event at ``revision``): adopt
        it. True if the CA changed (push the bundle)."""
        shared = self.setup.shared
        if shared is None:
            return False
        return shared.refresh(self.ca, self.utcnow(), self.setup.rng, revision)

    def create_token(self, service: str, ttl: timedelta) -> tuple[TokenRecord, str]:
        """A join token for ``service``: its record and the secret (shown once)."""
        now = self.utcnow()
        token_id, secret = self.tokens.create(service, ttl, now, self.setup.rng)
        record = self.tokens.get(token_id)
        assert record is not None
        self.store.save_token(record)
        self._audit(
            "token_created", token_id=token_id, service=service, expires_at=iso(record.expires_at)
        )
        return record, secret

    def revoke_token(self, token_id: str) -> TokenRecord:
        """Revoke a token (idempotent); raises TokenNotFound."""
        try:
            record = self.tokens.revoke(token_id, self.utcnow())
        except KeyError:
            raise TokenNotFound(f"there is no token {token_id!r} (see GET /v1/tokens)") from None
        self.store.save_token(record)
        self._audit("token_revoked", token_id=token_id, service=record.service)
        return record

    def sign(
        self,
        service: str,
        csr_pem: bytes,
        token: str | None = None,
        peer_cert: bytes | None = None,
        node: str | None = None,
        peer: str | None = None,
    ) -> IssuedCert:
        """Issue a certificate for ``service`` to a caller that holds a join token for it,
        or (renewal) presents a valid certificate of this CA for the same service."""
        now = self.utcnow()
        where: dict[str, Any] = {"service": service, "node": node, "peer": peer}
        if token is not None:
            check = self.tokens.verify(token, service, now)
            where.update(auth="token", token_id=check.token_id)
            if not check.ok:
                self._refuse(f"token {check.reason}", where)
        elif peer_cert is not None:
            where["auth"] = "certificate"
            try:
                identity = self.ca.verify_peer(peer_cert, now)
            except PeerRejected as exc:
                self._refuse(str(exc), where)
            if identity.service != service:
                self._refuse(f"the client certificate is for {identity.service!r}", where)
        else:
            where["auth"] = "none"
            self._refuse("send a join token, or renew with a current certificate", where)
        return self._issue(csr_pem, where)

    def issue_control_cert(self, csr_pem: bytes) -> IssuedCert:
        """The control plane's own certificate (its HTTPS listener)."""
        return self._issue(csr_pem, {"service": CONTROL_SERVICE, "auth": "control"})

    def _refuse(self, reason: str, where: dict[str, Any]) -> NoReturn:
        self._audit("refused", reason=reason, **where)
        log.warning("CA refused %s: %s", where.get("service"), reason)
        raise SignRefused(reason)

    def _issue(self, csr_pem: bytes, where: dict[str, Any]) -> IssuedCert:
        try:
            issued = self.ca.sign_csr(csr_pem, where["service"], self.utcnow(), self.setup.cert_ttl)
        except CsrRefused as exc:
            self._refuse(exc.reason, where)
        serial = format(issued.serial, "x")
        self._save_issued(issued)
        self._audit(
            "issued",
            serial=serial,
            spiffe_id=str(issued.spiffe_id),
            not_after=iso(issued.not_after),
            issuer=issued.issuer,
            **where,
        )
        self.store.record_cert(
            {
                "serial": serial,
                "service": where["service"],
                "spiffe_id": str(issued.spiffe_id),
                "issuer": issued.issuer,
                "generation": issued.generation,
                "not_before": issued.not_before.timestamp(),
                "not_after": issued.not_after.timestamp(),
                "node": where.get("node"),
                "token_id": where.get("token_id"),
                "auth": where["auth"],
            }
        )
        log.info("CA issued %s serial %s to %s", issued.spiffe_id, serial, where.get("node"))
        return issued

    def report_bundle(self, node_id: str, version: str) -> None:
        """A proxy's heartbeat said which trust bundle it has installed."""
        self.bundle_versions[node_id] = version

    def rotation_plan(self) -> rotation.RotationPlan:
        ca = self.ca
        return rotation.plan(
            ca.rotation,
            ca.bundle_version(),
            self.registry.node_ids(),
            self.bundle_versions,
            self.utcnow(),
            ca.retire_after(),
        )

    def begin_rotation(self) -> None:
        """Start a root rotation (raises CaError if one is running or the PKI is external)."""
        ca = self.ca
        gen = self._change(lambda: ca.begin_rotation(self.utcnow()))
        self._audit("rotation", step="begin", generation=gen.id, bundle_version=ca.bundle_version())
        log.info("CA rotation: new root %d is being distributed", gen.id)

    def switch_issuer(self) -> None:
        ca = self.ca
        self._change(ca.switch_issuer)
        self._audit("rotation", step="switch", generation=ca.issuer.id)
        log.info("CA rotation: now issuing from generation %d", ca.issuer.id)

    def tick(self) -> str | None:
        """The periodic CA step: the next rotation step if it is due; prune old rows."""
        ca, now = self.ca, self.utcnow()
        live = set(self.registry.node_ids())
        for node_id in [n for n in self.bundle_versions if n not in live]:
            del self.bundle_versions[node_id]
        self.store.prune_certs((now - CERT_HISTORY).timestamp())
        if ca.external:
            return None
        step = self.rotation_plan()
        try:
            if step.action == rotation.SWITCH:
                self.switch_issuer()
            elif step.action == rotation.RETIRE:
                old = ca.old_generation
                if self._change(lambda: ca.retire_old(now)):
                    self._audit("rotation", step="retire", generation=old)
                    log.info("CA rotation: old root %s retired", old)
        except CaError as exc:
            if self.setup.shared is None:
                raise
            # another replica took the step first: this one now holds its CA
            log.info("CA rotation: %s (another replica took the step)", exc)
        return step.action

    def status(self) -> dict[str, Any]:
        ca = self.ca
        step = self.rotation_plan()
        return {
            **ca.rotation_status(),
            "plan": {"action": step.action, "reason": step.reason, "waiting_for": step.waiting_for},
            "nodes": [
                {"node_id": n, "bundle_version": self.bundle_versions.get(n)}
                for n in sorted(self.registry.node_ids())
            ],
            "cert_ttl": self.setup.cert_ttl.total_seconds(),
        }

    def issued_certs(self, include_expired: bool = False) -> list[dict[str, Any]]:
        """Issued certificates (unexpired unless ``include_expired``), with ``old_root``:
        whether they chain to the root a rotation is replacing."""
        ca, now = self.ca, self.utcnow()
        rows = self.store.issued_certs(None if include_expired else now.timestamp())
        out = []
        for row in rows:
            not_before = datetime.fromtimestamp(row["not_before"], UTC)
            not_after = datetime.fromtimestamp(row["not_after"], UTC)
            out.append(
                {
                    **row,
                    "not_before": iso(not_before),
                    "not_after": iso(not_after),
                    "renew_after": iso(renew_at(not_before, not_after)),
                    "expired": now >= not_after,
                    "old_root": row["generation"] == ca.old_generation,
                }
            )
        return out
