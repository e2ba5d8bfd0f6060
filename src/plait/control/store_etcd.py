"""The etcd store: the SQLite :class:`~plait.control.store.Store`'s interface on an etcd
cluster, so that several control-plane replicas serve one config (docs/resilience.md).

Key layout under a prefix (default ``/plait``; ``etcd://hosts/<prefix>`` picks another):

- ``<p>/config/version``: the current version number, decimal; absent means version 0;
- ``<p>/config/log/<N>``: ``{"version", "created_at", "summary"}`` of version N (N is
  zero-padded to 20 digits, so keys sort like numbers);
- ``<p>/config/docs/<N>``: the whole config after version N, a JSON list of documents;
- ``<p>/leases/<node>``: ``{"ttl", "instances", "updated_at"}``, attached to an etcd lease
  with the node's ttl: a node that stops heartbeating every replica disappears from etcd
  by itself, and every replica's watch removes it;
- ``<p>/ca/tokens/<id>`` and ``<p>/ca/certs/<serial>``: join tokens (hashes only) and
  issued certificates, as in the SQLite tables;
- ``<p>/ca/state.json`` and ``<p>/ca/gen-<N>/...``: the CA itself, keys included
  (:mod:`plait.control.ca_etcd`); the watch calls ``on_ca_change(revision)`` when
  ``state.json`` changed.

A commit is one etcd transaction: *if* ``config/version`` still holds the version this
replica read, write version N+1 (the three keys); otherwise nothing is written, the store
reloads and :class:`~plait.control.store.StoreConflict` is raised, and the control plane
recomputes the change on the newer config and tries again. Two replicas therefore never
both write version N.

A background thread (:meth:`EtcdStore.start_watch`) watches the prefix and keeps the
cached current config and the known leases up to date, calling ``on_change(config_changed,
lease_rows_put, nodes_gone)`` from that thread when another replica committed or a lease
changed or expired. It re-reads everything after each reconnect and whenever the stream
has been quiet for ``resync_interval`` seconds, so a missed event is never missed for long.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from plait.ca.tokens import TokenRecord
from plait.control.etcd import (
    EtcdClient,
    EtcdError,
    Event,
    KeyValue,
    compare_absent,
    compare_value,
    op_put,
    op_range,
    prefix_end,
)
from plait.control.registry import LeaseRow
from plait.control.store import (
    StoreConflict,
    VersionInfo,
    _instances_from_json,
    _instances_to_json,
    _utc,
)
from plait.model.config import ConfigSet
from plait.model.load import config_from_documents, config_to_documents

log = logging.getLogger("plait.control.store")

DEFAULT_PREFIX = "/plait"
OnChange = Callable[[bool, list[LeaseRow], list[str]], None]


def parse_store_url(url: str) -> tuple[str, str]:
    """``etcd://h1:p1,h2:p2[/prefix]`` as (endpoints, prefix)."""
    if not url.startswith("etcd://"):
        raise ValueError(f"{url!r}: an etcd store URL starts with etcd://")
    rest = url[len("etcd://") :]
    hosts, slash, path = rest.partition("/")
    prefix = "/" + path.strip("/") if slash and path.strip("/") else DEFAULT_PREFIX
    if not hosts:
        raise ValueError(f"{url!r}: name the etcd members, etcd://host:port[,host:port...]")
    return hosts, prefix


class Keys:
    """The key layout (pure)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix.rstrip("/")
        self.version = f"{self.prefix}/config/version"
        self.log_dir = f"{self.prefix}/config/log/"
        self.docs_dir = f"{self.prefix}/config/docs/"
        self.leases_dir = f"{self.prefix}/leases/"
        self.tokens_dir = f"{self.prefix}/ca/tokens/"
        self.certs_dir = f"{self.prefix}/ca/certs/"
        self.ca_state = f"{self.prefix}/ca/state.json"

    def log(self, version: int) -> str:
        return f"{self.log_dir}{version:020d}"

    def docs(self, version: int) -> str:
        return f"{self.docs_dir}{version:020d}"

    def lease(self, node_id: str) -> str:
        return self.leases_dir + node_id

    def node_of(self, key: str) -> str | None:
        return key[len(self.leases_dir) :] if key.startswith(self.leases_dir) else None


def commit_txn(
    keys: Keys, base: int, created_at: float, summary: str, documents: list[Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(compare, success, failure) of the transaction that commits version ``base + 1``
    only if the current version is still ``base`` (pure)."""
    version = base + 1
    compare = [compare_value(keys.version, str(base)) if base else compare_absent(keys.version)]
    meta = {"version": version, "created_at": created_at, "summary": summary}
    success = [
        op_put(keys.version, str(version)),
        op_put(keys.log(version), json.dumps(meta, sort_keys=True)),
        op_put(keys.docs(version), json.dumps(documents, sort_keys=True)),
    ]
    return compare, success, [op_range(keys.version)]


