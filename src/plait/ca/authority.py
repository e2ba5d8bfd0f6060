"""The certificate authority: issues leaf certificates from CSRs, keeps the trust bundle,
and rotates its root.

A *generation* is one root and the intermediate it signed; the intermediate issues the
leaves. The CA has one issuing generation and a trust bundle of the roots that peers must
accept. A plait-managed CA creates its own generations; an existing PKI can be loaded
instead (:meth:`CertificateAuthority.from_pem`: a root certificate, an intermediate signed
by it and the intermediate's key; plait never sees that root's key, and cannot rotate it).

Issuing (:meth:`sign_csr`): the CSR's signature must verify and its key must be ECDSA
P-256; the rest of the CSR (subject, SANs, extensions, CA=true wishes) is ignored. The
certificate is built by :func:`plait.ca.profile.build_leaf` for the service the *caller*
names (after the caller authenticated it), so the CA signs nothing but its own profile.
A bad CSR raises :class:`CsrRefused` with a reason for the audit log.

Root rotation is a table-driven state machine (:data:`TRANSITIONS`):

====================  ===============  ==============================================
state                 bundle           issuer
====================  ===============  ==============================================
``stable``            [current]        current
``distributing``      [old, new]       old    (``begin_rotation``: new root + intermediate)
``retiring``          [old, new]       new    (``switch_issuer``: every proxy has the bundle)
``stable``            [new]            new    (``retire_old``: now > last old notAfter)
====================  ===============  ==============================================

Pure apart from :meth:`save`/:meth:`load`; time and randomness are passed in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from plait.ca import pki_files
from plait.ca.checks import (
    MAX_CSR_BYTES,
    CaError,
    CsrRefused,
    PeerRejected,
    check_ca_pair,
    csr_public_key,
    iso,
    issued_by,
    spiffe_id_of,
)
from plait.ca.profile import (
    INTERMEDIATE_LIFETIME,
    ROOT_LIFETIME,
    IssuerKey,
    Rng,
    build_ca,
    build_leaf,
    ca_name,
    new_key,
    random_serial,
)
from plait.ca.spiffe import InvalidSpiffeId, SpiffeId, check_trust_domain

STABLE, DISTRIBUTING, RETIRING = "stable", "distributing", "retiring"
# (state, operation) -> next state; any other pair is refused with a CaError.
TRANSITIONS = {
    (STABLE, "begin_rotation"): DISTRIBUTING,
    (DISTRIBUTING, "switch_issuer"): RETIRING,
    (RETIRING, "retire_old"): STABLE,
}


@dataclass(frozen=True)
class Generation:
    """A root and the intermediate it signed. ``root_key`` is None for an existing PKI."""

    id: int
    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey | None
    intermediate: x509.Certificate
    intermediate_key: IssuerKey

    @property
    def issuer_name(self) -> str:
        cns = self.intermediate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return str(cns[0].value) if cns else self.intermediate.subject.rfc4514_string()

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "root": self.root.subject.rfc4514_string(),
            "root_sha256": self.root.fingerprint(pki_files.SHA256).hex(),
            "root_not_after": iso(self.root.not_valid_after_utc),
            "issuer": self.issuer_name,
            "issuer_not_after": iso(self.intermediate.not_valid_after_utc),
        }


@dataclass(frozen=True)
class IssuedCert:
    cert_pem: bytes  # the leaf alone
    chain_pem: bytes  # leaf + intermediate: what a TLS peer presents
    serial: int
    not_after: datetime
    spiffe_id: SpiffeId
    not_before: datetime
    issuer: str  # the intermediate's common name
    generation: int


@dataclass
class _State:
    rotation: str = STABLE
    issuer: int = 1
    bundle: tuple[int, ...] = (1,)
    old: int | None = None
    last_not_after: dict[int, datetime] = field(default_factory=dict)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def new_generation(trust_domain: str, gen_id: int, now: datetime, rng: Rng) -> Generation:
    root_key, inter_key = new_key(), new_key()
    root = build_ca(
        root_key, ca_name(trust_domain, "root", gen_id), now, ROOT_LIFETIME, random_serial(rng), 1
    )
    inter = build_ca(
        inter_key,
        ca_name(trust_domain, "issuing", gen_id),
        now,
        INTERMEDIATE_LIFETIME,
        random_serial(rng),
        0,
        issuer=root,
        issuer_key=root_key,
    )
    return Generation(gen_id, root, root_key, inter, inter_key)


def _pair(
    gen: Generation,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey | None, x509.Certificate, IssuerKey]:
    return gen.root, gen.root_key, gen.intermediate, gen.intermediate_key


__all__ = [
    "MAX_CSR_BYTES",
    "CaError",
    "CertificateAuthority",
    "CsrRefused",
    "Generation",
    "IssuedCert",
    "PeerRejected",
    "iso",
    "spiffe_id_of",
]


class CertificateAuthority:
    def __init__(
        self,
        trust_domain: str,
        generations: Iterable[Generation],
        rng: Rng,
        state: _State | None = None,
        external: bool = False,
    ) -> None:
        self.trust_domain = check_trust_domain(trust_domain)
        self._gens = {g.id: g for g in generations}
        self._rng = rng
        self._state = state if state is not None else _State(issuer=min(self._gens))
        self.external = external
        st = self._state
        if st.issuer not in self._gens or not set(st.bundle) <= set(self._gens):
            raise CaError("the CA state names a generation that does not exist")

    # -- construction ----------------------------------------------------------------

    @classmethod
    def create(cls, trust_domain: str, now: datetime, rng: Rng) -> CertificateAuthority:
        """A new CA: root (10 years, pathLen 1) and issuing intermediate (1 year, pathLen 0)."""
        check_trust_domain(trust_domain)
        return cls(trust_domain, [new_generation(trust_domain, 1, now, rng)], rng)

    @classmethod
    def from_pem(
        cls,
        trust_domain: str,
        root_pem: bytes,
        intermediate_pem: bytes,
        intermediate_key_pem: bytes,
        now: datetime,
        rng: Rng,
    ) -> CertificateAuthority:
        """A CA on an existing PKI. Raises CaError when the files do not fit together."""
        try:
            gen = Generation(
                1,
                pki_files.one_cert(root_pem, "the root file"),
                None,
                pki_files.one_cert(intermediate_pem, "the intermediate file"),
                pki_files.issuer_key(intermediate_key_pem, "the intermediate key file"),
            )
        except pki_files.PkiFileError as exc:
            raise CaError(str(exc)) from None
        check_ca_pair(*_pair(gen), now)
        return cls(trust_domain, [gen], rng, external=True)

    @classmethod
    def load(cls, directory: str, now: datetime, rng: Rng) -> CertificateAuthority:
        """Load what :meth:`save` wrote. Raises CaError (or OSError) if it is unusable."""
        try:
            parts = pki_files.read(directory)
        except (pki_files.PkiFileError, KeyError, ValueError, TypeError) as exc:
            raise CaError(f"the CA in {directory} cannot be loaded: {exc}") from None
        return cls._from_parts(parts, now, rng, directory)

    @classmethod
    def from_blobs(
        cls,
        state_bytes: bytes,
        blobs: Mapping[str, bytes],
        now: datetime,
        rng: Rng,
        where: str,
    ) -> CertificateAuthority:
        """Load what :meth:`to_blobs` gave (e.g. from etcd). Raises CaError."""
        try:
            parts = pki_files.from_blobs(state_bytes, blobs.get, where)
        except (pki_files.PkiFileError, KeyError, ValueError, TypeError) as exc:
            raise CaError(f"the CA in {where} cannot be loaded: {exc}") from None
        return cls._from_parts(parts, now, rng, where)

    @classmethod
    def _from_parts(
        cls,
        parts: tuple[str, list[pki_files.GenerationFiles], dict[str, Any]],
        now: datetime,
        rng: Rng,
        where: str,
    ) -> CertificateAuthority:
        trust_domain, files, raw = parts
        try:
            gens = [Generation(*f) for f in files]
            for gen in gens:
                check_ca_pair(*_pair(gen), now)
            state = _State(
                rotation=raw["rotation"],
                issuer=int(raw["issuer"]),
                bundle=tuple(int(i) for i in raw["bundle"]),
                old=None if raw.get("old") is None else int(raw["old"]),
                last_not_after={
                    int(k): datetime.fromisoformat(v) for k, v in raw["last_not_after"].items()
                },
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise CaError(f"the CA in {where} cannot be loaded: {exc}") from None
        if state.rotation not in (STABLE, DISTRIBUTING, RETIRING):
            raise CaError(f"unknown rotation state {state.rotation!r} in {where}")
        return cls(trust_domain, gens, rng, state)

    def _saved_parts(
        self,
    ) -> tuple[str, list[pki_files.GenerationFiles], dict[str, Any]]:
        if self.external:
            raise CaError("a CA on an existing PKI is not saved: its files stay where they are")
        st = self._state
        return (
            self.trust_domain,
            [
                (g.id, g.root, g.root_key, g.intermediate, g.intermediate_key)
                for g in self._gens.values()
            ],
            {
                "rotation": st.rotation,
                "issuer": st.issuer,
                "bundle": list(st.bundle),
                "old": st.old,
                "last_not_after": {str(k): v.isoformat() for k, v in st.last_not_after.items()},
            },
        )

    def save(self, directory: str) -> None:
        """Write keys (0600), certificates (0644) and state.json; drop retired generations."""
        pki_files.write(directory, *self._saved_parts())

    def to_blobs(self) -> tuple[bytes, dict[str, bytes]]:
        """state.json's bytes and ``gen-<N>/<file>`` -> bytes (keys unencrypted PEM)."""
        state_bytes, files = pki_files.to_blobs(*self._saved_parts())
        return state_bytes, {name: data for name, (data, _) in files.items()}

    def adopt(self, other: CertificateAuthority) -> None:
        """Take ``other``'s generations and state (a newer copy of the same CA, e.g. saved
        by another control-plane replica), keeping this object (others hold its methods)."""
        if other.trust_domain != self.trust_domain or other.external != self.external:
            raise CaError(f"the shared CA is for {other.trust_domain}, not {self.trust_domain}")
        self._gens = dict(other._gens)
        self._state = replace(other._state, last_not_after=dict(other._state.last_not_after))

    def note_issued(self, gen_id: int, not_after: datetime) -> None:
        """Remember that generation ``gen_id`` issued a certificate valid until
        ``not_after`` (sign_csr does it; this merges another copy's issuance)."""
        last = self._state.last_not_after.get(gen_id)
        if gen_id in self._gens and (last is None or not_after > last):
            self._state.last_not_after[gen_id] = not_after

    # -- issuing ---------------------------------------------------------------------

    @property
    def issuer(self) -> Generation:
        return self._gens[self._state.issuer]

    def sign_csr(
        self, csr_pem: bytes, service: str, now: datetime, lifetime: timedelta
    ) -> IssuedCert:
        """Issue a leaf for ``service`` with the CSR's public key (see module docstring)."""
        try:
            spiffe = SpiffeId.for_service(self.trust_domain, service)
        except InvalidSpiffeId as exc:
            raise CsrRefused(str(exc)) from None
        key = csr_public_key(csr_pem)
        gen = self.issuer
        if now >= gen.intermediate.not_valid_after_utc:
            raise CsrRefused("the issuing CA has expired: rotate the CA (`plait ca rotate`)")
        cert = build_leaf(
            key,
            spiffe,
            gen.intermediate,
            gen.intermediate_key,
            now,
            lifetime,
            random_serial(self._rng),
        )
        last = self._state.last_not_after.get(gen.id)
        if last is None or cert.not_valid_after_utc > last:
            self._state.last_not_after[gen.id] = cert.not_valid_after_utc
        return IssuedCert(
            cert_pem=pem(cert),
            chain_pem=pem(cert) + pem(gen.intermediate),
            serial=cert.serial_number,
            not_after=cert.not_valid_after_utc,
            spiffe_id=spiffe,
            not_before=cert.not_valid_before_utc,
            issuer=gen.issuer_name,
            generation=gen.id,
        )

    def verify_peer(self, leaf_der: bytes, now: datetime) -> SpiffeId:
        """The identity in a client's leaf certificate if this CA issued it from a root in
        the bundle and it is valid at ``now``; else raise PeerRejected."""
        try:
            cert = x509.load_der_x509_certificate(leaf_der)
        except ValueError:
            raise PeerRejected("the client certificate cannot be parsed") from None
        for gen_id in self._state.bundle:
            inter = self._gens[gen_id].intermediate
            if cert.issuer == inter.subject and issued_by(cert, inter):
                break
        else:
            raise PeerRejected("the client certificate was not issued by this CA")
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise PeerRejected("the client certificate is not valid now")
        spiffe = spiffe_id_of(cert)
        if spiffe.trust_domain != self.trust_domain:
            raise PeerRejected(f"the client certificate is for {spiffe.trust_domain}")
        return spiffe

    # -- trust bundle ----------------------------------------------------------------

    def trust_bundle(self) -> bytes:
        """PEM of every root peers must accept now, oldest first."""
        return b"".join(pem(self._gens[i].root) for i in self._state.bundle)

    def bundle_version(self) -> str:
        """The sha256 (hex) of :meth:`trust_bundle`: proxies report it once installed."""
        return hashlib.sha256(self.trust_bundle()).hexdigest()

    def generation(self, gen_id: int) -> Generation | None:
        return self._gens.get(gen_id)

    # -- rotation --------------------------------------------------------------------

    def _step(self, operation: str) -> str:
        if self.external:
            raise CaError(
                "this CA runs on an existing PKI (--ca-root/--ca-cert/--ca-key): rotate "
                "it outside plait and restart the control plane with the new files"
            )
        after = TRANSITIONS.get((self._state.rotation, operation))
        if after is None:
            raise CaError(f"cannot {operation.replace('_', ' ')} while {self._state.rotation}")
        return after

    def begin_rotation(self, now: datetime) -> Generation:
        """Create the next root + intermediate and add the new root to the bundle."""
        after = self._step("begin_rotation")
        gen = new_generation(self.trust_domain, max(self._gens) + 1, now, self._rng)
        self._gens[gen.id] = gen
        old = self._state.issuer
        self._state = replace(
            self._state,
            rotation=after,
            bundle=(old, gen.id),
            old=old,
            last_not_after=dict(self._state.last_not_after),
        )
        return gen

    def switch_issuer(self) -> None:
        """Issue from the new intermediate from now on (every peer trusts the new root)."""
        after = self._step("switch_issuer")
        new = self._state.bundle[-1]
        self._state = replace(self._state, rotation=after, issuer=new)

    def retire_after(self) -> datetime | None:
        """The last notAfter the old issuer signed (None: nothing, or no rotation)."""
        old = self._state.old
        return None if old is None else self._state.last_not_after.get(old)

    def retire_old(self, now: datetime) -> bool:
        """Drop the old root once every certificate it vouched for has expired; whether
        it did (False: too early, try again later)."""
        after = self._step("retire_old")
        deadline = self.retire_after()
        if deadline is not None and now <= deadline:
            return False
        old = self._state.old
        assert old is not None
        del self._gens[old]
        self._state.last_not_after.pop(old, None)
        self._state = replace(self._state, rotation=after, bundle=(self._state.issuer,), old=None)
        return True

    def rotation_status(self) -> dict[str, Any]:
        st = self._state
        deadline = self.retire_after()
        return {
            "state": st.rotation,
            "trust_domain": self.trust_domain,
            "external": self.external,
            "issuer": st.issuer,
            "old": st.old,
            "bundle": list(st.bundle),
            "bundle_version": self.bundle_version(),
            "retire_after": None if deadline is None else iso(deadline),
            "generations": [self._gens[i].info() for i in sorted(self._gens)],
        }

    @property
    def rotation(self) -> str:
        return self._state.rotation

    @property
    def old_generation(self) -> int | None:
        return self._state.old
