"""The plait cases: a control plane and one or two plait proxies in front of the upstream.

Each case has its own control plane (ports 0, ready file, data dir under the run's work
dir; pinned to the load generator's CPU, it is not under test) with one Service::

    apiVersion: plait/v1
    kind: Service
    metadata: {name: bench}
    spec: {protocol: http, ports: [{name: http, port: 80}]}

* 1 hop: the upstream nginx is registered directly as the one instance of ``bench``
  (``POST /v1/registry/heartbeat``, node ``bench-upstream``, re-sent every few seconds by
  a thread of the harness); one proxy (node ``bench-out``, no local services) routes
  ``Host: bench`` from its outbound listener straight to nginx.
* 2 hops: proxy ``bench-in`` has the local service ``bench`` whose app is the upstream
  nginx (it registers its inbound listener as the instance, with an HTTP health check);
  proxy ``bench-out`` routes ``Host: bench`` to it.

Production defaults stay on: routing, metrics, the access log (to a file), health checks.
Proxies are started as ``python -m plait.proxy --config bootstrap.yaml`` (pinned with
``taskset``) -- the harness does not import plait, so it runs whatever the tree holds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from peers import HOST, SERVICE, Endpoint
from procs import Proc, Procs, StartError, http_get, wait_http_ok, wait_until

SERVICE_YAML = f"""\
apiVersion: plait/v1
kind: Service
metadata:
  name: {SERVICE}
spec:
  protocol: http
  ports:
    - name: http
      port: 80
