"""The control plane dies (SIGKILL, by PID) while a client loops through the mesh.

A client sends 20 requests a second through host-frontend's proxy (frontend -> orders ->
inventory) for the whole test. The control plane is killed; the proxies keep serving with
the config they have. It is started again on the same ports with the same data dir; every
proxy reconnects (proxy-status: connected and SYNCED) and a config change applied after
the restart reaches them. Not one request of the loop may fail.
"""

from __future__ import annotations

import time
import urllib.error
from pathlib import Path

import pytest
from mesh_harness import (
    RequestLoop,
    all_synced,
    config_dump,
    describe_failures,
    get_json,
    outbound_routes,
    route_clusters,
    sync_summary,
    wait_until,
)

from plait.cli.supervisor import pid_alive
from plait.cli.topology import Mesh

pytestmark = pytest.mark.timeout(90)

# Everything to v2; v1 stays named by a header rule, so the change touches routes only.
# (A change that removes or adds a subset cluster is test_mesh_config_change's business.)
MOSTLY_V2 = """\
apiVersion: plait/v1
kind: Route
metadata:
  name: orders-split
spec:
  service: orders
  rules:
    - match:
        headers: [{name: x-pin, exact: v1}]
      backends: [{subset: {version: v1}, weight: 100}]
    - backends: [{subset: {version: v2}, weight: 100}]
      timeout: 5s
"""
V1, V2 = "outbound|orders|version=v1", "outbound|orders|version=v2"
RECONNECT_LIMIT = 15.0


def mostly_v2(dump: dict) -> bool:
    routes = outbound_routes(dump, "orders")
    return len(routes) >= 2 and [route_clusters(r) for r in routes[:2]] == [{V1: 100}, {V2: 100}]


def test_control_plane_killed_and_restarted_under_traffic(mesh: Mesh, tmp_path: Path) -> None:
    wait_until(
        lambda: all_synced(mesh),
        10.0,
        "every node SYNCED before the kill",
        describe=lambda: sync_summary(mesh),
    )
    api, xds = mesh.api_url, mesh.xds_address
    version_before = get_json(api + "/v1/config")["version"]
    entry = mesh.hosts["host-frontend"].outbound

    with RequestLoop(entry, "http://frontend/control-restart", rate=20.0) as loop:
        origin = time.monotonic()
        time.sleep(1.0)

        assert mesh.control is not None
        pid = mesh.kill_control()  # SIGKILL by PID
        killed_at = time.monotonic()
        assert not pid_alive(pid)
        with pytest.raises(urllib.error.URLError):
            get_json(api + "/v1/health", timeout=1.0)
        time.sleep(3.0)  # the mesh runs without its control plane

        mesh.restart_control()
        assert mesh.control is not None and mesh.control.pid != pid
        assert (mesh.api_url, mesh.xds_address) == (api, xds), "not on the same ports"
        restarted_at = time.monotonic()
        # The data dir kept the config: same version, nothing re-applied.
        assert get_json(api + "/v1/config")["version"] == version_before

        wait_until(
            lambda: all_synced(mesh),
            RECONNECT_LIMIT,
            "every node SYNCED after restart",
            describe=lambda: sync_summary(mesh),
        )
        reconnect = time.monotonic() - restarted_at
        print(f"down {restarted_at - killed_at:.2f}s; all proxies SYNCED {reconnect:.2f}s later")

        path = tmp_path / "mostly-v2.yaml"
        path.write_text(MOSTLY_V2)
        applied_at = time.monotonic()
        mesh.apply(path)
        wait_until(
            lambda: all(mostly_v2(config_dump(mesh, h)) for h in mesh.hosts),
            10.0,
            "the route applied after the restart in every proxy",
        )
        wait_until(
            lambda: all_synced(mesh),
            10.0,
            "every node SYNCED after the change",
            describe=lambda: sync_summary(mesh),
        )
        followed_at = time.monotonic()
        print(f"change after restart in every proxy {followed_at - applied_at:.2f}s after apply")

        # Run the loop to at least 8 s, and at least 1 s past the change.
        time.sleep(max(1.0, 8.0 - (time.monotonic() - origin)))
        results = loop.stop()

    failures = [r for r in results if r.status != 200]
    assert not failures, f"{len(failures)} of {len(results)} requests failed:\n" + (
        describe_failures(results, origin)
    )
    while_down = [r for r in results if killed_at <= r.t <= restarted_at]
    assert len(while_down) >= 40, (
        f"only {len(while_down)} requests while the control plane was down"
    )
    after_change = [r for r in results if r.t > followed_at]
    assert len(after_change) >= 10
    assert all(r.chain[1] == "orders/v2" for r in after_change), [r.chain for r in after_change]
    print(f"{len(results)} requests over {results[-1].t - origin:.1f}s, 0 failed")