def lease_value(row: LeaseRow, now: float) -> str:
    return json.dumps(
        {
            "ttl": row.ttl,
            "instances": json.loads(_instances_to_json(row.instances)),
            "updated_at": now,
        },
        sort_keys=True,
    )


def lease_from_value(node_id: str, value: bytes) -> LeaseRow:
    data = json.loads(value)
    return LeaseRow(
        node_id=node_id,
        ttl=float(data["ttl"]),
        instances=_instances_from_json(node_id, json.dumps(data.get("instances", []))),
    )


class EtcdStore:
    """Config versions, leases, tokens and issued certificates in etcd."""

    # the control plane lets etcd expire leases instead of sweeping them itself
    expires_leases = True

    def __init__(
        self,
        endpoints: str,
        prefix: str = DEFAULT_PREFIX,
        client: EtcdClient | None = None,
        resync_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client if client is not None else EtcdClient(endpoints)
        self.keys = Keys(prefix)
        self.path = f"etcd://{self.client.describe()}{self.keys.prefix}"
        self.resync_interval = resync_interval
        self.clock = clock
        self._lock = threading.RLock()
        self._current: tuple[int, ConfigSet] | None = None
        self._leases: dict[str, LeaseRow] = {}  # as last seen in etcd
        self._lease_ids: dict[str, int] = {}  # node -> etcd lease id
        self._renewed: dict[str, float] = {}  # node -> clock() of the last keepalive
        self._own_rev: dict[str, int] = {}  # node -> revision of our own last put
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._watch: Any = None
        self._on_change: OnChange | None = None
        # called from the watch thread with the CA state's mod_revision when it changed
        self.on_ca_change: Callable[[int], None] | None = None
        self.current()  # fail early, with the endpoints in the message

    def close(self) -> None:
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- config versions -------------------------------------------------------------

    def _read_version(self) -> int:
        kv = self.client.get(self.keys.version)
        return int(kv.value) if kv is not None else 0

    def _load(self, version: int) -> ConfigSet:
        if version == 0:
            return ConfigSet()
        kv = self.client.get(self.keys.docs(version))
        if kv is None:
            raise EtcdError(f"etcd has version {version} but no {self.keys.docs(version)}")
        return config_from_documents(json.loads(kv.value))

    def _set_current(self, version: int, cfg: ConfigSet | None = None) -> bool:
        """Adopt ``version`` if newer than the cached one; True if it was."""
        with self._lock:
            if self._current is not None and self._current[0] >= version:
                return False
        loaded = cfg if cfg is not None else self._load(version)
        with self._lock:
            if self._current is not None and self._current[0] >= version:
                return False
            self._current = (version, loaded)
            return True

    def current(self) -> tuple[int, ConfigSet]:
        """The latest version known here and its config (kept fresh by the watch)."""
        with self._lock:
            cached = self._current
        if cached is None:
            self._set_current(self._read_version())
            with self._lock:
                assert self._current is not None
                cached = self._current
        return cached

    def commit(self, cfg: ConfigSet, summary: str, now: float) -> int:
        """Write ``cfg`` as version current+1 if no replica got there first; else reload
        and raise StoreConflict (the caller recomputes its change and retries)."""
        base, _ = self.current()
        documents = config_to_documents(cfg)
        compare, success, failure = commit_txn(self.keys, base, now, summary, documents)
        ok, responses = self.client.txn(compare, success, failure)
        if ok:
            self._set_current(base + 1, cfg)
            return base + 1
        winner = 0
        for resp in responses:
            for kv in resp.get("response_range", {}).get("kvs", []):
                winner = int(KeyValue.from_json(kv).value or b"0")
        self._set_current(winner)
        raise StoreConflict(
            f"config version {base + 1} was committed by another replica (now {winner})"
        )

    def history(self, limit: int = 50) -> list[VersionInfo]:
        if limit <= 0:
            return []
        kvs, _ = self.client.range(
            self.keys.log_dir, prefix_end(self.keys.log_dir), limit=limit, sort_descending=True
        )
        out = []
        for kv in kvs:
            meta = json.loads(kv.value)
            out.append(
                VersionInfo(int(meta["version"]), float(meta["created_at"]), str(meta["summary"]))
            )
        return out

    def config_at(self, version: int) -> ConfigSet | None:
        if version == 0:
            return ConfigSet()
        kv = self.client.get(self.keys.docs(version))
        return None if kv is None else config_from_documents(json.loads(kv.value))

    # -- registry leases -------------------------------------------------------------

    def save_lease(self, row: LeaseRow, now: float) -> None:
        """Put the node's row, attached to an etcd lease of the node's ttl (granted the
        first time, or again when the ttl changed or the old one expired)."""
        with self._lock:
            old = self._leases.get(row.node_id)
            lease_id = self._lease_ids.get(row.node_id, 0)
        if not lease_id or old is None or old.ttl != row.ttl:
            lease_id = self.client.grant(row.ttl)
        try:
            rev = self.client.put(self.keys.lease(row.node_id), lease_value(row, now), lease_id)
        except EtcdError as exc:
            if "lease not found" not in str(exc):
                raise
            lease_id = self.client.grant(row.ttl)
            rev = self.client.put(self.keys.lease(row.node_id), lease_value(row, now), lease_id)
        with self._lock:
            self._leases[row.node_id] = row
            self._lease_ids[row.node_id] = lease_id
            self._renewed[row.node_id] = self.clock()
            self._own_rev[row.node_id] = rev

    def renew_lease(self, row: LeaseRow, now: float) -> None:
        """A heartbeat that changed nothing: keep the node's etcd lease alive (at most
        every ttl/4), or put the row again if etcd no longer has it."""
        with self._lock:
            lease_id = self._lease_ids.get(row.node_id, 0)
            known = self._leases.get(row.node_id)
            renewed = self._renewed.get(row.node_id, float("-inf"))
        if not lease_id or known != row:
            self.save_lease(row, now)
            return
        if self.clock() - renewed < row.ttl / 4:
            return
        if self.client.keepalive(lease_id) <= 0:
            with self._lock:
                self._lease_ids.pop(row.node_id, None)
            self.save_lease(row, now)
            return
        with self._lock:
            self._renewed[row.node_id] = self.clock()

    def delete_leases(self, node_ids: Iterable[str]) -> None:
        for node_id in node_ids:
            self.client.delete(self.keys.lease(node_id))
            with self._lock:
                self._leases.pop(node_id, None)
                self._lease_ids.pop(node_id, None)

    def load_leases(self) -> list[LeaseRow]:
        kvs, _ = self.client.range(self.keys.leases_dir, prefix_end(self.keys.leases_dir))
        rows = []
        for kv in kvs:
            node = self.keys.node_of(kv.key)
            if node:
                row = lease_from_value(node, kv.value)
                rows.append(row)
                with self._lock:
                    self._leases[node] = row
                    self._lease_ids[node] = kv.lease
        return sorted(rows, key=lambda r: r.node_id)

    # -- CA: join tokens and issued certificates --------------------------------------

    def save_token(self, record: TokenRecord) -> None:
        value = {
            "id": record.id,
            "service": record.service,
            "secret_hash": record.secret_hash,
            "created_at": record.created_at.timestamp(),
            "expires_at": record.expires_at.timestamp(),
            "revoked_at": None if record.revoked_at is None else record.revoked_at.timestamp(),
        }
        self.client.put(self.keys.tokens_dir + record.id, json.dumps(value, sort_keys=True))

    def load_tokens(self) -> list[TokenRecord]:
        kvs, _ = self.client.range(self.keys.tokens_dir, prefix_end(self.keys.tokens_dir))
        out = []
        for kv in kvs:
            d = json.loads(kv.value)
            out.append(
                TokenRecord(
                    id=d["id"],
                    service=d["service"],
                    secret_hash=d["secret_hash"],
                    created_at=_utc(d["created_at"]),
                    expires_at=_utc(d["expires_at"]),
                    revoked_at=None if d["revoked_at"] is None else _utc(d["revoked_at"]),
                )
            )
        out.sort(key=lambda t: (t.created_at, t.id))
        return out

    def record_cert(self, row: dict[str, Any]) -> None:
        self.client.put(self.keys.certs_dir + str(row["serial"]), json.dumps(row, sort_keys=True))

    def issued_certs(self, not_after_since: float | None = None) -> list[dict[str, Any]]:
        kvs, _ = self.client.range(self.keys.certs_dir, prefix_end(self.keys.certs_dir))
        rows = [json.loads(kv.value) for kv in kvs]
        since = float("-inf") if not_after_since is None else not_after_since
        rows = [r for r in rows if r["not_after"] > since]
        rows.sort(key=lambda r: (r["not_before"], r["serial"]))
        return rows

    def prune_certs(self, expired_before: float) -> int:
        kvs, _ = self.client.range(self.keys.certs_dir, prefix_end(self.keys.certs_dir))
        gone = 0
        for kv in kvs:
            if json.loads(kv.value)["not_after"] < expired_before:
                self.client.delete(kv.key)
                gone += 1
        return gone

    # -- watch -------------------------------------------------------------------------

    def start_watch(self, on_change: OnChange) -> None:
        """Watch the prefix in a daemon thread; see the module docstring."""
        self._on_change = on_change
        self._thread = threading.Thread(target=self._watch_loop, name="etcd-watch", daemon=True)
        self._thread.start()

    def _notify(self, config: bool, puts: list[LeaseRow], gone: list[str]) -> None:
        if (config or puts or gone) and self._on_change is not None:
            try:
                self._on_change(config, puts, gone)
            except Exception:
                log.exception("etcd store: change callback failed")

    def resync(self) -> int:
        """Re-read the version and every lease at one revision; notify what changed.
        Returns the revision read at."""
        _, responses = self.client.txn(
            [],
            [
                op_range(self.keys.version),
                op_range(self.keys.leases_dir, prefix_end(self.keys.leases_dir)),
                op_range(self.keys.ca_state),
            ],
        )
        ca_kvs = responses[2].get("response_range", {}).get("kvs", [])
        if ca_kvs:
            self._notify_ca(KeyValue.from_json(ca_kvs[0]).mod_revision)
        version_kvs = responses[0].get("response_range", {}).get("kvs", [])
        lease_kvs = [
            KeyValue.from_json(kv) for kv in responses[1].get("response_range", {}).get("kvs", [])
        ]
        revision = int(responses[0].get("response_range", {}).get("header", {}).get("revision", 0))
        version = int(KeyValue.from_json(version_kvs[0]).value) if version_kvs else 0
        config = self._set_current(version)
        seen: dict[str, tuple[LeaseRow, int]] = {}
        for kv in lease_kvs:
            node = self.keys.node_of(kv.key)
            if node:
                seen[node] = (lease_from_value(node, kv.value), kv.lease)
        puts: list[LeaseRow] = []
        with self._lock:
            gone = [n for n in self._leases if n not in seen]
            for n in gone:
                self._leases.pop(n, None)
                self._lease_ids.pop(n, None)
            for node, (row, lease_id) in seen.items():
                if self._leases.get(node) != row:
                    puts.append(row)
                self._leases[node] = row
                self._lease_ids[node] = lease_id
        self._notify(config, puts, gone)
        return revision

    def _notify_ca(self, revision: int) -> None:
        if self.on_ca_change is not None:
            try:
                self.on_ca_change(revision)
            except Exception:
                log.exception("etcd store: CA change callback failed")

    def _apply(self, events: list[Event]) -> None:
        config = False
        ca_revision = 0
        puts: dict[str, LeaseRow] = {}
        gone: list[str] = []
        for event in events:
            kv = event.kv
            if kv.key == self.keys.version and event.type == "PUT":
                config = self._set_current(int(kv.value)) or config
                continue
            if kv.key == self.keys.ca_state and event.type == "PUT":
                ca_revision = max(ca_revision, kv.mod_revision)
                continue
            node = self.keys.node_of(kv.key)
            if not node:
                continue
            with self._lock:
                if kv.mod_revision < self._own_rev.get(node, 0):
                    continue  # an echo older than what this replica wrote since
                if event.type == "DELETE":
                    self._leases.pop(node, None)
                    self._lease_ids.pop(node, None)
                    puts.pop(node, None)
                    gone.append(node)
                else:
                    row = lease_from_value(node, kv.value)
                    self._leases[node] = row
                    self._lease_ids[node] = kv.lease
                    puts[node] = row
                    if node in gone:
                        gone.remove(node)
        self._notify(config, list(puts.values()), gone)
        if ca_revision:
            self._notify_ca(ca_revision)

    def _watch_loop(self) -> None:
        endpoints = self.client.endpoints
        index = 0
        while not self._stop.is_set():
            try:
                revision = self.resync()
                watch = self.client.watch(
                    self.keys.prefix + "/", prefix_end(self.keys.prefix + "/"), revision + 1
                )
                self._watch = watch
                if self._stop.is_set():
                    break
                for batch in watch.events(endpoints[index % len(endpoints)], self.resync_interval):
                    self._apply(batch)
            except (OSError, EtcdError, ValueError, http.client.HTTPException) as exc:
                if self._stop.is_set():
                    break
                if not isinstance(exc, TimeoutError):
                    log.info(
                        "etcd watch on %s:%d: %s; reconnecting",
                        *endpoints[index % len(endpoints)],
                        exc,
                    )
                    index += 1
                    self._stop.wait(0.1)
            except Exception:
                log.exception("etcd watch failed; reconnecting")
                index += 1
                self._stop.wait(0.5)
            finally:
                self._watch = None