"""

UPSTREAM_NODE = "bench-upstream"
UPSTREAM_TTL = 60  # seconds; re-sent every UPSTREAM_REFRESH
UPSTREAM_REFRESH = 5.0


def plait_available(python: str = sys.executable) -> str | None:
    """None if ``python -m plait.proxy`` and ``plait.control`` start; else why not."""
    for mod in ("plait.proxy", "plait.control"):
        try:
            r = subprocess.run(
                [python, "-m", mod, "--help"], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"python -m {mod}: {exc}"
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:]
            return f"python -m {mod} --help exited {r.returncode}: {' '.join(tail)}"
    return None


def bootstrap(
    node: str,
    control: dict[str, Any],
    work: Path,
    *,
    app_port: int | None,
    ready_file: Path,
) -> dict[str, Any]:
    """A proxy bootstrap (docs/internals.md): listeners on port 0, access log to a file."""
    listen = {"address": HOST, "port": 0}
    services = []
    if app_port is not None:
        services.append(
            {
                "name": SERVICE,
                "labels": {"version": "v1"},
                "app": {"address": HOST, "port": app_port},
                "inbound": dict(listen),
                "health_check": {
                    "http": "/healthz",
                    "interval": "1s",
                    "timeout": "1s",
                    "unhealthy_threshold": 2,
                    "healthy_threshold": 1,
                },
            }
        )
    return {
        "node_id": node,
        "control_plane": {"xds": control["xds"], "api": control["api"]},
        "admin": dict(listen),
        "outbound": dict(listen),
        "services": services,
        "heartbeat_interval": "1s",
        "lease_ttl": "10s",
        "data_dir": str(work / f"data-{node}"),
        "access_log": str(work / f"access-{node}.log"),
        "ready_file": str(ready_file),
    }


def heartbeat_body(upstream_port: int) -> dict[str, Any]:
    return {
        "node_id": UPSTREAM_NODE,
        "ttl": UPSTREAM_TTL,
        "instances": [
            {
                "service": SERVICE,
                "address": HOST,
                "port": upstream_port,
                "labels": {"version": "v1"},
                "healthy": True,
            }
        ],
    }


def _post_json(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


class PlaitCase:
    """One control plane and the proxies of one plait case; see the module docstring."""

    def __init__(
        self,
        procs: Procs,
        work: Path,
        *,
        hops: int,
        upstream_port: int,
        proxy_cpu: int,
        side_cpu: int,
        python: str = sys.executable,
    ) -> None:
        self.procs = procs
        self.work = work
        self.hops = hops
        self.upstream_port = upstream_port
        self.proxy_cpu = proxy_cpu
        self.side_cpu = side_cpu
        self.python = python
        self.name = f"plait-{hops}hop"
        self.control: Proc | None = None
        self.control_info: dict[str, Any] = {}
        self.proxies: list[Proc] = []
        self.nodes: list[str] = []
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _ready(self, proc: Proc, path: Path, what: str, timeout: float = 30.0) -> dict[str, Any]:
        wait_until(path.exists, timeout, f"{what} ready file {path}", [proc])
        return dict(json.loads(path.read_text()))

    def start(self) -> Endpoint:
        self.work.mkdir(parents=True, exist_ok=True)
        ready = self.work / "control.ready.json"
        ready.unlink(missing_ok=True)
        argv = [self.python, "-m", "plait.control", "--data-dir", str(self.work / "control")]
        argv += ["--host", HOST, "--xds-port", "0", "--api-port", "0", "--ready-file", str(ready)]
        argv += ["--log-level", "WARNING"]
        self.control = self.procs.start(f"{self.name}-control", argv, cpu=self.side_cpu)
        self.control_info = self._ready(self.control, ready, "plait control")
        api = str(self.control_info["api"]).rstrip("/")
        status, answer = _post_json(
            api + "/v1/apply", {"filename": "bench.yaml", "yaml": SERVICE_YAML}
        )
        if status != 200:
            raise StartError(f"applying the bench Service failed: {status} {answer}")

        if self.hops == 1:
            self._heartbeat_once(api)
            self._beat = threading.Thread(target=self._heartbeats, args=(api,), daemon=True)
            self._beat.start()
        else:
            self._proxy("bench-in", app_port=self.upstream_port)
        out = self._proxy("bench-out", app_port=None)
        host, port = str(out["outbound"]).rsplit(":", 1)
        for proc in self.proxies:
            info = json.loads((self.work / f"{proc.name}.ready.json").read_text())
            admin = str(info["admin"]).removeprefix("http://")
            a_host, a_port = admin.rsplit(":", 1)
            wait_until(
                lambda h=a_host, p=int(a_port): http_get(h, p, "/ready")[0] == 200,
                30.0,
                f"{proc.name} /ready",
                [proc, *self.proxies],
            )
        wait_http_ok(
            host,
            int(port),
            headers={"Host": SERVICE},
            timeout=30.0,
            procs=[*self.proxies, self.control],
            what=f"{self.name}: 200 via outbound",
        )
        logs = [self.work / f"access-{node}.log" for node in self.nodes]
        return Endpoint(self.name, int(port), list(self.proxies), logs)

    def _proxy(self, node: str, app_port: int | None) -> dict[str, Any]:
        name = f"{self.name}-{node}"
        ready = self.work / f"{name}.ready.json"
        ready.unlink(missing_ok=True)
        doc = bootstrap(node, self.control_info, self.work, app_port=app_port, ready_file=ready)
        path = self.work / f"bootstrap-{node}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        argv = [self.python, "-m", "plait.proxy", "--config", str(path), "--log-level", "WARNING"]
        proc = self.procs.start(name, argv, cpu=self.proxy_cpu)
        self.proxies.append(proc)
        self.nodes.append(node)
        return self._ready(proc, ready, name)

    def _heartbeat_once(self, api: str) -> None:
        status, answer = _post_json(
            api + "/v1/registry/heartbeat", heartbeat_body(self.upstream_port)
        )
        if status != 200:
            raise StartError(f"registering the upstream failed: {status} {answer}")

    def _heartbeats(self, api: str) -> None:
        while not self._stop.wait(UPSTREAM_REFRESH):
            try:
                self._heartbeat_once(api)
            except (OSError, StartError) as exc:
                print(f"warning: {self.name}: upstream heartbeat failed: {exc}", flush=True)

    def stop(self) -> None:
        self._stop.set()
        for proc in reversed(self.proxies):
            self.procs.stop(proc)
        if self.control is not None:
            self.procs.stop(self.control)
