"""``plait proxy --workers N``: N processes on the same ports, supervised (docs/internals.md).

Against a real control plane: both workers of ``--workers 2`` serve traffic (each
worker's own admin counts its requests), the local service is registered once, each
worker is its own xDS node, a worker killed with SIGKILL is replaced while traffic keeps
flowing (the replacement listens only once it has a config: with the control plane
stopped and no last-known-good it leaves every request to the running worker), SIGTERM
to the supervisor stops every worker (and deregisters the service), and a supervisor
killed with SIGKILL leaves no worker behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from dataplane_harness import HOST, LoopThread, UpstreamServer, outbound_config
from test_proxy_main import http, start, start_control, wait_file

from plait.proxy.dataplane import DataPlane
from plait.proxy.lkg import LKG_FILE
from plait.proxy.main import serve_when_configured

MANIFEST = (
    "apiVersion: plait/v1\nkind: Service\nmetadata: {name: orders}\n"
    "spec: {protocol: http, ports: [{name: http, port: 80}]}\n"
)


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped yet whose every thread has exited (a
    thread group's leader shows Z while its other threads may still hold its sockets).

    A thread that vanishes while it is read has exited, but only that thread: the
    others decide (a killed worker's first thread gone is no sign its sockets are)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):  # the whole process is gone
        return True
    for tid in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):  # this thread exited and was reaped
            continue
        if stat[stat.rindex(")") + 2] not in "ZX":
            return False
    return True


def listening_ports(pid: int) -> set[int]:
    """The TCP ports that process ``pid``'s sockets listen on (``/proc/net/tcp``)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def requests_served(admin: str) -> int:
    text = http(admin + "/stats/prometheus")[2].decode()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("plait_requests_total{") and 'direction="outbound"' in line
    )


def get_json(url: str) -> Any:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as r:
        return json.loads(r.read())


class Mesh:
    """A control plane with Service orders, its app, and a bootstrap for a proxy fronting
    it (the proxy routes its own outbound requests to its own inbound listener)."""

    def __init__(self, tmp: Path, procs: list[subprocess.Popen[bytes]], lt: LoopThread) -> None:
        self.tmp = tmp
        self.app = UpstreamServer("orders-app")
        app_port = lt.run(self.app.start())
        cp = start_control(tmp, procs)
        self.control = procs[-1]
        self.api = cp["api"]
        body = json.dumps({"filename": "svc.yaml", "yaml": MANIFEST}).encode()
        req = urllib.request.Request(self.api + "/v1/apply", data=body, method="POST")
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=5):
            pass
        self.ready = tmp / "ready.json"
        self.bootstrap = tmp / "bootstrap.yaml"
        doc = {
            "node_id": "host-w",
            "control_plane": {"xds": cp["xds"], "api": self.api},
            "services": [
                {
                    "name": "orders",
                    "labels": {"version": "v1"},
                    "app": {"address": HOST, "port": app_port},
                    "health_check": {"tcp": True, "interval": "0.2s"},
                }
            ],
            "heartbeat_interval": "0.2s",
            "lease_ttl": "5s",
            "drain_time": "0.3s",
            "data_dir": str(tmp / "data"),
            "access_log": str(tmp / "access.log"),
        }
        self.bootstrap.write_text(yaml.safe_dump(doc))

    def start_proxy(self, workers: int) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        argv = ["-m", "plait.proxy", "--config", str(self.bootstrap)]
        argv += ["--ready-file", str(self.ready), "--workers", str(workers), "--grace", "1"]
        proxy = start(argv, self.tmp)
        return proxy, wait_file(self.ready, proxy, timeout=30)

    def instances(self) -> list[dict[str, Any]]:
        return [i for i in get_json(self.api + "/v1/registry")["instances"]]

    def request_ok(self, outbound: str) -> bool:
        status, headers, _ = http(f"http://{outbound}/hello", {"Host": "orders"})
        self.last = (status, headers.get("proxy-status"))
        return status == 200


