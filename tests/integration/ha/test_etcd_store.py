"""EtcdStore against a real 3-member etcd cluster: two stores play two replicas."""

from __future__ import annotations

import threading
import time

from plait.control.registry import LeaseRow
from plait.control.store import StoreConflict
from plait.control.store_etcd import EtcdStore
from plait.model.config import ConfigSet
from plait.model.load import apply_text
from plait.xds.inputs import Instance


def _svc(name: str) -> str:
    return (
        f"apiVersion: plait/v1\nkind: Service\nmetadata: {{name: {name}}}\n"
        "spec: {protocol: http, ports: [{name: http, port: 80}]}\n"
    )


def _wait(pred, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_commit_history_current_across_replicas(etcd_cluster, etcd_prefix) -> None:  # type: ignore[no-untyped-def]
    a = EtcdStore(etcd_cluster.endpoints, etcd_prefix)
    b = EtcdStore(etcd_cluster.endpoints, etcd_prefix)
    seen: list[bool] = []
    b.start_watch(lambda config, puts, gone: seen.append(config))
    try:
        assert a.current()[0] == 0 and b.current()[0] == 0
        cfg, _ = apply_text(ConfigSet(), _svc("orders"), "a.yaml")
        assert a.commit(cfg, "apply a.yaml: +Service/orders", 100.0) == 1
        _wait(lambda: b.current()[0] == 1)
        assert set(b.current()[1].services) == {"orders"}
        assert True in seen
        # b is current now, so it commits 2 on top of 1
        cfg2, _ = apply_text(b.current()[1], _svc("inventory"), "b.yaml")
        assert b.commit(cfg2, "apply b.yaml", 101.0) == 2
        # a has not heard of 2 unless its cache moved; a stale commit must conflict
        a._current = (1, cfg)
        try:
            a.commit(cfg, "stale", 102.0)
            raise AssertionError("a stale commit must not win")
        except StoreConflict:
            pass
        assert a.current()[0] == 2
        assert [v.version for v in a.history()] == [2, 1]
        assert a.history()[1].summary == "apply a.yaml: +Service/orders"
        assert set(a.config_at(2).services) == {"orders", "inventory"}  # type: ignore[union-attr]
        assert a.config_at(7) is None
    finally:
        a.close()
        b.close()


def test_concurrent_commits_exactly_one_wins_per_version(etcd_cluster, etcd_prefix) -> None:  # type: ignore[no-untyped-def]
    stores = [EtcdStore(etcd_cluster.endpoints, etcd_prefix) for _ in range(4)]
    wins: dict[int, list[int]] = {}
    lock = threading.Lock()

    def writer(i: int, store: EtcdStore) -> None:
        for n in range(8):
            while True:
                try:
                    v = store.commit(ConfigSet(), f"writer {i} change {n}", time.time())
                except StoreConflict:
                    continue
                with lock:
                    wins.setdefault(v, []).append(i)
                break

    threads = [threading.Thread(target=writer, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert sorted(wins) == list(range(1, 33))
        assert all(len(w) == 1 for w in wins.values()), wins
        history = stores[0].history(100)
        assert [v.version for v in history] == list(range(32, 0, -1))
    finally:
        for s in stores:
            s.close()


def test_lease_expiry_in_etcd_removes_the_instance(etcd_cluster, etcd_prefix) -> None:  # type: ignore[no-untyped-def]
    a = EtcdStore(etcd_cluster.endpoints, etcd_prefix)
    b = EtcdStore(etcd_cluster.endpoints, etcd_prefix)
    gone: list[str] = []
    puts: list[str] = []
    b.start_watch(lambda c, p, g: (gone.extend(g), puts.extend(r.node_id for r in p)))
    inst = Instance(service="orders", node_id="n1", address="127.0.0.1", port=9001)
    row = LeaseRow("n1", 2.0, (inst,))
    try:
        a.save_lease(row, time.time())
        _wait(lambda: "n1" in puts)
        assert [r.node_id for r in b.load_leases()] == ["n1"]
        # renewals keep it (b renews a lease that a created: heartbeats move between replicas)
        for _ in range(6):
            b.renew_lease(row, time.time())
            time.sleep(0.5)
        assert [r.node_id for r in a.load_leases()] == ["n1"] and not gone
        _wait(lambda: "n1" in gone, timeout=10)  # no more renewals: etcd expires it
        assert a.load_leases() == []
    finally:
        a.close()
        b.close()
