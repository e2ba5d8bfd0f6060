"""curl through a whole mesh: the chain frontend -> orders -> inventory, Via, request ids.

The demo mesh (mesh_harness.DEMO_HOSTS): control plane, four hosts each with a proxy and
a demo app, examples/demo-mesh.yaml applied. curl uses host-frontend's outbound listener
as its HTTP proxy, as an app on that host would.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from mesh_harness import access_lines, curl, needs_curl, wait_until

from plait.cli.topology import Mesh

pytestmark = [needs_curl, pytest.mark.timeout(60)]


def parse_curl_response(stdout: str) -> tuple[int, dict[str, list[str]], Any]:
    """``curl -D - URL``: the status, the headers (lowercase name -> values) and JSON body."""
    head, _, body = stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    status = int(lines[0].split()[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers, json.loads(body)


def via_entries(headers: dict[str, list[str]]) -> list[str]:
    return [e.strip() for value in headers.get("via", []) for e in value.split(",")]


def hop_lines(mesh: Mesh, request_id: str) -> dict[str, list[tuple[str, str, int]]]:
    """Per host: (direction, destination, status) of each access-log line with the id."""
    found: dict[str, list[tuple[str, str, int]]] = {}
    for host in mesh.hosts:
        for line in access_lines(mesh, host):
            if line["request_id"] == request_id:
                entry = (line["direction"], line["destination"], line["status"])
                found.setdefault(host, []).append(entry)
    return {h: sorted(v) for h, v in found.items()}


def expected_hops(orders_host: str) -> dict[str, list[tuple[str, str, int]]]:
    return {
        "host-frontend": sorted(
            [
                ("outbound", "frontend", 200),  # curl -> frontend
                ("inbound", "frontend", 200),  # -> frontend app
                ("outbound", "orders", 200),  # frontend app -> orders
            ]
        ),
        orders_host: sorted([("inbound", "orders", 200), ("outbound", "inventory", 200)]),
        "host-inventory": [("inbound", "inventory", 200)],
    }


def test_curl_through_the_mesh_gets_the_whole_chain(mesh: Mesh) -> None:
    proxy = mesh.hosts["host-frontend"].proxy_url
    out = curl("-D", "-", "-x", proxy, "http://frontend/hello")
    status, headers, body = parse_curl_response(out.stdout)

    assert status == 200, out.stdout
    chain = body["chain"]
    assert [hop.split("/")[0] for hop in chain] == ["frontend", "orders", "inventory"], body
    assert chain[0] == "frontend/v1" and chain[2] == "inventory/v1"
    assert chain[1] in ("orders/v1", "orders/v2")
    assert body["path"] == "/hello"

    # The answer went app -> host-frontend inbound -> host-frontend outbound -> curl:
    # one Via entry per proxy hop it crossed.
    assert via_entries(headers) == ["1.1 host-frontend", "1.1 host-frontend"], headers
    request_id = headers["x-request-id"][0]
    assert request_id and body["request_id"] == request_id

    # The same id is on the line of every hop, in every proxy's access log, and only there.
    orders_host = "host-" + chain[1].replace("/", "-")
    want = expected_hops(orders_host)
    got = wait_until(
        lambda: (lines := hop_lines(mesh, request_id)) == want and lines,
        10.0,
        f"access-log lines with request id {request_id}",
        interval=0.2,
    )
    assert got == want


def test_a_request_id_from_the_client_is_kept_on_every_hop(mesh: Mesh) -> None:
    request_id = f"test-{uuid.uuid4().hex}"
    proxy = mesh.hosts["host-frontend"].proxy_url
    out = curl("-D", "-", "-x", proxy, "-H", f"x-request-id: {request_id}", "http://frontend/id")
    status, headers, body = parse_curl_response(out.stdout)

    assert status == 200, out.stdout
    assert headers["x-request-id"] == [request_id]
    assert body["request_id"] == request_id
    orders_host = "host-" + body["chain"][1].replace("/", "-")
    want = expected_hops(orders_host)
    wait_until(
        lambda: hop_lines(mesh, request_id) == want,
        10.0,
        f"access-log lines with request id {request_id}",
        interval=0.2,
    )


def test_via_names_each_proxy_a_response_crossed(mesh: Mesh) -> None:
    # From orders v1's host straight to inventory: the answer crosses host-inventory's
    # inbound listener, then host-orders-v1's outbound listener.
    proxy = mesh.hosts["host-orders-v1"].proxy_url
    out = curl("-D", "-", "-x", proxy, "http://inventory/stock")
    status, headers, body = parse_curl_response(out.stdout)

    assert status == 200, out.stdout
    assert body["chain"] == ["inventory/v1"]
    assert via_entries(headers) == ["1.1 host-inventory", "1.1 host-orders-v1"], headers
    assert "proxy-status" not in headers  # only responses a proxy makes itself carry one
