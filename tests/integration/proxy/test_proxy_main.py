"""``python -m plait.proxy --config b.yaml`` as a process: ready file, admin, signals.

With no control plane it must still bind, write its ready file and answer 503; with the
real control plane (``python -m plait.control``) its listeners get config over xDS and a
request crosses two proxies to an app.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from dataplane_harness import HOST, LoopThread, UpstreamServer

from plait.proxy import proxy_status


def wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.stderr.read().decode()}")
        time.sleep(0.02)
    raise AssertionError(f"no ready file {path}")


def http(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=5) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def start(argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.Popen(
        [sys.executable, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout:
        proc.stdout.close()
    if proc.stderr:
        proc.stderr.close()
    return proc.returncode


def start_control(
    tmp: Path, procs: list[subprocess.Popen[bytes]], name: str = "cp"
) -> dict[str, Any]:
    """``python -m plait.control`` on ephemeral ports (stopped by ``procs``' fixture); its
    ready file: ``{"xds": "127.0.0.1:P", "api": "http://127.0.0.1:Q", ...}``."""
    ready = tmp / f"{name}.json"
    control = start(
        [
            "-m", "plait.control", "--data-dir", str(tmp / name),
            "--xds-port", "0", "--api-port", "0", "--ready-file", str(ready),
        ],
        tmp,
    )  # fmt: skip
    procs.append(control)
    return wait_file(ready, control)


def bootstrap(
    tmp: Path, node: str, xds: str, api: str, services: list[dict[str, Any]]
) -> tuple[Path, Path]:
    ready = tmp / f"ready-{node}.json"
    doc = {
        "node_id": node,
        "control_plane": {"xds": xds, "api": api},
        "admin": {"address": HOST, "port": 0},
        "outbound": {"address": HOST, "port": 0},
        "services": services,
        "heartbeat_interval": "0.2s",
        "lease_ttl": "5s",
        "data_dir": str(tmp / f"data-{node}"),
        "access_log": str(tmp / f"access-{node}.log"),
    }
    path = tmp / f"bootstrap-{node}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, ready


def test_without_a_control_plane_it_serves_503_and_stops_cleanly(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    services = [
        {
            "name": "orders",
            "labels": {"version": "v1"},
            "app": {"address": HOST, "port": 9},
            "inbound": {"address": HOST, "port": 0},
            "health_check": {"tcp": True, "interval": "1s"},
        }
    ]
    path, ready = bootstrap(tmp_path, "host-a", f"{HOST}:1", f"http://{HOST}:1", services)
    proc = start(["-m", "plait.proxy", "--config", str(path), "--ready-file", str(ready)], tmp_path)
    procs.append(proc)
    info = wait_file(ready, proc)
    assert info["pid"] == proc.pid and info["node_id"] == "host-a"
    assert set(info["inbound"]) == {"orders"}
    admin = info["admin"]

    status, _, body = http(admin + "/ready")
    assert (status, body) == (
        503,
        b"not ready: no config with listeners from the control plane yet\n",
    )
    status, _, body = http(admin + "/listeners")
    listeners = json.loads(body)["listeners"]
    assert [(entry["name"], entry["configured"]) for entry in listeners] == [
        ("outbound", False),
        ("inbound|orders", False),
        ("outbound|orders", False),  # the service's own outbound listener (docs/mtls.md)
    ]
    assert listeners[0]["address"] == info["outbound"]
    dump = json.loads(http(admin + "/config_dump")[2])
    assert dump["xds"]["connected"] is False and dump["ready"] is False

    status, headers, _ = http(f"http://{info['outbound']}/x", {"Host": "orders"})
    assert status == 503
    [(hop, params)] = proxy_status.parse(headers["proxy-status"])
    assert hop == "host-a/outbound" and params["error"] == "destination_unavailable"
    status, _, body = http(f"http://{info['inbound']['orders']}/y")
    assert status == 503
    metrics = http(admin + "/stats/prometheus")[2].decode()
    assert 'code="503",reason="destination_unavailable"' in metrics
    assert http(admin + "/nope")[0] == 404

    assert stop(proc) == 0
    lines = (tmp_path / "access-host-a.log").read_text().splitlines()
    assert [json.loads(line)["direction"] for line in lines] == ["outbound", "inbound"]


def test_bad_bootstrap_exits_2_with_the_field(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("node_id: a\ncontrol_plane: {xds: nope, api: http://127.0.0.1:1}\n")
    r = subprocess.run(
        [sys.executable, "-m", "plait.proxy", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "control_plane.xds" in r.stderr


def test_with_the_control_plane_a_request_crosses_two_proxies(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], lt: LoopThread
) -> None:
    app = UpstreamServer("orders-app")
    app_port = lt.run(app.start())
    cp = start_control(tmp_path, procs)
    xds, api = cp["xds"], cp["api"]
    svc = {
        "name": "orders",
        "labels": {"version": "v1"},
        "app": {"address": HOST, "port": app_port},
        "inbound": {"address": HOST, "port": 0},
        "health_check": {"tcp": True, "interval": "0.2s"},
    }
    path_a, ready_a = bootstrap(tmp_path, "host-a", xds, api, [])
    path_b, ready_b = bootstrap(tmp_path, "host-b", xds, api, [svc])
    a = start(
        ["-m", "plait.proxy", "--config", str(path_a), "--ready-file", str(ready_a)], tmp_path
    )
    b = start(
        ["-m", "plait.proxy", "--config", str(path_b), "--ready-file", str(ready_b)], tmp_path
    )
    procs += [a, b]
    info_a = wait_file(ready_a, a)
    wait_file(ready_b, b)
    manifest = (
        "apiVersion: plait/v1\nkind: Service\nmetadata: {name: orders}\n"
        "spec: {protocol: http, ports: [{name: http, port: 80}]}\n"
    )
    body = json.dumps({"filename": "svc.yaml", "yaml": manifest}).encode()
    req = urllib.request.Request(api + "/v1/apply", data=body, method="POST")
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=5) as r:
        assert r.status == 200

    deadline = time.monotonic() + 20
    status, headers, text = 0, {}, b""
    while time.monotonic() < deadline:
        status, headers, text = http(
            f"http://{info_a['outbound']}/hello", {"Host": "orders", "x-request-id": "rid-1"}
        )
        if status == 200:
            break
        time.sleep(0.1)
    assert status == 200, (status, headers, text)
    assert text.startswith(b"orders-app GET /hello")
    assert headers["via"] == "1.1 host-b, 1.1 host-a"
    assert http(info_a["admin"] + "/ready")[0] == 200
    [seen] = app.requests
    assert seen.header("x-request-id") == "rid-1"
    assert seen.header("via") == "1.1 host-a, 1.1 host-b"
    clusters = json.loads(http(info_a["admin"] + "/clusters")[2])["clusters"]
    assert clusters["outbound|orders"]["endpoints"][0]["total"] >= 1
    for p in (a, b):
        assert stop(p) == 0
    logs = [
        json.loads(line)
        for node in ("a", "b")
        for line in (tmp_path / f"access-host-{node}.log").read_text().splitlines()
    ]
    assert {(e["node"], e["direction"]) for e in logs if e["request_id"] == "rid-1"} == {
        ("host-a", "outbound"),
        ("host-b", "inbound"),
    }
    lt.run(app.stop())
