"""Per-proxy scoping (``Service.spec.calls``, docs/xds.md "Scoping") with real processes.

A real control plane (``python -m plait.control``), a proxy ``host-b`` fronting the
``orders`` and ``payments`` apps (it registers them; its services declare no ``calls``,
so it gets every service), and a proxy ``host-a`` fronting ``web``, which declares
``calls: [orders]``. Through host-a's outbound listener ``orders`` answers and
``payments`` -- although registered and healthy -- gets the caller's own 404
``destination_not_found``; host-a holds no ``payments`` cluster, endpoints or virtual
host, and a change to ``payments`` does not move host-a's xDS versions. Widening
``calls`` makes payments reachable, deleting ``payments`` while ``web`` still calls it is
refused, and narrowing ``calls`` again takes payments away.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from dataplane_harness import HOST, LoopThread, UpstreamServer
from test_proxy_main import bootstrap, http, start, start_control, stop, wait_file

from plait.proxy import proxy_status

T = TypeVar("T")

ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SERVICE = (
    "apiVersion: plait/v1\nkind: Service\nmetadata: {{name: {name}}}\n"
    "spec: {{protocol: http, ports: [{ports}]{calls}}}\n"
)
HTTP_PORT = "{name: http, port: 80}"


def service(name: str, calls: list[str] | None = None, ports: str = HTTP_PORT) -> str:
    extra = "" if calls is None else f", calls: [{', '.join(calls)}]"
    return SERVICE.format(name=name, ports=ports, calls=extra)


def api(base: str, method: str, path: str, doc: Any = None) -> tuple[int, Any]:
    """One control-plane API call: (status, JSON body)."""
    data = None if doc is None else json.dumps(doc).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def apply(base: str, text: str) -> dict[str, Any]:
    status, body = api(base, "POST", "/v1/apply", {"filename": "scoping.yaml", "yaml": text})
    assert status == 200, body
    return body


def poll(fn: Callable[[], T], done: Callable[[T], bool], timeout: float = 20) -> T:
    """``fn()`` until ``done`` says so (every 50 ms, at most ``timeout`` s); the last value."""
    deadline = time.monotonic() + timeout
    value = fn()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = fn()
    return value


@dataclass
class Mesh:
    api: str
    a: dict[str, Any]  # host-a's ready file (fronts web)
    b: dict[str, Any]  # host-b's ready file (fronts orders and payments)
    apps: dict[str, UpstreamServer] = field(default_factory=dict)

    def call(
        self, host: str, path: str, listener: str = "outbound"
    ) -> tuple[int, dict[str, str], bytes]:
        """A request from web's side: through host-a's shared ``outbound`` listener, or
        (``listener="web"``) web's own outbound listener ``outbound|web``."""
        address = (
            self.a["outbound"] if listener == "outbound" else self.a["outbound_services"][listener]
        )
        return http(f"http://{address}{path}", {"Host": host})

    def admin(self, node: dict[str, Any], path: str) -> Any:
        status, _, body = http(node["admin"] + path)
        assert status == 200, body
        return json.loads(body)

    def node_status(self, node_id: str) -> dict[str, Any]:
        _, body = api(self.api, "GET", "/v1/proxy-status")
        [row] = [r for r in body["nodes"] if r["node_id"] == node_id]
        return row


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    lt = LoopThread()
    apps = {name: UpstreamServer(f"{name}-app") for name in ("web", "orders", "payments")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = {name: lt.run(app.start()) for name, app in apps.items()}
        cp = start_control(tmp_path, procs)
        # the config is in place before any proxy connects: host-a's first config is scoped
        apply(
            cp["api"],
            "---\n".join(
                [service("web", calls=["orders"]), service("orders"), service("payments")]
            ),
        )

        def svc(name: str) -> dict[str, Any]:
            return {
                "name": name,
                "app": {"address": HOST, "port": ports[name]},
                "inbound": {"address": HOST, "port": 0},
                "health_check": {"tcp": True, "interval": "0.2s"},
            }

        infos = {}
        for node, services in (("host-b", ["orders", "payments"]), ("host-a", ["web"])):
            path, ready = bootstrap(
                tmp_path, node, cp["xds"], cp["api"], [svc(s) for s in services]
            )
            doc = yaml.safe_load(path.read_text())
            path.write_text(yaml.safe_dump({**doc, "drain_time": "0.1s"}))  # a quick stop
            proc = start(
                ["-m", "plait.proxy", "--config", str(path), "--ready-file", str(ready)],
                tmp_path,
            )
            procs.append(proc)
            infos[node] = (ready, proc)
        a, b = (wait_file(*infos[node]) for node in ("host-a", "host-b"))
        yield Mesh(api=cp["api"], a=a, b=b, apps=apps)
    finally:
        codes = [stop(proc) for proc in reversed(procs)]  # proxies first, then the control
        for app in apps.values():
            lt.run(app.stop())
        lt.stop()
    assert codes == [0, 0, 0], codes  # every process stopped cleanly on SIGTERM


def healthy_instances(mesh: Mesh) -> set[str]:
    _, body = api(mesh.api, "GET", "/v1/registry")
    return {row["service"] for row in body["instances"] if row.get("healthy")}


def outbound_view(mesh: Mesh, node: dict[str, Any]) -> tuple[set[str], set[str], list[str]]:
    """(outbound clusters in /clusters, clusters with endpoints in /config_dump, the
    ``outbound`` route table's virtual hosts) of a proxy."""
    clusters = {c for c in mesh.admin(node, "/clusters")["clusters"] if c.startswith("outbound|")}
    config = mesh.admin(node, "/config_dump")["config"]
    endpoints = {c for c in config["endpoints"] if c.startswith("outbound|")}
    hosts = [vh["name"] for vh in config["route_tables"]["outbound"]["virtual_hosts"]]
    return clusters, endpoints, sorted(hosts)


def assert_not_found(mesh: Mesh, host: str, path: str, listener: str = "outbound") -> None:
    """host-a itself answers 404 destination_not_found: no virtual host for ``host``."""
    status, headers, body = mesh.call(host, path, listener)
    assert status == 404, (status, headers, body)
    [(hop, params)] = proxy_status.parse(headers["proxy-status"])
    assert hop == "host-a/outbound"
    assert params["error"] == proxy_status.DESTINATION_NOT_FOUND
    details = f"no route for host {host!r} path {path!r}"
    assert params["details"] == details
    assert body == f"host-a/outbound: destination_not_found: {details}\n".encode()


def test_a_proxy_gets_only_the_services_its_local_service_calls(mesh: Mesh) -> None:
    # orders, declared in web's calls, answers through host-a and host-b
    status, headers, body = poll(lambda: mesh.call("orders", "/order/1"), lambda r: r[0] == 200)
    assert status == 200, (status, headers, body)
    assert body.startswith(b"orders-app GET /order/1")
    assert headers["via"] == "1.1 host-b, 1.1 host-a"

    # payments is registered and healthy (host-b serves it), so without scoping host-a
    # would route it; with scoping host-a has no virtual host for it
    everything = (
        {"outbound|orders", "outbound|payments", "outbound|web"},
        {"outbound|orders", "outbound|payments", "outbound|web"},
        ["orders", "payments", "web"],
    )
    services = {"orders", "payments", "web"}
    assert poll(lambda: healthy_instances(mesh), lambda s: s == services) == services
    # host-b fronts services without calls: it gets everything
    assert poll(lambda: outbound_view(mesh, mesh.b), lambda v: v == everything) == everything
    assert_not_found(mesh, "payments", "/pay")
    assert_not_found(mesh, "payments:80", "/pay")
    assert_not_found(mesh, "payments", "/pay", listener="web")  # web's own outbound listener
    assert mesh.call("orders", "/order/1", listener="web")[0] == 200
    assert mesh.apps["payments"].requests == []
    assert outbound_view(mesh, mesh.a) == ({"outbound|orders"}, {"outbound|orders"}, ["orders"])
    row = mesh.node_status("host-a")
    assert (row["connected"], row["plait_proxy"], row["status"]) == (True, True, "SYNCED"), row

    # a change to payments moves host-b's routes, not host-a's versions
    before = {t: s["acked"] for t, s in mesh.node_status("host-a")["types"].items()}
    b_routes = mesh.node_status("host-b")["types"][ROUTE_TYPE]["acked"]
    apply(mesh.api, service("payments", ports=HTTP_PORT + ", {name: alt, port: 8080}"))
    row_b = poll(
        lambda: mesh.node_status("host-b"),
        lambda r: r["types"][ROUTE_TYPE]["acked"] != b_routes and r["status"] == "SYNCED",
    )
    assert row_b["types"][ROUTE_TYPE]["acked"] != b_routes, row_b
    after = {t: s["acked"] for t, s in mesh.node_status("host-a")["types"].items()}
    assert after == before
    assert_not_found(mesh, "payments:8080", "/pay")

    # widening web's calls: payments answers through host-a within a bounded wait
    apply(mesh.api, service("web", calls=["orders", "payments"]))
    status, headers, body = poll(lambda: mesh.call("payments", "/pay"), lambda r: r[0] == 200)
    assert status == 200, (status, headers, body)
    assert body.startswith(b"payments-app GET /pay")
    assert headers["via"] == "1.1 host-b, 1.1 host-a"
    assert outbound_view(mesh, mesh.a) == (
        {"outbound|orders", "outbound|payments"},
        {"outbound|orders", "outbound|payments"},
        ["orders", "payments"],
    )

    # payments cannot be deleted while web still calls it; nothing changes
    status, refusal = api(mesh.api, "DELETE", "/v1/config/Service/payments")
    assert status == 400, refusal
    [error] = refusal["errors"]
    assert (error["kind"], error["name"]) == ("Service", "payments")
    assert "Service 'web' still calls this Service (spec.calls)" in error["message"]
    assert api(mesh.api, "GET", "/v1/config/Service/payments")[0] == 200
    assert mesh.call("payments", "/pay")[0] == 200

    # narrowing web's calls again takes payments away from host-a
    apply(mesh.api, service("web", calls=["orders"]))
    poll(lambda: mesh.call("payments", "/pay")[0], lambda s: s == 404)
    assert_not_found(mesh, "payments", "/pay")
    assert outbound_view(mesh, mesh.a) == ({"outbound|orders"}, {"outbound|orders"}, ["orders"])
    assert mesh.call("orders", "/order/2")[0] == 200
    assert api(mesh.api, "DELETE", "/v1/config/Service/payments")[0] == 200
