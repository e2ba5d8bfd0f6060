"""A config change reaches every proxy: a new orders Route, applied while the mesh runs.

The new Route sends requests with ``x-canary: 1`` to orders v2 and everything else to
orders v1. Within a few seconds every proxy's /config_dump shows it, the control plane's
``GET /v1/proxy-status`` shows every node SYNCED at new route versions, and requests
follow it. (The demo apps do not pass ``x-canary`` on, so canary requests go to
``http://orders/...`` through host-frontend's proxy; the whole chain is checked without.)
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest
from mesh_harness import (
    DEMO_MESH,
    RDS,
    RequestLoop,
    all_synced,
    apply_unscoped,
    chain_of,
    config_dump,
    describe_failures,
    outbound_routes,
    proxy_status,
    route_clusters,
    sync_summary,
    wait_until,
)

from plait.cli.topology import Mesh

pytestmark = pytest.mark.timeout(60)

CANARY_ROUTE = """\
apiVersion: plait/v1
kind: Route
metadata:
  name: orders-split
spec:
  service: orders
  rules:
    - match:
        headers: [{name: x-canary, exact: "1"}]
      backends: [{subset: {version: v2}, weight: 100}]
    - backends: [{subset: {version: v1}, weight: 100}]
      timeout: 5s
"""
V1, V2 = "outbound|orders|version=v1", "outbound|orders|version=v2"
PROPAGATION_LIMIT = 5.0


def has_canary_route(dump: dict) -> bool:
    routes = outbound_routes(dump, "orders")
    if len(routes) < 2:
        return False
    first, second = routes[0], routes[1]
    headers = first["match"]["headers"]
    return (
        route_clusters(first) == {V2: 100}
        and len(headers) == 1
        and headers[0]["name"] == "x-canary"
        and route_clusters(second) == {V1: 100}
    )


def test_a_new_route_reaches_every_proxy_and_is_followed(mesh: Mesh, tmp_path: Path) -> None:
    before = wait_until(
        lambda: all_synced(mesh),
        10.0,
        "every node SYNCED before the change",
        describe=lambda: sync_summary(mesh),
    )
    for host in mesh.hosts:
        assert not has_canary_route(config_dump(mesh, host))

    path = tmp_path / "canary.yaml"
    path.write_text(CANARY_ROUTE)
    applied_at = time.monotonic()
    answer = mesh.apply(path)
    assert "Route/orders-split" in answer["changed"], answer

    pending = set(mesh.hosts)

    def all_have_it() -> bool:
        for host in sorted(pending):
            if has_canary_route(config_dump(mesh, host)):
                pending.discard(host)
        return not pending

    wait_until(all_have_it, 15.0, f"the new route in every proxy's config_dump (missing {pending})")
    took = time.monotonic() - applied_at
    print(f"new route in every proxy's config_dump {took:.2f}s after apply")
    assert took < PROPAGATION_LIMIT

    # Requests follow it: plain ones go to v1 only, canaries to v2 only.
    chains: collections.Counter[tuple[str, ...]] = collections.Counter()
    for i in range(40):
        status, _, body = mesh.request("host-frontend", f"http://frontend/after-change/{i}")
        assert status == 200, body
        chains[tuple(chain_of(body))] += 1
    assert chains == {("frontend/v1", "orders/v1", "inventory/v1"): 40}, chains
    for via in ("host-frontend", "host-inventory"):
        for headers, want in (({"x-canary": "1"}, "orders/v2"), ({}, "orders/v1")):
            for _ in range(20):
                status, _, body = mesh.request(via, "http://orders/canary", headers=headers)
                assert status == 200, body
                assert chain_of(body)[0] == want, (via, headers, body)

    # The control plane sees every node SYNCED, at a new route version that each proxy
    # reports as applied.
    def synced_at_new_versions() -> dict | None:
        nodes = all_synced(mesh)
        if nodes is None:
            return None
        for host in mesh.hosts:
            if nodes[host]["types"][RDS]["acked"] == before[host]["types"][RDS]["acked"]:
                return None
        return nodes

    after = wait_until(
        synced_at_new_versions,
        10.0,
        "every node SYNCED at a new RouteConfiguration version",
        describe=lambda: sync_summary(mesh),
    )
    for host in mesh.hosts:
        node = after[host]
        assert node["status"] == "SYNCED" and node["connected"], node
        rds = node["types"][RDS]
        assert rds["sent"] == rds["acked"] != before[host]["types"][RDS]["acked"]
        dump = config_dump(mesh, host)
        assert dump["versions"][RDS] == rds["acked"], (host, dump["versions"], rds)
    assert set(proxy_status(mesh)) >= set(mesh.hosts)


ALL_V2 = """\
apiVersion: plait/v1
kind: Route
metadata:
  name: orders-split
spec:
  service: orders
  rules:
    - backends: [{subset: {version: v2}, weight: 100}]
      timeout: 5s
"""


def flip_under_load(
    mesh: Mesh, tmp_path: Path, *, rate: float, flips: int, pause: float
) -> tuple[list, float]:
    """Flip orders between 100% v2 (subset v1 unused) and the 90/10 split, ``flips``
    times, ``pause`` seconds apart, while requests go through host-frontend's proxy."""
    configs = [tmp_path / "all-v2.yaml", DEMO_MESH]
    configs[0].write_text(ALL_V2)
    entry = mesh.hosts["host-frontend"].outbound
    with RequestLoop(entry, "http://orders/flip", rate=rate) as loop:
        origin = time.monotonic()
        for i in range(flips):
            apply_unscoped(mesh, configs[i % 2])
            time.sleep(pause)
        results = loop.stop()
    # Leave the module's mesh as it found it: the demo split (unscoped, as mesh_harness).
    apply_unscoped(mesh)
    return results, origin


def test_route_changes_that_remove_and_add_a_subset_drop_no_request(
    mesh: Mesh, tmp_path: Path
) -> None:
    """Make-before-break across ACKs (plait.control.sequencing): the control plane keeps
    outbound|orders|version=v1 in CDS until the routes that stop naming it are ACKed, and
    sends routes naming it again only after its cluster and endpoints are ACKed."""
    results, origin = flip_under_load(mesh, tmp_path, rate=300.0, flips=6, pause=0.4)
    failures = [r for r in results if r.status != 200]
    assert len(results) > 300
    assert not failures, f"{len(failures)} of {len(results)} requests failed:\n" + (
        describe_failures(results, origin)
    )


def test_twenty_subset_flips_at_400_requests_a_second_drop_no_request(
    mesh: Mesh, tmp_path: Path
) -> None:
    """The stress variant: 20 flips under a 400 req/s loop (as fast as one keep-alive
    connection goes on a busy machine), not one failure."""
    results, origin = flip_under_load(mesh, tmp_path, rate=400.0, flips=20, pause=0.3)
    failures = [r for r in results if r.status != 200]
    assert len(results) > 600
    assert not failures, f"{len(failures)} of {len(results)} requests failed:\n" + (
        describe_failures(results, origin)
    )
