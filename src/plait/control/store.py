"""The embedded store: numbered config versions and registry leases in one SQLite file.

``<data_dir>/plait.db`` (WAL mode; the directory is created private, mode 0700) holds:

- ``config_versions``: one row per change, ``version`` counting up from 1 and never
  reused, with ``created_at`` (unix seconds), a one-line ``summary`` and ``documents``:
  the *whole* config after that change as a JSON list of YAML-shaped resource documents.
  Every version is therefore a complete config on its own, which is what a revert needs.
  Version 0 is the empty config a fresh store starts with; it has no row.
- ``leases``: the registry's leases (node id, ttl, instances JSON, updated_at), so that a
  restarted control plane keeps serving the instances it knew (see
  :meth:`plait.control.registry.Registry.load`).
- ``join_tokens``: the CA's join tokens (:mod:`plait.ca.tokens`): the sha256 of the
  secret, never the secret; times are unix seconds.
- ``issued_certs``: one row per certificate the CA issued (serial as hex, service, issuer,
  validity, node and token if given), for ``plait certs`` and rotation.

A commit is one SQLite transaction: it is either fully written or not at all. The store is
synchronous and meant to be used from one thread (the control plane's event loop); each
call is a short local transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from plait.ca.tokens import TokenRecord
from plait.control.registry import LeaseRow
from plait.model.config import ConfigSet
from plait.model.load import config_from_documents, config_to_documents
from plait.xds.inputs import Instance

DB_NAME = "plait.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS config_versions (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    summary TEXT NOT NULL,
    documents TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    node_id TEXT PRIMARY KEY,
    ttl REAL NOT NULL,
    instances TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS join_tokens (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS issued_certs (
    serial TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    spiffe_id TEXT NOT NULL,
    issuer TEXT NOT NULL,
    generation INTEGER NOT NULL,
    not_before REAL NOT NULL,
    not_after REAL NOT NULL,
    node TEXT,
    token_id TEXT,
    auth TEXT NOT NULL
);
"""


class StoreConflict(Exception):
    """Another writer committed the next version first (only the etcd store, where several
    replicas share one store, raises it): re-read :meth:`Store.current` and retry."""


@dataclass(frozen=True)
class VersionInfo:
    version: int
    created_at: float
    summary: str

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "created_at": self.created_at, "summary": self.summary}


def _instances_to_json(instances: Iterable[Instance]) -> str:
    return json.dumps(
        [
            {
                "service": i.service,
                "address": i.address,
                "port": i.port,
                "labels": dict(i.labels),
                "healthy": i.healthy,
            }
            for i in instances
        ],
        sort_keys=True,
    )


def _instances_from_json(node_id: str, text: str) -> tuple[Instance, ...]:
    return tuple(
        Instance(
            service=d["service"],
            node_id=node_id,
            address=d["address"],
            port=int(d["port"]),
            labels=dict(d.get("labels") or {}),
            healthy=bool(d.get("healthy", True)),
        )
        for d in json.loads(text)
    )


