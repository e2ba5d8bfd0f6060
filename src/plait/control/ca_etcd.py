"""The service CA's state in etcd, shared by every control-plane replica of an etcd store.

With ``plait control --store etcd://...`` a plait-managed CA is not kept in
``<data-dir>/ca/`` but under ``<prefix>/ca/`` in etcd, with the names of the file layout
(:mod:`plait.ca.pki_files`)::

    <p>/ca/state.json                 trust domain, rotation state, issuer, bundle, ...
    <p>/ca/gen-<N>/root.crt, root.key, intermediate.crt, intermediate.key

The private keys are unencrypted PEM: whoever can read the prefix can issue certificates
(docs/security.md). The *CA state revision* is the etcd ``mod_revision`` of
``state.json``: every write is one transaction that holds only if ``state.json`` is still
at the revision this replica last read or wrote (:meth:`EtcdCa.save`), so two replicas
never both take the same rotation step. The first replica to start on an empty prefix
creates the CA with a create-if-absent transaction (:meth:`EtcdCa.create`); a replica that
loses that race loads the winner's CA, so all replicas share one CA. Other replicas hear
of a change through the store's watch and call :meth:`EtcdCa.refresh`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from plait.ca.authority import CaError, CertificateAuthority
from plait.ca.pki_files import STATE_FILE
from plait.ca.profile import Rng
from plait.control.etcd import (
    EtcdClient,
    KeyValue,
    compare_absent,
    compare_mod_revision,
    op_delete,
    op_put,
    op_range,
    prefix_end,
)

log = logging.getLogger("plait.control.ca")

Snapshot = tuple[bytes, dict[str, bytes], int]  # state.json, gen files, its mod_revision


def state_key(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/ca/{STATE_FILE}"


class EtcdCa:
    """Load, create and save one CA under ``<prefix>/ca/`` (see the module docstring)."""

    def __init__(self, client: EtcdClient, prefix: str) -> None:
        self.client = client
        self.dir = f"{prefix.rstrip('/')}/ca/"
        self.state_key = state_key(prefix)
        self.gens_dir = self.dir + "gen-"
        self.where = f"etcd {self.dir.rstrip('/')}"
        self.revision = 0  # mod_revision of state.json in the copy this replica holds
        self._gen_dirs: set[str] = set()  # "gen-<N>" directories in etcd at that revision
        self._lock = threading.Lock()

    # -- reading -----------------------------------------------------------------------

    def _read_ops(self) -> list[dict[str, Any]]:
        return [op_range(self.state_key), op_range(self.gens_dir, prefix_end(self.gens_dir))]

    def _parse(self, responses: list[dict[str, Any]]) -> Snapshot | None:
        def kvs(i: int) -> list[KeyValue]:
            rng = responses[i].get("response_range", {})
            return [KeyValue.from_json(kv) for kv in rng.get("kvs", [])]

        state = kvs(0)
        if not state:
            return None
        blobs = {kv.key[len(self.dir) :]: kv.value for kv in kvs(1)}
        return state[0].value, blobs, state[0].mod_revision

    def read(self) -> Snapshot | None:
        """state.json, the generation files and the CA state revision, read at one
        revision; None if there is no CA in etcd."""
        _, responses = self.client.txn([], self._read_ops())
        return self._parse(responses)

    def _adopt_snapshot(self, snap: Snapshot, now: datetime, rng: Rng) -> CertificateAuthority:
        state_bytes, blobs, revision = snap
        ca = CertificateAuthority.from_blobs(state_bytes, blobs, now, rng, self.where)
        self.revision = revision
        self._gen_dirs = {name.split("/")[0] for name in blobs}
        return ca

    def load(self, now: datetime, rng: Rng) -> CertificateAuthority | None:
        """The CA in etcd (None if there is none). Raises CaError if it is unusable."""
        snap = self.read()
        return None if snap is None else self._adopt_snapshot(snap, now, rng)

    # -- writing -----------------------------------------------------------------------

    def _write_ops(self, ca: CertificateAuthority, new: bool) -> tuple[list[Any], set[str]]:
        state_bytes, blobs = ca.to_blobs()
        gen_dirs = {name.split("/")[0] for name in blobs}
        ops = [
            op_put(self.dir + name, data)
            for name, data in sorted(blobs.items())
            if new or name.split("/")[0] not in self._gen_dirs  # generation files never change
        ]
        for gone in sorted(self._gen_dirs - gen_dirs):  # a retired generation
            ops.append(op_delete(self.dir + gone + "/", prefix_end(self.dir + gone + "/")))
        ops.append(op_put(self.state_key, state_bytes))
        return ops, gen_dirs

    @staticmethod
    def _revision(responses: list[dict[str, Any]]) -> int:
        for resp in responses:
            for body in resp.values():
                rev = int(body.get("header", {}).get("revision", 0) or 0)
                if rev:
                    return rev
        raise CaError("etcd did not say at which revision it saved the CA")

    def create(
        self, ca: CertificateAuthority, now: datetime, rng: Rng
    ) -> tuple[CertificateAuthority, bool]:
        """Write ``ca`` if etcd has no CA yet; else load the one there. Returns the CA
        this replica must use and whether it was ``ca`` (False: another replica's)."""
        with self._lock:
            ops, gen_dirs = self._write_ops(ca, new=True)
            ok, responses = self.client.txn([compare_absent(self.state_key)], ops, self._read_ops())
            if ok:
                self.revision = self._revision(responses)
                self._gen_dirs = gen_dirs
                return ca, True
            snap = self._parse(responses)
            if snap is None:
                raise CaError(f"{self.where}: the CA is being written; start again")
            return self._adopt_snapshot(snap, now, rng), False

    def save(self, ca: CertificateAuthority) -> bool:
        """Write ``ca`` if etcd still holds the revision this replica last read or wrote;
        False (nothing written) if another replica changed the CA since."""
        with self._lock:
            ops, gen_dirs = self._write_ops(ca, new=False)
            compare = [compare_mod_revision(self.state_key, self.revision)]
            ok, responses = self.client.txn(compare, ops)
            if not ok:
                return False
            self.revision = self._revision(responses)
            self._gen_dirs = gen_dirs
            return True

    def refresh(
        self, ca: CertificateAuthority, now: datetime, rng: Rng, revision: int | None = None
    ) -> bool:
        """Adopt the CA in etcd into ``ca`` if it is not the revision held here (skip the
        read if ``revision``, from a watch event, is not newer). True if ``ca`` changed."""
        with self._lock:
            if revision is not None and revision <= self.revision:
                return False
            snap = self.read()
            if snap is None or snap[2] == self.revision:
                return False
            before, bundle = self.revision, ca.bundle_version()
            ca.adopt(self._adopt_snapshot(snap, now, rng))
        level = logging.DEBUG if ca.bundle_version() == bundle else logging.INFO
        log.log(
            level, "CA: adopted the shared CA at etcd revision %d (was %d)", self.revision, before
        )
        return True


def retry_conflicts(
    shared: EtcdCa,
    ca: CertificateAuthority,
    now: Callable[[], datetime],
    rng: Rng,
    step: Callable[[], Any],
    attempts: int = 5,
) -> Any:
    """Take ``step`` (a change to ``ca``) on the latest shared CA and save it; if another
    replica saved first, adopt its CA and take the step again. A step that returns False
    changed nothing and is not saved. Raises CaError when the step does (e.g. the other
    replica already took it) or every attempt conflicted."""
    shared.refresh(ca, now(), rng)
    for _ in range(attempts):
        result = step()
        if result is False or shared.save(ca):
            return result
        shared.refresh(ca, now(), rng)
    raise CaError("the CA kept changing on other replicas; try again")
