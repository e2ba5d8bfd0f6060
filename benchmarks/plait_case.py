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
* 2 hops, mTLS: the same, with ``bench`` set to ``mtls: strict`` (its inbound listener
  takes TLS 1.3 with a client certificate only) and a second Service ``loadgen``. Join
  tokens for ``bench`` and ``loadgen`` are made with ``POST /v1/tokens`` and written into
  the bootstraps (not on the command line: the commands end up in RESULTS.md); each proxy
  makes its ECDSA P-256 key, gets its certificate from the control plane's CA and
  renews it itself (docs/security.md). ``bench-out`` fronts the dummy local service
  ``loadgen`` (an app port that is bound but never listens: nothing calls it) so that it
  has an identity to originate mTLS with; the load enters through ``loadgen``'s own
  outbound listener ``outbound|loadgen`` (docs/mtls.md). Before any load, one curl
  with a unique ``x-request-id`` must come back 200 and its line in ``bench-in``'s access
  log must name ``spiffe://<td>/svc/loadgen`` as the ``peer``: proof that the hop was
  mTLS with loadgen's certificate.

Production defaults stay on: routing, metrics, the access log (to a file), health checks.
Proxies are started as ``python -m plait.proxy --config bootstrap.yaml`` (pinned with
``taskset``) -- the harness does not import plait, so it runs whatever the tree holds.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from peers import HOST, SERVICE, Endpoint
from procs import Proc, Procs, StartError, http_get, wait_http_ok, wait_until

LOADGEN = "loadgen"  # the mTLS case's dummy local service of the outbound proxy


def service_yaml(name: str = SERVICE, mtls: str | None = None) -> str:
    """One ``Service`` document (http, port 80), with ``spec.mtls`` if given."""
    text = f"""\
apiVersion: plait/v1
kind: Service
metadata:
  name: {name}
spec:
  protocol: http
  ports:
    - name: http
      port: 80
"""
    return text + (f"  mtls: {mtls}\n" if mtls else "")


SERVICE_YAML = service_yaml()
MTLS_YAML = service_yaml(SERVICE, "strict") + "---\n" + service_yaml(LOADGEN, "strict")

UPSTREAM_NODE = "bench-upstream"
UPSTREAM_TTL = 60  # seconds; re-sent every UPSTREAM_REFRESH
UPSTREAM_REFRESH = 5.0


def tree_env(tree: str) -> dict[str, str]:
    """The environment that runs plait from the checkout ``tree`` (its ``src`` first on
    ``PYTHONPATH``: its compiled modules when current there); ValueError if it is none."""
    src = Path(tree).resolve() / "src"
    if not (src / "plait").is_dir():
        raise ValueError(f"--tree {tree}: no src/plait there")
    return {"PYTHONPATH": str(src)}


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
    loadgen_port: int | None = None,
    tokens: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A proxy bootstrap (docs/internals.md): listeners on port 0, access log to a file.

    ``app_port``: the local service ``bench`` with that app (and an HTTP health check).
    ``loadgen_port``: the local service ``loadgen`` with that app port (no health check;
    its app is never called). ``tokens``: join tokens by service name; a local service
    with a token gets an identity from the control plane's CA (docs/mtls.md)."""
    listen = {"address": HOST, "port": 0}
    tokens = tokens or {}
    services: list[dict[str, Any]] = []
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
    if loadgen_port is not None:
        services.append(
            {
                "name": LOADGEN,
                "labels": {"version": "v1"},
                "app": {"address": HOST, "port": loadgen_port},
                "inbound": dict(listen),
                "outbound": dict(listen),
            }
        )
    for svc in services:
        if svc["name"] in tokens:
            svc["token"] = tokens[svc["name"]]
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


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def spiffe_id(trust_domain: str, service: str) -> str:
    return f"spiffe://{trust_domain}/svc/{service}"


def check_curl_argv(port: int, request_id: str) -> list[str]:
    """One request through the outbound listener at ``port``, printing only the status."""
    return [
        "curl", "-sS", "--noproxy", "*", "--max-time", "10", "-o", "/dev/null",
        "-w", "%{http_code}", "-H", f"Host: {SERVICE}", "-H", f"x-request-id: {request_id}",
        f"http://{HOST}:{port}/",
    ]  # fmt: skip


