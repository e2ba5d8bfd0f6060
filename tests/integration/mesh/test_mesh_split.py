"""The 90/10 orders Route of examples/demo-mesh.yaml, observed through a whole mesh.

1,000 requests go through host-frontend's proxy on one kept-alive connection (curl with
a URL range: one invocation, one connection) and follow frontend -> orders -> inventory;
each answer's chain says which orders version served it. The share of v2 must be within
4 points of 10% (for a fair 90/10 pick that is over 4 standard deviations).
"""

from __future__ import annotations

import collections
import json
import uuid

import pytest
from mesh_harness import access_lines, curl, needs_curl, wait_until

from plait.cli.topology import Mesh

pytestmark = [needs_curl, pytest.mark.timeout(90)]

N = 1000
TOLERANCE = 0.04


def test_weighted_split_90_10_through_the_mesh(mesh: Mesh) -> None:
    tag = uuid.uuid4().hex[:12]
    proxy = mesh.hosts["host-frontend"].proxy_url
    out = curl(
        "-x",
        proxy,
        "-w",
        "\\n%{http_code} %{num_connects}\\n",
        f"http://frontend/split-{tag}/[1-{N}]",
        timeout=60,
    )
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 2 * N, out.stdout[-2000:]
    bodies, trailers = lines[0::2], lines[1::2]
    statuses = collections.Counter(t.split()[0] for t in trailers)
    assert statuses == {"200": N}, statuses
    connects = sum(int(t.split()[1]) for t in trailers)
    assert connects == 1, f"curl opened {connects} connections: keep-alive was not kept"

    versions: collections.Counter[str] = collections.Counter()
    for body in bodies:
        chain = json.loads(body)["chain"]
        assert [h.split("/")[0] for h in chain] == ["frontend", "orders", "inventory"], chain
        versions[chain[1]] += 1
    assert set(versions) <= {"orders/v1", "orders/v2"}, versions
    share_v2 = versions["orders/v2"] / N
    print(f"orders split over {N} requests: {dict(versions)} (v2 {share_v2:.1%})")
    assert abs(share_v2 - 0.10) <= TOLERANCE, versions

    # Each orders proxy logged exactly the requests its app answered.
    def inbound_counts() -> dict[str, int]:
        counts = {}
        for host in ("host-orders-v1", "host-orders-v2"):
            counts[host] = sum(
                1
                for line in access_lines(mesh, host)
                if line["direction"] == "inbound"
                and line["path"].startswith(f"/split-{tag}/")
                and line["status"] == 200
            )
        return counts

    want = {"host-orders-v1": versions["orders/v1"], "host-orders-v2": versions["orders/v2"]}
    wait_until(lambda: inbound_counts() == want, 10.0, f"orders access logs to show {want}")
