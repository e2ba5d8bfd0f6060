"""SQLite store: versions, history, atomic commits, reopening, leases."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from plait.control.registry import LeaseRow
from plait.control.store import DB_NAME, Store
from plait.model.config import ConfigSet
from plait.model.load import load_text
from plait.xds.inputs import Instance

ORDERS = """\
apiVersion: plait/v1
kind: Service
metadata: {name: orders}
"""
ORDERS_AND_ROUTE = (
    ORDERS
    + """\
---
apiVersion: plait/v1
kind: Route
metadata: {name: orders}
spec:
  service: orders
  rules:
    - backends: [{subset: {version: v2}}]
"""
)


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    return str(tmp_path / "control")


def test_fresh_store_is_version_zero_and_private(data_dir: str) -> None:
    store = Store(data_dir)
    assert store.current() == (0, ConfigSet())
    assert store.history() == []
    assert store.config_at(0) == ConfigSet()
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
    assert os.path.exists(os.path.join(data_dir, DB_NAME))
    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    store.close()


def test_commits_count_up_and_history_is_newest_first(data_dir: str) -> None:
    store = Store(data_dir)
    one = load_text(ORDERS, "a.yaml")
    two = load_text(ORDERS_AND_ROUTE, "b.yaml")
    assert store.commit(one, "apply a.yaml: +Service/orders", now=100.0) == 1
    assert store.commit(two, "apply b.yaml: +Route/orders", now=200.0) == 2
    assert store.current() == (2, two)
    assert [(v.version, v.created_at, v.summary) for v in store.history()] == [
        (2, 200.0, "apply b.yaml: +Route/orders"),
        (1, 100.0, "apply a.yaml: +Service/orders"),
    ]
    assert [v.version for v in store.history(limit=1)] == [2]
    assert store.history()[0].to_dict() == {
        "version": 2,
        "created_at": 200.0,
        "summary": "apply b.yaml: +Route/orders",
    }
    assert store.config_at(1) == one
    assert store.config_at(3) is None
    store.close()


def test_reopen_reads_the_latest_version(data_dir: str) -> None:
    store = Store(data_dir)
    cfg = load_text(ORDERS_AND_ROUTE, "b.yaml")
    store.commit(load_text(ORDERS, "a.yaml"), "one", now=1.0)
    store.commit(cfg, "two", now=2.0)
    store.close()
    again = Store(data_dir)
    assert again.current() == (2, cfg)
    assert len(again.history()) == 2
    # Versions are never reused, even after the newest row is gone.
    again._db.execute("DELETE FROM config_versions WHERE version = 2")
    assert again.commit(cfg, "three", now=3.0) == 3
    again.close()


class _FailOnCommit:
    """Wraps the store's connection; the COMMIT of a transaction fails (a full disk)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full (simulated)")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)


def test_a_failed_commit_leaves_nothing_behind(data_dir: str) -> None:
    store = Store(data_dir)
    cfg = load_text(ORDERS, "a.yaml")
    store.commit(cfg, "one", now=1.0)
    real = store._db
    store._db = _FailOnCommit(real)  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError):
        store.commit(load_text(ORDERS_AND_ROUTE, "b.yaml"), "two", now=2.0)
    store._db = real
    assert store.current() == (1, cfg)
    assert [v.version for v in store.history()] == [1]
    assert not real.in_transaction
    # Another connection (another process) sees the same: nothing half-written.
    other = sqlite3.connect(os.path.join(data_dir, DB_NAME))
    assert other.execute("SELECT COUNT(*) FROM config_versions").fetchone()[0] == 1
    other.close()
    # The store keeps working, and the failed version number was not handed out.
    assert store.commit(load_text(ORDERS_AND_ROUTE, "b.yaml"), "two", now=3.0) == 2
    store.close()


def test_commit_is_invisible_to_readers_until_done(data_dir: str) -> None:
    store = Store(data_dir)
    reader = Store(data_dir)
    store.commit(load_text(ORDERS, "a.yaml"), "one", now=1.0)
    assert reader.history()[0].version == 1
    store.close()
    reader.close()


def test_leases_round_trip(data_dir: str) -> None:
    store = Store(data_dir)
    a = LeaseRow("a", 10.0, (Instance("orders", "a", "127.0.0.1", 1, {"version": "v1"}, True),))
    b = LeaseRow("b", 5.0, ())
    store.save_lease(a, now=1.0)
    store.save_lease(b, now=1.0)
    b2 = LeaseRow("b", 7.0, (Instance("users", "b", "10.0.0.2", 2, {}, False),))
    store.save_lease(b2, now=2.0)
    store.close()
    again = Store(data_dir)
    assert again.load_leases() == [a, b2]
    again.delete_leases(["a", "missing"])
    assert again.load_leases() == [b2]
    again.delete_leases([])
    again.close()
