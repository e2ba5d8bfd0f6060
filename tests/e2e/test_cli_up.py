"""``plait up --detach`` as a user runs it, then the CLI against that mesh, then ``plait down``.

One mesh for the module (starting one takes seconds). Its processes are stopped by PID in
teardown even when a test fails; ``test_down_stops_every_pid`` runs last (file order).
Everything binds 127.0.0.1 with ports chosen by the kernel.

The demo Services declare ``calls`` (examples/demo-mesh.yaml), so each proxy is scoped to
what its app calls: requests enter at frontend's inbound listener, and
``test_each_demo_proxy_gets_only_what_its_service_calls`` checks every proxy's clusters.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PLAIT = Path(sys.executable).with_name("plait")
HOSTS = ("host-frontend", "host-orders-v1", "host-orders-v2", "host-inventory")
# What each demo proxy may call: the services its app calls (spec.calls in the demo YAML).
SCOPES = {
    "host-frontend": {"orders"},
    "host-orders-v1": {"inventory"},
    "host-orders-v2": {"inventory"},
    "host-inventory": set(),
}

pytestmark = [
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl"),
    pytest.mark.skipif(not PLAIT.exists(), reason=f"needs the console script {PLAIT}"),
    pytest.mark.timeout(300),
]


def plait(*args: str, state_dir: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PLAIT_API", "PLAIT_STATE_DIR")}
    env["COLUMNS"] = "250"
    return subprocess.run(
        [str(PLAIT), *args, "--state-dir", str(state_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def curl(*args: str) -> str:
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--noproxy", "", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def alive(pid: int) -> bool:
    """Running and not a zombie (a detached process may be reaped late by init)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def kill_all(pids: list[int], timeout: float = 10.0) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def up_pids(state_dir: Path) -> list[int]:
    try:
        state = json.loads((state_dir / "up.json").read_text())
    except (OSError, ValueError):
        return []
    return [int(p["pid"]) for p in state.get("processes") or []]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    state_dir = tmp_path_factory.mktemp("plait-up") / ".plait"
    env = {k: v for k, v in os.environ.items() if k not in ("PLAIT_API", "PLAIT_STATE_DIR")}
    up = subprocess.Popen(
        [str(PLAIT), "up", "--detach", "--state-dir", str(state_dir), "--timeout", "90"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        try:
            out, err = up.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            up.send_signal(signal.SIGTERM)  # `plait up` stops what it started
            out, err = up.communicate(timeout=30)
            pytest.fail(f"plait up did not finish:\n{out}\n{err}")
        pids = up_pids(state_dir)
        logs = "\n".join(
            f"--- {log.name}\n{log.read_text()[-2000:]}"
            for log in sorted((state_dir / "logs").glob("*.log"))
        )
        assert up.returncode == 0, f"plait up failed:\n{out}\n{err}\n{logs}"
        assert "curl http://127.0.0.1:" in out and "/clusters" in out
        state = json.loads((state_dir / "up.json").read_text())
        yield state_dir, state
    finally:
        kill_all(pids or up_pids(state_dir))


def test_curl_through_the_mesh_goes_frontend_orders_inventory(mesh) -> None:
    _, state = mesh
    inbound = state["hosts"]["host-frontend"]["inbound"]["frontend"]
    versions = set()
    for i in range(20):
        reply = json.loads(curl("-H", f"x-request-id: e2e-{i}", f"http://{inbound}/hi"))
        services = [hop.split("/")[0] for hop in reply["chain"]]
        assert services == ["frontend", "orders", "inventory"], reply
        assert reply["service"] == "frontend" and reply["path"] == "/hi"
        assert reply["request_id"] == f"e2e-{i}"
        versions.add(reply["chain"][1])
    assert "orders/v1" in versions  # 90% of requests; v2 may or may not show up in 20


def test_the_printed_curl_commands_work(mesh) -> None:
    _, state = mesh
    for command in state["curl"]:
        args = command.split()
        assert args[0] == "curl"
        reply = json.loads(curl(*args[1:]))
        assert [hop.split("/")[0] for hop in reply["chain"]] == ["frontend", "orders", "inventory"]


def clusters_of(state: dict[str, Any], host: str) -> dict[str, Any]:
    """``host``'s proxy's clusters (admin ``/clusters``)."""
    admin = state["hosts"][host]["admin"].rstrip("/")
    return dict(json.loads(curl(f"{admin}/clusters"))["clusters"])


def outbound_services(clusters: dict[str, Any]) -> set[str]:
    """The services of the ``outbound|<svc>`` (and ``outbound|<svc>|<subset>``) clusters."""
    return {name.split("|")[1] for name in clusters if name.startswith("outbound|")}


def via_outbound(state: dict[str, Any], host: str, url: str) -> tuple[int, str, bytes]:
    """``GET url`` through ``host``'s outbound proxy: status, Proxy-Status, body."""
    address, _, port = state["hosts"][host]["outbound"].rpartition(":")
    conn = http.client.HTTPConnection(address, int(port), timeout=10)
    try:
        conn.request("GET", url)
        resp = conn.getresponse()
        return resp.status, resp.getheader("proxy-status") or "", resp.read()
    finally:
        conn.close()


def test_each_demo_proxy_gets_only_what_its_service_calls(mesh) -> None:
    """Scoping by ``spec.calls``: each proxy has the clusters (with endpoints) of the
    services its app calls and no other; a service not called is not routed."""
    _, state = mesh
    for host, scope in SCOPES.items():
        clusters = clusters_of(state, host)
        assert outbound_services(clusters) == scope, (host, sorted(clusters))
        for svc in scope:
            assert clusters[f"outbound|{svc}"]["endpoints"], (host, clusters[f"outbound|{svc}"])
    subsets = {n for n in clusters_of(state, "host-frontend") if n.startswith("outbound|orders|")}
    assert subsets == {"outbound|orders|version=v1", "outbound|orders|version=v2"}
    # The printed inspection command shows the same thing.
    printed = state["clusters"].split()
    assert printed[0] == "curl"
    assert outbound_services(json.loads(curl(*printed[1:]))["clusters"]) == SCOPES["host-frontend"]
    # frontend calls orders, so its proxy routes there; inventory it does not call.
    status, _, body = via_outbound(state, "host-frontend", "http://orders/scoped")
    assert status == 200, body
    assert [hop.split("/")[0] for hop in json.loads(body)["chain"]] == ["orders", "inventory"]
    status, proxy_status, body = via_outbound(state, "host-frontend", "http://inventory/scoped")
    assert status == 404, body
    assert proxy_status.startswith('"host-frontend/outbound"'), proxy_status
    assert "error=destination_not_found" in proxy_status, proxy_status
    status, proxy_status, _ = via_outbound(state, "host-inventory", "http://orders/scoped")
    assert status == 404 and "error=destination_not_found" in proxy_status, proxy_status


def test_status_and_proxy_status_show_every_node_synced(mesh) -> None:
    state_dir, _ = mesh
    deadline = time.monotonic() + 30
    while True:
        out = plait("proxy-status", state_dir=state_dir)
        assert out.returncode == 0, out.stderr
        rows = {host: line for line in out.stdout.splitlines() for host in HOSTS if host in line}
        if all("SYNCED" in rows.get(host, "") for host in HOSTS) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for host in HOSTS:
        assert "SYNCED" in rows.get(host, ""), out.stdout
    status = plait("status", state_dir=state_dir)
    assert status.returncode == 0, status.stderr
    for word in (*HOSTS, "control", "frontend", "orders", "inventory", "healthy", "SYNCED"):
        assert word in status.stdout, status.stdout
    for host in HOSTS:
        assert f"proxy:{host}" in status.stdout


BROKEN = """\
apiVersion: plait/v1
kind: Service
metadata:
  name: broken-svc
---
apiVersion: plait/v1
kind: Route
metadata:
  name: broken-split
spec:
  service: broken-svc
  rules:
    - backends:
        - subset: {version: v1}
          weight: 90
        - subset: {version: v2}
          weight: -5
"""


def test_apply_of_a_broken_file_names_file_document_field_and_line(mesh, tmp_path) -> None:
    state_dir, _ = mesh
    broken = tmp_path / "broken-split.yaml"
    broken.write_text(BROKEN)
    out = plait("apply", "-f", str(broken), state_dir=state_dir)
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "broken-split.yaml" in text
    assert "document 2" in text
    assert "spec.rules[0].backends[1].weight" in text
    assert "line 17" in text
    listed = plait("get", "-o", "json", state_dir=state_dir)
    assert "broken-svc" not in listed.stdout  # nothing was applied


def test_apply_of_a_valid_file_prints_the_new_version(mesh, tmp_path) -> None:
    state_dir, _ = mesh
    extra = tmp_path / "extra.yaml"
    extra.write_text("apiVersion: plait/v1\nkind: Service\nmetadata: {name: e2e-extra}\n")
    out = plait("apply", "-f", str(extra), state_dir=state_dir)
    assert out.returncode == 0, out.stderr
    assert "version" in out.stdout and "Service/e2e-extra" in out.stdout
    deleted = plait("delete", "Service", "e2e-extra", state_dir=state_dir)
    assert deleted.returncode == 0, deleted.stderr
    history = plait("history", state_dir=state_dir)
    assert "e2e-extra" in history.stdout


def test_get_route_shows_the_split(mesh) -> None:
    state_dir, _ = mesh
    out = plait("get", "Route", state_dir=state_dir)
    assert out.returncode == 0, out.stderr
    assert "orders-split" in out.stdout
    assert "90% version=v1" in out.stdout and "10% version=v2" in out.stdout
    as_json = json.loads(
        plait("get", "route", "orders-split", "-o", "json", state_dir=state_dir).stdout
    )
    weights = {b["subset"]["version"]: b["weight"] for b in as_json["spec"]["rules"][0]["backends"]}
    assert weights == {"v1": 90, "v2": 10}


def test_cli_without_a_control_plane_says_how_to_start_one(tmp_path) -> None:
    out = plait("get", "--api", "http://127.0.0.1:1", state_dir=tmp_path)
    assert out.returncode == 1
    assert "cannot reach the control plane at http://127.0.0.1:1" in out.stderr
    assert "plait up" in out.stderr
    out = plait("status", state_dir=tmp_path / "none")
    assert out.returncode == 1 and "plait up" in out.stderr


def test_down_stops_every_pid(mesh) -> None:
    state_dir, state = mesh
    pids = [int(p["pid"]) for p in state["processes"]]
    assert len(pids) == 1 + 2 * len(HOSTS)  # control plane, and a proxy and an app per host
    assert all(alive(pid) for pid in pids)
    out = plait("down", state_dir=state_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in pids if alive(p)] == []
    assert not (state_dir / "up.json").exists()
    again = plait("down", state_dir=state_dir)
    assert again.returncode == 0 and "nothing to stop" in again.stdout
