"""An instance that fails its health check stops receiving traffic, and gets it back.

inventory runs on two hosts (its apps report versions ``v1`` and ``v1-b`` so that each
answer's chain says which instance served it; both carry the label ``version: v1``).
A client loops through host-frontend's proxy (frontend -> orders -> inventory) while
instance B's /healthz is made to fail: its proxy's health check notices (0.5 s interval,
2 failures), the next heartbeat reports it, the control plane pushes new endpoints, and
both orders proxies drop it. The app itself keeps answering, so no request may fail at
any point; once it is gone from every proxy, no request may reach it. Then it is made
healthy again and must get traffic back.
"""

from __future__ import annotations

import time

import pytest
from mesh_harness import RequestLoop, describe_failures, endpoints, summarize, wait_until

from plait.cli.topology import App, Mesh

pytestmark = pytest.mark.timeout(90)

MESH_HOSTS = (
    ("host-frontend", (App("frontend", "v1", next=("orders",)),)),
    ("host-orders-v1", (App("orders", "v1", next=("inventory",)),)),
    ("host-orders-v2", (App("orders", "v2", next=("inventory",)),)),
    ("host-inventory", (App("inventory", "v1"),)),
    ("host-inventory-b", (App("inventory", "v1-b", labels={"version": "v1"}),)),
)
ORDERS_HOSTS = ("host-orders-v1", "host-orders-v2")
A, B = "inventory/v1", "inventory/v1-b"
REMOVAL_LIMIT = 10.0  # seconds from failing /healthz to gone from every proxy


def inventory_of(chain: tuple[str, ...]) -> str:
    return chain[-1]


def in_every_orders_proxy(mesh: Mesh, endpoint: tuple[str, int]) -> bool:
    return all(endpoint in endpoints(mesh, h, "outbound|inventory") for h in ORDERS_HOSTS)


def in_no_orders_proxy(mesh: Mesh, endpoint: tuple[str, int]) -> bool:
    return all(endpoint not in endpoints(mesh, h, "outbound|inventory") for h in ORDERS_HOSTS)


def test_failing_instance_is_removed_then_restored(mesh: Mesh) -> None:
    b_endpoint = mesh.hosts["host-inventory-b"].inbound("inventory")
    assert in_every_orders_proxy(mesh, b_endpoint)
    entry = mesh.hosts["host-frontend"].outbound

    with RequestLoop(entry, "http://frontend/health-loop", rate=40.0) as loop:
        origin = time.monotonic()
        # Both instances serve while both are healthy.
        wait_until(
            lambda: {inventory_of(r.chain) for r in loop.snapshot() if r.status == 200} >= {A, B},
            10.0,
            "both inventory instances to serve requests",
            describe=lambda: summarize(loop.snapshot()),
        )

        failed_at = time.monotonic()
        mesh.set_healthy("host-inventory-b", "inventory", False)
        wait_until(lambda: in_no_orders_proxy(mesh, b_endpoint), 20.0, "B gone from orders proxies")
        removal = time.monotonic() - failed_at
        print(f"unhealthy instance removed from every orders proxy in {removal:.2f}s")

        # From now on nothing may reach B: let the loop run a while.
        removed_at = time.monotonic()
        time.sleep(2.0)
        after_removal = [r for r in loop.snapshot() if r.t > removed_at + 0.05]

        healed_at = time.monotonic()
        mesh.set_healthy("host-inventory-b", "inventory", True)
        wait_until(
            lambda: in_every_orders_proxy(mesh, b_endpoint), 20.0, "B back in orders proxies"
        )
        restore = time.monotonic() - healed_at
        print(f"healthy again instance restored in every orders proxy in {restore:.2f}s")
        back_at = time.monotonic()
        wait_until(
            lambda: any(inventory_of(r.chain) == B for r in loop.snapshot() if r.t > back_at),
            10.0,
            "B to get requests again",
            describe=lambda: summarize([r for r in loop.snapshot() if r.t > back_at]),
        )
        results = loop.stop()

    failures = [r for r in results if r.status != 200]
    assert not failures, f"{len(failures)} of {len(results)} requests failed:\n" + (
        describe_failures(results, origin)
    )
    assert removal < REMOVAL_LIMIT, f"removal took {removal:.2f}s"
    assert len(after_removal) >= 40, f"only {len(after_removal)} requests after removal"
    reached_b = [r for r in after_removal if inventory_of(r.chain) == B]
    assert not reached_b, f"{len(reached_b)} of {len(after_removal)} reached B after removal"
    assert {inventory_of(r.chain) for r in after_removal} == {A}
    assert restore < REMOVAL_LIMIT, f"restoring took {restore:.2f}s"
    print(f"{len(results)} requests, 0 failed; {len(after_removal)} after removal, none to B")
