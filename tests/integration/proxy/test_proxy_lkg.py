"""Last-known-good boot and control plane failover, with real processes (docs/resilience.md)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from dataplane_harness import HOST, LoopThread, UpstreamServer
from test_proxy_main import bootstrap, http, start, stop, wait_file

MANIFEST = (
    "apiVersion: plait/v1\nkind: Service\nmetadata: {name: orders}\n"
    "spec: {protocol: http, ports: [{name: http, port: 80}]}\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def control(tmp: Path, name: str, xds_port: int, api_port: int) -> subprocess.Popen[bytes]:
    ready = tmp / f"{name}.json"
    ready.unlink(missing_ok=True)
    proc = start(
        [
            "-m", "plait.control", "--data-dir", str(tmp / name),
            "--xds-port", str(xds_port), "--api-port", str(api_port), "--ready-file", str(ready),
        ],
        tmp,
    )  # fmt: skip
    wait_file(ready, proc)
    return proc


def apply(api: str) -> None:
    body = json.dumps({"filename": "svc.yaml", "yaml": MANIFEST}).encode()
    req = urllib.request.Request(api + "/v1/apply", data=body, method="POST")
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=5) as r:
        assert r.status == 200


def until(check: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {check}")


def proxy(tmp: Path, xds: Any, api: Any, app_port: int, inbound: int) -> tuple[Any, dict[str, Any]]:
    svc = {
        "name": "orders",
        "app": {"address": HOST, "port": app_port},
        "inbound": {"address": HOST, "port": inbound},
    }
    path, ready = bootstrap(tmp, "host-a", "127.0.0.1:1", "http://127.0.0.1:1", [svc])
    doc = json.loads(json.dumps(__import__("yaml").safe_load(path.read_text())))
    doc["control_plane"] = {"xds": xds, "api": api}
    path.write_text(__import__("yaml").safe_dump(doc))
    ready.unlink(missing_ok=True)
    proc = start(["-m", "plait.proxy", "--config", str(path), "--ready-file", str(ready)], tmp)
    return proc, wait_file(ready, proc)


def get(info: dict[str, Any]) -> int:
    return http(f"http://{info['outbound']}/hello", {"Host": "orders"})[0]


def test_boots_from_last_known_good_then_goes_live(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], lt: LoopThread
) -> None:
    app = UpstreamServer("orders-app")
    app_port = lt.run(app.start())
    xds_port, api_port, inbound = free_port(), free_port(), free_port()
    xds, api = f"{HOST}:{xds_port}", f"http://{HOST}:{api_port}"
    cp = control(tmp_path, "cp", xds_port, api_port)
    procs.append(cp)
    apply(api)
    p, info = proxy(tmp_path, xds, api, app_port, inbound)
    procs.append(p)
    until(lambda: get(info) == 200)
    lkg = tmp_path / "data-host-a" / "lkg.dat"
    until(lambda: lkg.exists() and b"ClusterLoadAssignment" in lkg.read_bytes())
    time.sleep(0.5)

    cp.send_signal(signal.SIGKILL)  # the control plane dies
    cp.wait(5)
    stop(p)
    p, info = proxy(tmp_path, xds, api, app_port, inbound)  # restart while it is down
    procs.append(p)
    status, _, body = until(lambda: (r := http(info["admin"] + "/ready"))[0] == 200 and r)
    text = body.decode()
    assert text.startswith("ready: serving last-known-good config version "), text
    assert " from 20" in text
    dump = json.loads(http(info["admin"] + "/config_dump")[2])
    assert dump["source"] == "last-known-good"
    assert [get(info) for _ in range(20)] == [200] * 20  # 0 failures after ready

    cp = control(tmp_path, "cp", xds_port, api_port)  # back: the proxy goes live
    procs.append(cp)
    until(lambda: b"live" in http(info["admin"] + "/ready")[2])
    assert json.loads(http(info["admin"] + "/config_dump")[2])["source"] == "live"
    assert get(info) == 200

    def reported_live() -> bool:
        nodes = json.loads(http(api + "/v1/proxy-status")[2])["nodes"]
        return any(n.get("config_source", {}).get("source") == "live" for n in nodes)

    until(reported_live)  # the heartbeat tells the control plane

    # a corrupt file, control plane down: a clear message, nothing half served
    cp.send_signal(signal.SIGKILL)
    cp.wait(5)
    stop(p)
    data = bytearray(lkg.read_bytes())
    data[-20] ^= 0x01
    lkg.write_bytes(bytes(data))
    p, info = proxy(tmp_path, xds, api, app_port, inbound)
    procs.append(p)
    time.sleep(1.0)
    status, _, body = http(info["admin"] + "/ready")
    assert status == 503
    assert str(lkg) in body.decode() and "checksum mismatch" in body.decode()
    assert get(info) == 503
    p.terminate()
    _, err = p.communicate(timeout=10)
    assert str(lkg) in err.decode()
    lt.run(app.stop())


def test_fails_over_to_the_second_control_plane(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], lt: LoopThread
) -> None:
    app = UpstreamServer("orders-app")
    app_port = lt.run(app.start())
    ports = [(free_port(), free_port()) for _ in range(2)]
    cps = [control(tmp_path, f"cp{i}", x, a) for i, (x, a) in enumerate(ports)]
    procs.extend(cps)
    xds = [f"{HOST}:{x}" for x, _ in ports]
    api = [f"http://{HOST}:{a}" for _, a in ports]
    for url in api:
        apply(url)
    p, info = proxy(tmp_path, xds, api, app_port, free_port())
    procs.append(p)
    until(lambda: get(info) == 200)
    dump = json.loads(http(info["admin"] + "/config_dump")[2])
    assert dump["xds"]["target"] == xds[0]

    cps[0].send_signal(signal.SIGKILL)
    cps[0].wait(5)

    def on_second() -> bool:
        x = json.loads(http(info["admin"] + "/config_dump")[2])["xds"]
        return bool(x["connected"] and x["target"] == xds[1])

    until(on_second)
    assert get(info) == 200
    lt.run(app.stop())