def test_two_workers_share_the_ports_and_are_supervised(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], lt: LoopThread
) -> None:
    mesh = Mesh(tmp_path, procs, lt)
    proxy, info = mesh.start_proxy(2)
    procs.append(proxy)
    assert info["pid"] == proxy.pid
    workers = info["workers"]
    assert [w["node_id"] for w in workers] == ["host-w", "host-w.w1"]
    pids = [w["pid"] for w in workers]
    assert proxy.pid not in pids and len(set(pids)) == 2
    assert all(parent_of(pid) == proxy.pid for pid in pids)
    assert workers[0]["admin"] == info["admin"] and workers[1]["admin"] != info["admin"]

    outbound = info["outbound"]
    wait_for(lambda: mesh.request_ok(outbound), 20, "a 200 through the workers")
    # each request is a new connection: the kernel spreads them over both workers
    for _ in range(60):
        assert mesh.request_ok(outbound)
    served = [requests_served(w["admin"]) for w in workers]
    assert all(n > 0 for n in served), served
    assert sum(served) >= 60

    # registered once, under the proxy's node id; every worker is its own xDS node
    orders = [i for i in mesh.instances() if i["service"] == "orders"]
    assert [(i["node_id"], i["port"]) for i in orders] == [
        ("host-w", int(info["inbound"]["orders"].rsplit(":", 1)[1]))
    ]
    nodes = {n["node_id"] for n in get_json(mesh.api + "/v1/proxy-status")["nodes"]}
    assert {"host-w", "host-w.w1"} <= nodes
    # the proxy's name in Via / access log is the same whichever worker answered
    assert http(f"http://{outbound}/hello", {"Host": "orders"})[1]["via"] == (
        "1.1 host-w, 1.1 host-w"
    )

    # a worker killed is replaced; traffic keeps flowing meanwhile. Connections that the
    # killed worker held die with it: those the kernel had queued at it (so send once it
    # is gone), and worker 0's idle keep-alive connection to the inbound listener, if the
    # killed worker had accepted it (the first request may be the one that finds it dead).
    # The control plane is stopped and worker 1's last-known-good removed, so its
    # replacement has no config to serve: it must not listen (and answer 503) until the
    # control plane is back; worker 0 takes every request meanwhile.
    control = mesh.control
    control.send_signal(signal.SIGSTOP)
    try:
        os.kill(pids[1], signal.SIGKILL)
        wait_for(lambda: gone(pids[1]), 10, "the killed worker to be gone")
        (tmp_path / "data" / "worker-1" / LKG_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            mesh.request_ok(outbound)
        for _ in range(20):
            assert mesh.request_ok(outbound), mesh.last

        def replacement() -> int | None:
            kids = Path(f"/proc/{proxy.pid}/task/{proxy.pid}/children").read_text().split()
            return next((int(k) for k in kids if int(k) not in pids), None)

        new_pid = wait_for(replacement, 10, "worker 1's replacement to start")
        # its admin listens once its data plane's sockets are bound: then it is waiting
        wait_for(lambda: listening_ports(new_pid), 20, "the replacement's admin")
        outbound_port = int(outbound.rsplit(":", 1)[1])
        inbound_port = int(info["inbound"]["orders"].rsplit(":", 1)[1])
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            assert mesh.request_ok(outbound), mesh.last
        assert not {outbound_port, inbound_port} & listening_ports(new_pid)
        assert json.loads(mesh.ready.read_text())["workers"][1]["pid"] == pids[1]
    finally:
        control.send_signal(signal.SIGCONT)

    def replaced() -> dict[str, Any] | None:
        now = json.loads(mesh.ready.read_text())
        w1 = now["workers"][1]
        return now if w1["pid"] not in (None, pids[1]) and w1["restarts"] == 1 else None

    info2 = wait_for(replaced, 20, "worker 1 to be replaced")
    assert info2["workers"][1]["pid"] == new_pid
    assert gone(pids[1]) and not gone(new_pid) and parent_of(new_pid) == proxy.pid
    assert info2["workers"][0]["pid"] == pids[0]
    assert {outbound_port, inbound_port} <= listening_ports(new_pid)
    admin1 = info2["workers"][1]["admin"]
    assert http(admin1 + "/ready")[0] == 200  # reported ready once it had a config
    for _ in range(60):
        assert mesh.request_ok(outbound)
    assert requests_served(admin1) > 0

    # SIGTERM to the supervisor: every worker drains and exits, the service leaves
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait(20) == 0
    for pid in (pids[0], new_pid):
        assert gone(pid)
    assert [i for i in mesh.instances() if i["node_id"] == "host-w"] == []
    lt.run(mesh.app.stop())


def refused(port: int) -> bool:
    """A connect to ``port`` is refused: nothing listens there."""
    try:
        socket.create_connection((HOST, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("config", [True, False], ids=["configured", "timed-out"])
def test_a_replacement_listens_once_it_has_a_config_or_after_the_timeout(
    lt: LoopThread, config: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """What a replaced worker's run_proxy does: bind without listening, then
    main.serve_when_configured; also the outcome when no config ever comes."""
    dp = DataPlane("node-t", local_services=["orders"], reuse_port=True)
    out = lt.run(dp.bind("outbound", HOST, 0, "outbound", listen=False))[1]
    inb = lt.run(dp.bind("inbound|orders", HOST, 0, "inbound", "orders", listen=False))[1]
    configured = asyncio.Event()
    served: list[float] = []
    timeout = 30.0 if config else 1.5
    try:
        waiting = asyncio.run_coroutine_threadsafe(
            serve_when_configured(dp, configured, timeout, lambda: served.append(1.0)), lt.loop
        )
        assert refused(out) and refused(inb) and not served
        if config:
            lt.call(dp.apply, outbound_config({}, inbound={"orders": out}))
            lt.call(configured.set)
        waiting.result(10)
        assert served == [1.0]
        status, headers, _ = http(f"http://{HOST}:{out}/x", {"Host": "nowhere"})
        details = proxy_status_details(headers)
        if config:  # answered by the config: no such service
            assert status == 404 and "no config" not in details, (status, details)
        else:  # listening without one: as a proxy that just started
            assert status == 503 and details == "no config from control plane yet"
            assert "no config within 1.5s" in caplog.text
        assert not refused(inb)
    finally:
        lt.run(dp.close(grace=0.5))


def proxy_status_details(headers: dict[str, str]) -> str:
    value = headers.get("proxy-status", "")
    return value.split('details="', 1)[1].split('"', 1)[0] if 'details="' in value else ""


def test_a_supervisor_killed_leaves_no_worker(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], lt: LoopThread
) -> None:
    mesh = Mesh(tmp_path, procs, lt)
    proxy, info = mesh.start_proxy(2)
    procs.append(proxy)
    pids = [w["pid"] for w in info["workers"]]
    assert not any(gone(pid) for pid in pids)
    proxy.kill()
    proxy.wait(5)
    wait_for(lambda: all(gone(pid) for pid in pids), 15, "the workers to exit")
    lt.run(mesh.app.stop())


def test_workers_one_is_a_single_process(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], lt: LoopThread
) -> None:
    mesh = Mesh(tmp_path, procs, lt)
    proxy, info = mesh.start_proxy(1)
    procs.append(proxy)
    assert info["pid"] == proxy.pid and "workers" not in info
    assert Path(f"/proc/{proxy.pid}/task/{proxy.pid}/children").read_text().split() == []
    wait_for(lambda: mesh.request_ok(info["outbound"]), 20, "a 200 through the proxy")
    lt.run(mesh.app.stop())


@pytest.mark.parametrize("value", ["0", "-2"])
def test_workers_below_one_is_refused(tmp_path: Path, value: str) -> None:
    boot = tmp_path / "b.yaml"
    boot.write_text("node_id: a\ncontrol_plane: {xds: '127.0.0.1:1', api: 'http://127.0.0.1:1'}\n")
    r = subprocess.run(
        [sys.executable, "-m", "plait.proxy", "--config", str(boot), "--workers", value],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert f"--workers must be at least 1, got {value}" in r.stderr
