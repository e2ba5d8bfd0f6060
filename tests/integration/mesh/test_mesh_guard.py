"""The push guard under traffic (docs/resilience.md, "Push guard").

The mesh has four instances of orders (two v1, two v2), a frontend and an inventory. A
client sends 20 requests a second through host-frontend's proxy (frontend -> orders ->
inventory).

- Rolling restart: each orders instance in turn goes unhealthy (its /healthz fails, as
  when it drains) and comes back before the next. Never more than one of four is down,
  so the guard holds nothing; not one request fails. (The same with real process
  restarts, proxy and app, is test_mesh_rolling_restart.py.)
- Every lease dropped at once: the control plane is killed and started again with its
  API on another port, so the proxies' heartbeats cannot reach it (the registry's
  source is broken, the story of docs/resilience.md) while xDS still works. The leases
  reloaded from the store expire together after their ttl: the guard holds the change
  (every service emptied, the registry gutted), the proxies keep their endpoints, not
  one request fails, and `plait status` and `/v1/guard` show it. `plait guard approve`
  then pushes it (the proxies ACK the new endpoints). The API goes back to its port and
  the heartbeats refill the registry.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from mesh_harness import (
    EDS,
    RequestLoop,
    all_endpoints_known,
    all_synced,
    describe_failures,
    endpoints,
    get_json,
    proxy_status,
    summarize,
    sync_summary,
    wait_until,
)

from plait.cli.hosts import App
from plait.cli.topology import Mesh

pytestmark = pytest.mark.timeout(180)

ORDERS = ("host-orders-1", "host-orders-2", "host-orders-3", "host-orders-4")
MESH_HOSTS = (
    ("host-frontend", (App("frontend", "v1", next=("orders",)),)),
    ("host-orders-1", (App("orders", "v1", next=("inventory",)),)),
    ("host-orders-2", (App("orders", "v1", next=("inventory",)),)),
    ("host-orders-3", (App("orders", "v2", next=("inventory",)),)),
    ("host-orders-4", (App("orders", "v2", next=("inventory",)),)),
    ("host-inventory", (App("inventory", "v1"),)),
)


def plait(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "plait.cli.main", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def registry_health(mesh: Mesh, service: str) -> list[bool]:
    rows = get_json(mesh.api_url + "/v1/registry")["instances"]
    return [r["healthy"] for r in rows if r["service"] == service]


def guard(mesh: Mesh) -> dict[str, Any]:
    return dict(get_json(mesh.api_url + "/v1/guard"))


def test_rolling_restart_is_not_held(mesh: Mesh) -> None:
    wait_until(lambda: all_synced(mesh), 15.0, "SYNCED", describe=lambda: sync_summary(mesh))
    entry = mesh.hosts["host-frontend"].outbound
    with RequestLoop(entry, "http://frontend/rolling", rate=20.0) as loop:
        origin = time.monotonic()
        time.sleep(1.0)
        for host in ORDERS:
            mesh.set_healthy(host, "orders", False)
            wait_until(
                lambda: registry_health(mesh, "orders").count(False) == 1,
                10.0,
                f"{host} unhealthy in the registry",
            )
            wait_until(
                lambda: len(endpoints(mesh, "host-frontend", "outbound|orders")) == 3,
                10.0,
                f"{host} out of the frontend's endpoints (not held)",
            )
            assert guard(mesh)["held"] == 0
            mesh.set_healthy(host, "orders", True)
            wait_until(lambda: all(registry_health(mesh, "orders")), 10.0, f"{host} healthy again")
            wait_until(
                lambda: len(endpoints(mesh, "host-frontend", "outbound|orders")) == 4,
                10.0,
                f"{host} back in the frontend's endpoints",
            )
        time.sleep(1.0)
        results = loop.stop()
    info = guard(mesh)
    assert info["held"] == 0 and info["held_total"] == 0, info
    failures = [r for r in results if r.status != 200]
    assert not failures, f"{len(failures)} of {len(results)} failed:\n" + describe_failures(
        results, origin
    )
    print(f"rolling restart: {len(results)} requests, 0 failed, nothing held")


def test_every_lease_dropped_at_once_is_held(mesh: Mesh, tmp_path: Path) -> None:
    wait_until(lambda: all_synced(mesh), 15.0, "SYNCED", describe=lambda: sync_summary(mesh))
    api_port = urlsplit(mesh.api_url).port
    assert api_port is not None
    xds_port = int(mesh.xds_address.rpartition(":")[2])
    entry = mesh.hosts["host-frontend"].outbound
    before = endpoints(mesh, "host-frontend", "outbound|orders")
    assert len(before) == 4

    with RequestLoop(entry, "http://frontend/guard", rate=20.0) as loop:
        origin = time.monotonic()
        time.sleep(1.0)
        mesh.kill_control()
        # the API on another port: heartbeats fail, xDS (same port) works
        mesh._launch_control(xds_port, 0, ["--sync-timeout", "2s"])
        assert urlsplit(mesh.api_url).port != api_port
        info = wait_until(
            lambda: (g := guard(mesh))["held"] >= 2 and g,
            30.0,
            "the guard to hold the lease expiry",
            describe=lambda: str(guard(mesh)),
        )
        assert get_json(mesh.api_url + "/v1/registry")["instances"] == []
        time.sleep(2.0)  # the held state under traffic
        results = loop.stop()

    failures = [r for r in results if r.status != 200]
    assert not failures, f"{len(failures)} of {len(results)} failed:\n{summarize(results)}\n" + (
        describe_failures(results, origin)
    )
    scopes = {h["service"] for h in info["holds"]}
    assert {None, "orders", "inventory", "frontend"} <= scopes, info["holds"]
    orders_hold = next(h for h in info["holds"] if h["service"] == "orders")
    assert orders_hold["reason"].startswith(
        "would remove 4 of 4 healthy endpoints of service orders (100%)"
    ), orders_hold
    # the proxies kept every endpoint
    assert endpoints(mesh, "host-frontend", "outbound|orders") == before

    status = get_json(mesh.api_url + "/v1/status")
    assert status["guard"]["held"] == info["held"] and status["syncing"] is False
    metrics = subprocess.run(
        ["curl", "-sS", mesh.api_url + "/metrics"], capture_output=True, text=True, timeout=10
    ).stdout
    assert f"plait_guard_holds {info['held']}" in metrics, metrics
    shown = plait("status", "--api", mesh.api_url, "--state-dir", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert "PUSH GUARD" in shown.stdout and orders_hold["id"] in shown.stdout, shown.stdout
    listed = plait("guard", "list", "--api", mesh.api_url, "--state-dir", str(tmp_path))
    assert listed.returncode == 0 and orders_hold["id"] in listed.stdout, listed

    registry_hold = next(h for h in info["holds"] if h["service"] is None)
    eds_before = proxy_status(mesh)["host-frontend"]["types"][EDS]["acked"]
    approved = plait(
        "guard", "approve", registry_hold["id"], "--api", mesh.api_url, "--state-dir", str(tmp_path)
    )
    assert approved.returncode == 0, approved.stderr
    assert guard(mesh)["held"] == 0
    # the approved change is pushed: the frontend's proxy ACKs a new EDS version (what it
    # then serves is the proxy-side guard's business: it keeps an emptied cluster's
    # endpoints, marked stale, until the removal is confirmed; docs/resilience.md)
    wait_until(
        lambda: (
            (node := proxy_status(mesh)["host-frontend"])["types"][EDS]["acked"] != eds_before
            and node["status"] == "SYNCED"
        ),
        10.0,
        "the approved change ACKed by the frontend's proxy",
        describe=lambda: sync_summary(mesh),
    )

    # the heartbeats' API port again: the registry refills, additions pass at once
    mesh.kill_control()
    mesh._launch_control(xds_port, api_port, ["--sync-timeout", "2s"])
    wait_until(lambda: all_endpoints_known(mesh), 30.0, "every endpoint back in every proxy")
    mesh.wait_for_request("host-frontend", "http://frontend/back", timeout=10.0)
