"""ControlPlane + guard: held changes never reach the cache; sync-before-serve gating."""

from __future__ import annotations

from pathlib import Path

from plait.control.guard import GuardSettings
from plait.control.plane import ControlPlane
from plait.control.store import Store
from plait.xds.inputs import Instance

SERVICES = "".join(
    f"""---
apiVersion: plait/v1
kind: Service
metadata:
  name: {name}
spec:
  protocol: http
  ports:
    - name: http
      port: 80
"""
    for name in ("orders", "inventory")
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def inst(service: str, n: int, healthy: bool = True) -> Instance:
    return Instance(service, f"n-{service}-{n}", "127.0.0.1", 9000 + n, {}, healthy)


def beat_all(plane: ControlPlane, orders: int = 4, inventory: int = 10) -> None:
    for n in range(orders):
        plane.heartbeat(f"n-orders-{n}", [inst("orders", n)], 10.0)
    for n in range(inventory):
        plane.heartbeat(f"n-inventory-{n}", [inst("inventory", 100 + n)], 10.0)


def served(plane: ControlPlane, service: str) -> int:
    return sum(1 for i in plane.cache.instances if i.service == service and i.healthy)


def new_plane(path: Path, clock: Clock, **kw: object) -> ControlPlane:
    return ControlPlane(Store(str(path)), clock=clock, wall=lambda: 0.0, **kw)  # type: ignore[arg-type]


def test_expired_leases_are_held_and_approve_pushes_them(tmp_path: Path) -> None:
    clock = Clock()
    plane = new_plane(tmp_path, clock)
    plane.apply("svc.yaml", SERVICES)
    beat_all(plane)
    assert served(plane, "orders") == 4
    clock.now += 5  # inventory keeps heartbeating, orders stops
    for n in range(10):
        plane.heartbeat(f"n-inventory-{n}", [inst("inventory", 100 + n)], 10.0)
    clock.now += 6
    plane.sweep()
    assert not [i for i in plane.registry.instances() if i.service == "orders"]
    assert served(plane, "orders") == 4  # held: the proxies keep them
    status = plane.status()
    assert status["guard"]["held"] == 1
    (hold,) = status["guard"]["holds"]
    assert hold["service"] == "orders"
    assert "would remove 4 of 4 healthy endpoints of service orders" in hold["reason"]
    plane.approve_hold(hold["id"])
    assert served(plane, "orders") == 0
    assert plane.status()["guard"]["held"] == 0


def test_config_delete_is_not_held(tmp_path: Path) -> None:
    clock = Clock()
    plane = new_plane(tmp_path, clock)
    plane.apply("svc.yaml", SERVICES)
    beat_all(plane, inventory=2)
    plane.delete("Service", "inventory")
    for n in range(2):
        plane.registry.remove(f"n-inventory-{n}")
    plane.sweep()
    plane.heartbeat("n-orders-0", [inst("orders", 0)], 10.0)
    assert not plane.guard.holds()


def test_sync_before_serve_waits_for_reloaded_nodes(tmp_path: Path) -> None:
    clock = Clock()
    plane = new_plane(tmp_path, clock)
    plane.apply("svc.yaml", SERVICES)
    beat_all(plane, orders=2, inventory=1)
    plane.store.close()
    again = new_plane(tmp_path, clock, sync_timeout=10.0)
    assert again.syncing and not again.cache.serving
    assert again.status()["syncing"] is True
    again.heartbeat("n-orders-0", [inst("orders", 0)], 10.0)
    again.heartbeat("n-orders-1", [inst("orders", 1)], 10.0)
    assert again.syncing
    again.heartbeat("n-inventory-0", [inst("inventory", 100)], 10.0)
    assert not again.syncing and again.cache.serving


def test_sync_timeout_and_a_wiped_lease_table(tmp_path: Path) -> None:
    clock = Clock()
    plane = new_plane(tmp_path, clock)
    plane.apply("svc.yaml", SERVICES)
    beat_all(plane, orders=1, inventory=1)
    plane.store.delete_leases(plane.registry.node_ids())  # the lease table is wiped
    plane.store.close()
    again = new_plane(tmp_path, clock, sync_timeout=10.0)
    assert again.syncing  # config but no leases: wait the whole timeout
    again.heartbeat("n-orders-0", [inst("orders", 0)], 10.0)
    assert again.syncing
    clock.now += 10
    again.sweep()
    assert not again.syncing and again.cache.serving


def test_no_sync_gate_on_a_fresh_store(tmp_path: Path) -> None:
    plane = new_plane(tmp_path, Clock(), sync_timeout=10.0)
    assert not plane.syncing and plane.cache.serving


def test_no_guard_pushes_everything(tmp_path: Path) -> None:
    clock = Clock()
    plane = new_plane(tmp_path, clock, guard=GuardSettings(enabled=False))
    plane.apply("svc.yaml", SERVICES)
    beat_all(plane)
    clock.now += 11
    plane.sweep()
    assert served(plane, "orders") == 0 and not plane.guard.holds()


def test_a_leaving_node_is_dropped_at_once_and_is_ordinary_churn(tmp_path: Path) -> None:
    clock = Clock()
    plane = new_plane(tmp_path / "db", clock)
    plane.apply("svc.yaml", SERVICES)
    beat_all(plane)
    assert plane.leave("n-orders-0") is True
    assert served(plane, "orders") == 3  # 1 of 4 (25%): not held
    assert plane.guard.holds() == []
    assert "n-orders-0" not in plane.registry.node_ids()
    assert all(row.node_id != "n-orders-0" for row in plane.store.load_leases())
    assert plane.leave("n-orders-0") is False  # unknown now: nothing to do
    plane.heartbeat("n-orders-0", [inst("orders", 0)], 10.0)  # the replacement
    assert served(plane, "orders") == 4