class Store:
    """Config versions and leases in ``<data_dir>/plait.db``."""

    def __init__(self, data_dir: str) -> None:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        os.chmod(data_dir, 0o700)
        self.path = os.path.join(data_dir, DB_NAME)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._current: tuple[int, ConfigSet] | None = None

    def close(self) -> None:
        self._db.close()

    # -- config versions -------------------------------------------------------------

    def current(self) -> tuple[int, ConfigSet]:
        """The latest version and its config; ``(0, ConfigSet())`` for a fresh store."""
        if self._current is None:
            row = self._db.execute(
                "SELECT version, documents FROM config_versions ORDER BY version DESC LIMIT 1"
            ).fetchone()
            if row is None:
                self._current = (0, ConfigSet())
            else:
                self._current = (int(row[0]), _config_from_json(row[1]))
        return self._current

    def commit(self, cfg: ConfigSet, summary: str, now: float) -> int:
        """Record ``cfg`` as the new current config; return its version number."""
        documents = json.dumps(config_to_documents(cfg), sort_keys=True)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cur = self._db.execute(
                "INSERT INTO config_versions (created_at, summary, documents) VALUES (?, ?, ?)",
                (now, summary, documents),
            )
            version = int(cur.lastrowid or 0)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._current = (version, cfg)
        return version

    def history(self, limit: int = 50) -> list[VersionInfo]:
        """The newest ``limit`` versions, newest first."""
        rows = self._db.execute(
            "SELECT version, created_at, summary FROM config_versions "
            "ORDER BY version DESC LIMIT ?",
            (max(0, limit),),
        ).fetchall()
        return [VersionInfo(int(v), float(c), str(s)) for v, c, s in rows]

    def config_at(self, version: int) -> ConfigSet | None:
        """The whole config as of ``version`` (0 is empty), or None if there is no such version."""
        if version == 0:
            return ConfigSet()
        row = self._db.execute(
            "SELECT documents FROM config_versions WHERE version = ?", (version,)
        ).fetchone()
        return None if row is None else _config_from_json(row[0])

    # -- registry leases -------------------------------------------------------------

    def save_lease(self, row: LeaseRow, now: float) -> None:
        self._db.execute(
            "INSERT INTO leases (node_id, ttl, instances, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(node_id) DO UPDATE SET ttl = excluded.ttl, "
            "instances = excluded.instances, updated_at = excluded.updated_at",
            (row.node_id, row.ttl, _instances_to_json(row.instances), now),
        )

    def delete_leases(self, node_ids: Iterable[str]) -> None:
        ids = [(n,) for n in node_ids]
        if not ids:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("DELETE FROM leases WHERE node_id = ?", ids)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def load_leases(self) -> list[LeaseRow]:
        rows = self._db.execute(
            "SELECT node_id, ttl, instances FROM leases ORDER BY node_id"
        ).fetchall()
        return [
            LeaseRow(node_id=n, ttl=float(t), instances=_instances_from_json(n, i))
            for n, t, i in rows
        ]

    # -- CA: join tokens and issued certificates --------------------------------------

    def save_token(self, record: TokenRecord) -> None:
        revoked = None if record.revoked_at is None else record.revoked_at.timestamp()
        self._db.execute(
            "INSERT INTO join_tokens (id, service, secret_hash, created_at, expires_at, "
            "revoked_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET revoked_at = excluded.revoked_at",
            (
                record.id,
                record.service,
                record.secret_hash,
                record.created_at.timestamp(),
                record.expires_at.timestamp(),
                revoked,
            ),
        )

    def load_tokens(self) -> list[TokenRecord]:
        rows = self._db.execute(
            "SELECT id, service, secret_hash, created_at, expires_at, revoked_at "
            "FROM join_tokens ORDER BY created_at, id"
        ).fetchall()
        return [
            TokenRecord(
                id=i,
                service=s,
                secret_hash=h,
                created_at=_utc(c),
                expires_at=_utc(e),
                revoked_at=None if r is None else _utc(r),
            )
            for i, s, h, c, e, r in rows
        ]

    def record_cert(self, row: dict[str, Any]) -> None:
        """Remember an issued certificate: the keys of the ``issued_certs`` table, times
        as unix seconds."""
        self._db.execute(
            "INSERT OR REPLACE INTO issued_certs (serial, service, spiffe_id, issuer, "
            "generation, not_before, not_after, node, token_id, auth) VALUES "
            "(:serial, :service, :spiffe_id, :issuer, :generation, :not_before, :not_after, "
            ":node, :token_id, :auth)",
            row,
        )

    def issued_certs(self, not_after_since: float | None = None) -> list[dict[str, Any]]:
        """Issued certificates (those valid after ``not_after_since`` if given), oldest
        first."""
        cur = self._db.execute(
            "SELECT serial, service, spiffe_id, issuer, generation, not_before, not_after, "
            "node, token_id, auth FROM issued_certs WHERE not_after > ? "
            "ORDER BY not_before, serial",
            (float("-inf") if not_after_since is None else not_after_since,),
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def prune_certs(self, expired_before: float) -> int:
        """Forget certificates that expired before ``expired_before``; how many."""
        cur = self._db.execute("DELETE FROM issued_certs WHERE not_after < ?", (expired_before,))
        return int(cur.rowcount)


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _config_from_json(text: str) -> ConfigSet:
    return config_from_documents(json.loads(text))
