"""A real rolling restart (issue 5): "a rolling restart of a 4-instance service, one at a
time, passes without being held", with not one failed request.

inventory runs on four hosts. A client sends 20 requests a second through
host-frontend's proxy (frontend -> orders -> inventory) while each inventory host is
restarted in turn -- proxy and app, real processes, by PID (:meth:`Mesh.restart_host`).
On SIGTERM the proxy deregisters (a last heartbeat with ``"leaving": true``), keeps
serving for its ``drain_time`` while the peers get the EDS update, then closes; the
replacement registers on new ports. The push guard sees one of four go (25% < 50%) and
holds nothing; every instance is registered again at the end.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from mesh_harness import (
    RequestLoop,
    all_endpoints_known,
    all_synced,
    describe_failures,
    endpoints,
    get_json,
    summarize,
    sync_summary,
    wait_until,
)

from plait.cli.hosts import App
from plait.cli.topology import Mesh

pytestmark = pytest.mark.timeout(120)

INVENTORY = tuple(f"host-inventory-{i}" for i in range(1, 5))
MESH_HOSTS = (
    ("host-frontend", (App("frontend", "v1", next=("orders",)),)),
    ("host-orders-v1", (App("orders", "v1", next=("inventory",)),)),
    ("host-orders-v2", (App("orders", "v2", next=("inventory",)),)),  # the demo route splits
    *((name, (App("inventory", "v1"),)) for name in INVENTORY),
)


def guard(mesh: Mesh) -> dict[str, Any]:
    return dict(get_json(mesh.api_url + "/v1/guard"))


def inventory_rows(mesh: Mesh) -> list[dict[str, Any]]:
    rows = get_json(mesh.api_url + "/v1/registry")["instances"]
    return [r for r in rows if r["service"] == "inventory"]


def test_rolling_restart_of_real_processes(mesh: Mesh) -> None:
    wait_until(lambda: all_synced(mesh), 15.0, "SYNCED", describe=lambda: sync_summary(mesh))
    before = {(r["address"], int(r["port"])) for r in inventory_rows(mesh)}
    assert len(before) == 4
    entry = mesh.hosts["host-frontend"].outbound
    with RequestLoop(entry, "http://frontend/rolling", rate=20.0) as loop:
        origin = time.monotonic()
        time.sleep(1.0)
        for name in INVENTORY:
            started = time.monotonic()
            old_pids = [p.pid for p in mesh.hosts[name].processes()]
            host = mesh.restart_host(name)
            assert not {p.pid for p in host.processes()} & set(old_pids)
            wait_until(
                lambda: (
                    all_endpoints_known(mesh)
                    and len(endpoints(mesh, "host-orders-v1", "outbound|inventory")) == 4
                ),
                15.0,
                f"{name}'s new instance in every proxy",
            )
            info = guard(mesh)
            assert info["held"] == 0, info
            print(f"{name} restarted and known everywhere in {time.monotonic() - started:.2f}s")
        time.sleep(1.0)
        results = loop.stop()

    info = guard(mesh)
    assert info["held"] == 0 and info["held_total"] == 0, info
    failures = [r for r in results if r.status != 200]
    assert not failures, f"{len(failures)} of {len(results)} failed:\n{summarize(results)}\n" + (
        describe_failures(results, origin)
    )
    rows = inventory_rows(mesh)
    after = {(r["address"], int(r["port"])) for r in rows}
    assert len(rows) == 4 and all(r["healthy"] for r in rows), rows
    assert {r["node_id"] for r in rows} == set(INVENTORY), rows
    assert after.isdisjoint(before), "the replacements listen on new ports"
    print(f"rolling restart: {len(results)} requests over {results[-1].t - origin:.1f}s, 0 failed")