def inbound_peer(log_text: str, request_id: str) -> tuple[bool, str | None]:
    """``(found, peer)`` of the inbound access log line of ``request_id`` in ``log_text``
    (JSON lines; the ``peer`` is the caller's SPIFFE id on an mTLS hop, else null)."""
    for line in log_text.splitlines():
        if request_id not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("request_id") == request_id and rec.get("direction") == "inbound":
            return True, rec.get("peer")
    return False, None


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
        mtls: bool = False,
        proxy_args: list[str] | None = None,
        proxy_wrap: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        if mtls and hops != 2:
            raise ValueError("plait mTLS is between two proxies: hops must be 2")
        self.procs = procs
        self.work = work
        self.hops = hops
        self.mtls = mtls
        self.upstream_port = upstream_port
        self.proxy_cpu = proxy_cpu
        self.side_cpu = side_cpu
        self.python = python
        self.proxy_args = list(proxy_args or [])  # extra `plait.proxy` flags (--workers N)
        self.proxy_wrap = list(proxy_wrap)  # a command the proxies run under (valgrind)
        self.env = dict(env or {})  # for every process (e.g. PYTHONPATH: another tree)
        self.name = f"plait-{hops}hop{'-mtls' if mtls else ''}"
        # mTLS: join tokens by service, the never-listening "app" of loadgen, and what the
        # pre-load check found (for the raw JSON and the report's commands).
        self.tokens: dict[str, str] = {}
        self._loadgen_sock: socket.socket | None = None
        self.check: dict[str, Any] = {}
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
        if self.mtls:
            argv += ["--ca-port", "0"]  # the CA's HTTPS listener for CSRs (docs/security.md)
        self.control = self.procs.start(
            f"{self.name}-control", argv, cpu=self.side_cpu, env=self.env
        )
        self.control_info = self._ready(self.control, ready, "plait control")
        api = str(self.control_info["api"]).rstrip("/")
        status, answer = _post_json(
            api + "/v1/apply",
            {"filename": "bench.yaml", "yaml": MTLS_YAML if self.mtls else SERVICE_YAML},
        )
        if status != 200:
            raise StartError(f"applying the bench Service failed: {status} {answer}")
        if self.mtls:
            for svc in (SERVICE, LOADGEN):
                status, answer = _post_json(api + "/v1/tokens", {"service": svc, "ttl": "1h"})
                if status != 200 or not isinstance(answer, dict) or "token" not in answer:
                    raise StartError(f"creating a join token for {svc} failed: {status} {answer}")
                self.tokens[svc] = str(answer["token"])
            # loadgen's "app": a port bound (so no one else takes it) that never listens
            self._loadgen_sock = socket.socket()
            self._loadgen_sock.bind((HOST, 0))

        if self.hops == 1:
            self._heartbeat_once(api)
            self._beat = threading.Thread(target=self._heartbeats, args=(api,), daemon=True)
            self._beat.start()
        else:
            self._proxy("bench-in", app_port=self.upstream_port)
        if self.mtls:
            assert self._loadgen_sock is not None
            loadgen_port = int(self._loadgen_sock.getsockname()[1])
            out = self._proxy("bench-out", app_port=None, loadgen_port=loadgen_port)
            entry = str(out["outbound_services"][LOADGEN])  # outbound|loadgen
        else:
            out = self._proxy("bench-out", app_port=None)
            entry = str(out["outbound"])
        host, port = entry.rsplit(":", 1)
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
            timeout=60.0 if self.mtls else 30.0,  # mTLS: both proxies get certificates first
            procs=[*self.proxies, self.control],
            what=f"{self.name}: 200 via outbound",
        )
        if self.mtls:
            self._check_mtls(api, int(port))
        logs = [self.work / f"access-{node}.log" for node in self.nodes]
        return Endpoint(self.name, int(port), list(self.proxies), logs)

    def _check_mtls(self, api: str, port: int) -> None:
        """One curl through ``outbound|loadgen``; ``bench-in`` must log loadgen as the peer."""
        trust_domain = str(_get_json(api + "/v1/ca/bundle")["trust_domain"])
        want = spiffe_id(trust_domain, LOADGEN)
        request_id = f"plait-bench-mtls-check-{secrets.token_hex(8)}"
        argv = check_curl_argv(port, request_id)
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env)
        status = r.stdout.strip()
        if r.returncode != 0 or status != "200":
            raise StartError(
                f"{self.name}: the mTLS check request got {status or '-'} "
                f"(curl exit {r.returncode}: {r.stderr.strip()[:300]})"
            )
        log = self.work / "access-bench-in.log"
        found: dict[str, Any] = {}

        def logged() -> bool:  # the access log writer flushes within about a second
            text = log.read_text(errors="replace") if log.exists() else ""
            ok, peer = inbound_peer(text, request_id)
            if ok:
                found["peer"] = peer
            return ok

        wait_until(logged, 10.0, f"{request_id} in {log}", self.proxies)
        if found["peer"] != want:
            raise StartError(
                f"{self.name}: the request was not mTLS from loadgen: bench-in logged "
                f"peer={found['peer']!r}, expected {want!r}"
            )
        self.check = {
            "curl": shlex.join(argv),
            "status": int(status),
            "inbound_peer": found["peer"],
            "request_id": request_id,
        }

    def _proxy(
        self, node: str, app_port: int | None, loadgen_port: int | None = None
    ) -> dict[str, Any]:
        name = f"{self.name}-{node}"
        ready = self.work / f"{name}.ready.json"
        ready.unlink(missing_ok=True)
        doc = bootstrap(
            node,
            self.control_info,
            self.work,
            app_port=app_port,
            ready_file=ready,
            loadgen_port=loadgen_port,
            tokens=self.tokens,
        )
        path = self.work / f"bootstrap-{node}.yaml"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # may hold join tokens
        with os.fdopen(fd, "w") as f:
            f.write(yaml.safe_dump(doc, sort_keys=False))
        argv = [*self.proxy_wrap, self.python, "-m", "plait.proxy", "--config", str(path)]
        argv += ["--log-level", "WARNING", *self.proxy_args]
        proc = self.procs.start(name, argv, cpu=self.proxy_cpu, env=self.env)
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
        if self._loadgen_sock is not None:
            self._loadgen_sock.close()
