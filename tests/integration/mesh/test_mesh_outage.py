"""The control plane is down for a minute (issue 5): the mesh keeps serving, and a proxy
restarted during the outage boots from its last-known-good file and serves.

Two clients loop for the whole test, 10 requests a second each: one through
host-frontend's proxy (frontend -> orders -> inventory), one through host-orders-v1's
(orders -> inventory). The control plane is SIGKILLed by PID and kept down for
``PLAIT_OUTAGE_SECONDS`` (default 60). About 10 s in, host-frontend's proxy is restarted
(:meth:`Mesh.restart_proxy`, same ports): its ``/ready`` says last-known-good, and from
the moment it is ready not one request through it fails; requests sent while it is down
are counted apart, and only inside the restart window. Nothing through host-orders-v1
fails at all. After the control plane is started again, every proxy is SYNCED and
serving live config within 20 s.
"""

from __future__ import annotations

import http.client
import os
import time
from urllib.parse import urlsplit

import pytest
from mesh_harness import (
    RequestLoop,
    all_synced,
    describe_failures,
    summarize,
    sync_summary,
    wait_until,
)

from plait.cli.supervisor import pid_alive
from plait.cli.topology import Mesh

OUTAGE = float(os.environ.get("PLAIT_OUTAGE_SECONDS", "60"))
RESTART_AFTER = min(10.0, OUTAGE / 3)
SYNC_LIMIT = 20.0

pytestmark = pytest.mark.timeout(int(OUTAGE) + 90)


def ready_text(mesh: Mesh, host: str) -> tuple[int, str]:
    """``GET /ready`` of ``host``'s proxy: status and body."""
    parts = urlsplit(mesh.hosts[host].admin_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=2.0)
    try:
        conn.request("GET", "/ready")
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def all_live(mesh: Mesh) -> bool:
    return all((r := ready_text(mesh, h))[0] == 200 and "live config" in r[1] for h in mesh.hosts)


def test_control_plane_down_a_minute_with_a_proxy_restart(mesh: Mesh) -> None:
    wait_until(lambda: all_synced(mesh), 15.0, "SYNCED", describe=lambda: sync_summary(mesh))
    api, xds = mesh.api_url, mesh.xds_address
    front = mesh.hosts["host-frontend"]
    ports_before = (front.admin_url, front.outbound, front.inbound("frontend"))
    via_front = RequestLoop(front.outbound, "http://frontend/outage", rate=10.0)
    via_orders = RequestLoop(
        mesh.hosts["host-orders-v1"].outbound, "http://orders/outage", rate=10.0
    )
    with via_front, via_orders:
        origin = time.monotonic()
        time.sleep(1.0)
        pid = mesh.kill_control()
        killed_at = time.monotonic()
        assert not pid_alive(pid)

        time.sleep(RESTART_AFTER)
        restart_at = time.monotonic()
        old_pid = front.proxy.pid
        mesh.restart_proxy("host-frontend")
        ready_at = time.monotonic()
        assert front.proxy.pid != old_pid
        assert (front.admin_url, front.outbound, front.inbound("frontend")) == ports_before
        status, text = ready_text(mesh, "host-frontend")
        assert status == 200 and "last-known-good" in text, (status, text)
        print(f"host-frontend's proxy restarted in {ready_at - restart_at:.2f}s: {text.strip()}")

        time.sleep(max(0.0, killed_at + OUTAGE - time.monotonic()))
        # still on the file: the control plane has been down all along
        assert "last-known-good" in ready_text(mesh, "host-frontend")[1]
        mesh.restart_control()
        restarted_at = time.monotonic()
        assert (mesh.api_url, mesh.xds_address) == (api, xds)
        wait_until(
            lambda: all_synced(mesh) and all_live(mesh),
            SYNC_LIMIT,
            "every proxy SYNCED and live after the outage",
            describe=lambda: sync_summary(mesh),
        )
        synced = time.monotonic() - restarted_at
        time.sleep(1.0)
    front_results, orders_results = via_front.snapshot(), via_orders.snapshot()

    print(f"down {restarted_at - killed_at:.1f}s; all SYNCED and live {synced:.2f}s after restart")
    # the rest of the mesh: nothing fails, the whole time
    failed = [r for r in orders_results if r.status != 200]
    assert not failed, f"{len(failed)} of {len(orders_results)} failed via host-orders-v1:\n" + (
        describe_failures(orders_results, origin)
    )
    # through the restarted proxy: failures only while it was down
    outside = [r for r in front_results if r.status != 200 and not restart_at <= r.t <= ready_at]
    assert not outside, (
        f"{len(outside)} failed outside the restart window:\n{summarize(outside)}\n"
        + (describe_failures(front_results, origin))
    )
    after_ready = [r for r in front_results if r.t > ready_at]
    while_down = [r for r in front_results if restart_at <= r.t <= ready_at]
    assert len(after_ready) >= 10 * (OUTAGE - RESTART_AFTER) * 0.8, len(after_ready)
    assert sum(r.t < restarted_at for r in orders_results if r.t > killed_at) >= 8 * OUTAGE
    print(
        f"via host-frontend: {len(front_results)} requests, "
        f"{sum(r.status != 200 for r in while_down)} of {len(while_down)} failed while it "
        f"restarted, 0 of {len(after_ready)} after it was ready; via host-orders-v1: "
        f"{len(orders_results)} requests, 0 failed"
    )
