"""A local mesh made of real processes: the control plane, and "hosts" of a proxy and apps.

``plait up`` and the integration tests build meshes with the same class::

    mesh = Mesh(tmp_path)
    try:
        mesh.start_control()
        mesh.apply("examples/demo-mesh.yaml")
        mesh.add_host("host-orders", [App("orders", "v1", next=("inventory",))], wait=False)
        mesh.add_host("host-inventory", [App("inventory")], wait=False)
        mesh.wait_started()
        mesh.wait_ready()
        # orders calls inventory (its Service's spec.calls), so its proxy routes there:
        status, headers, body = mesh.request("host-orders", "http://inventory/hello")
        # and a client outside the mesh enters orders through its inbound listener:
        status, headers, body = mesh.request("host-orders", "http://orders/hello", inbound=True)
    finally:
        mesh.stop()

Ports are never guessed. The mesh binds each app's listening socket itself (127.0.0.1,
port 0) and hands the fd to the app, so an app's port is known before its proxy starts;
a proxy's bootstrap asks for port 0 everywhere and the proxy reports what it bound in its
ready file; apps start after their proxy, with ``--proxy`` set to its outbound listener.
Everything a mesh writes -- bootstraps, ready files, logs, data -- is under ``state_dir``.
"""

from __future__ import annotations

import http.client
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from plait.cli.api import CliError, error_text, request_json
from plait.cli.hosts import App, Host
from plait.cli.supervisor import Process, StartError, Supervisor, signal_pid

__all__ = ["App", "Host", "Mesh"]

Check = Callable[[int, bytes], bool]


class Mesh:
    """Starts and stops a local mesh; see the module docstring."""

    def __init__(
        self,
        state_dir: Path | str,
        *,
        python: str = sys.executable,
        address: str = "127.0.0.1",
        health_check: Mapping[str, Any] | None = None,
        heartbeat_interval: str = "1s",
        lease_ttl: str = "10s",
        start_timeout: float = 30.0,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.python = python
        self.address = address
        self.health_check = dict(
            health_check
            or {
                "http": "/healthz",
                "interval": "1s",
                "timeout": "1s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
            }
        )
        self.heartbeat_interval = heartbeat_interval
        self.lease_ttl = lease_ttl
        self.start_timeout = start_timeout
        self.logs = self.state_dir / "logs"
        self.ready_dir = self.state_dir / "ready"
        self.supervisor = Supervisor(self.logs)
        self.hosts: dict[str, Host] = {}
        self.control: Process | None = None
        self.control_info: dict[str, Any] | None = None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ready_dir.mkdir(exist_ok=True)

    # -- control plane -------------------------------------------------------------

    @property
    def api_url(self) -> str:
        if self.control_info is None:
            raise RuntimeError("the control plane has not started: call start_control()")
        return str(self.control_info["api"]).rstrip("/")

    @property
    def xds_address(self) -> str:
        if self.control_info is None:
            raise RuntimeError("the control plane has not started: call start_control()")
        return str(self.control_info["xds"])

    def start_control(self, extra_args: Sequence[str] = ()) -> str:
        """Start ``plait control`` on ports 0 and wait for its ready file; the API URL."""
        return self._launch_control(0, 0, extra_args)

    def _launch_control(self, xds_port: int, api_port: int, extra_args: Sequence[str]) -> str:
        ready = self._fresh_ready_file("control")
        argv = [self.python, "-m", "plait.control", "--data-dir", str(self.state_dir / "control")]
        argv += ["--host", self.address, "--xds-port", str(xds_port), "--api-port", str(api_port)]
        argv += ["--ready-file", str(ready), *extra_args]
        self.control = self.supervisor.start("control", "control", argv)
        self.control_info = self.supervisor.wait_ready_file(self.control, ready, self.start_timeout)
        return self.api_url

    def apply(self, path: Path | str, text: str | None = None) -> dict[str, Any]:
        """POST a YAML file to the control plane; its answer. CliError if refused."""
        path = Path(path)
        body = {"filename": str(path), "yaml": path.read_text() if text is None else text}
        status, obj = request_json(self.api_url, "POST", "/v1/apply", body, timeout=10.0)
        if status != 200:
            details = "; ".join(str(e) for e in (obj or {}).get("errors") or [])
            raise CliError(f"applying {path} failed: {error_text(obj)} {details}".strip())
        return dict(obj)

    def kill_control(self, signum: int | None = None, timeout: float = 10.0) -> int:
        """Signal the control plane by PID (SIGKILL by default), wait until it is gone.

        The process is forgotten (so :meth:`wait_ready` and friends do not report it as
        having exited) but ``control_info`` is kept: :meth:`restart_control` starts it
        again on the same ports. Returns the PID that was signalled.
        """
        proc = self.control
        if proc is None:
            raise RuntimeError("the control plane is not running: call start_control()")
        signal_pid(proc, signal.SIGKILL if signum is None else signum)
        deadline = time.monotonic() + timeout
        while proc.alive():
            if time.monotonic() >= deadline:
                raise proc.failure(f"still running {timeout:g}s after signal {signum}")
            time.sleep(0.02)
        if proc.popen is not None:
            proc.popen.wait()  # reap it
        self.supervisor.processes = [p for p in self.supervisor.processes if p is not proc]
        self.control = None
        return proc.pid

    def restart_control(self, extra_args: Sequence[str] = ()) -> str:
        """Start ``plait control`` again with the same data dir on the ports it had before.

        For after :meth:`kill_control` (or a crash): proxies keep their bootstrap's
        addresses, so the new process must bind the same xDS and API ports. A dead
        previous process is forgotten first. Returns the API URL.
        """
        if self.control_info is None:
            raise RuntimeError("the control plane never started: call start_control()")
        if self.control is not None:
            if self.control.alive():
                raise RuntimeError(
                    f"the control plane (pid {self.control.pid}) is still running: "
                    "call kill_control() first"
                )
            self.supervisor.processes = [
                p for p in self.supervisor.processes if p is not self.control
            ]
            self.control = None
        xds_port = int(self.xds_address.rpartition(":")[2])
        return self._launch_control(xds_port, urlsplit(self.api_url).port or 0, extra_args)

    # -- hosts -----------------------------------------------------------------------

    def add_host(
        self,
        name: str,
        services: Sequence[App],
        *,
        wait: bool = True,
        bootstrap_overrides: Mapping[str, Any] | None = None,
    ) -> Host:
        """Start a proxy for ``services``; their apps start once the proxy is up.

        With ``wait=False`` this returns at once; :meth:`wait_started` finishes the job
        for every host (hosts then start in parallel).
        """
        if name in self.hosts:
            raise ValueError(f"host {name!r} already exists")
        sockets = {}
        for app in services:
            sock = socket.create_server((self.address, 0), backlog=512)
            sockets[app.name] = sock
        ports = {svc: sock.getsockname()[1] for svc, sock in sockets.items()}
        ready = self._fresh_ready_file(f"proxy-{name}")
        bootstrap = self.state_dir / f"bootstrap-{name}.yaml"
        doc = self.bootstrap_for(name, services, ports, ready)
        doc.update(bootstrap_overrides or {})
        bootstrap.write_text(yaml.safe_dump(doc, sort_keys=False))
        argv = [self.python, "-m", "plait.proxy", "--config", str(bootstrap)]
        proxy = self.supervisor.start(f"proxy:{name}", "proxy", argv)
        host = Host(name, tuple(services), bootstrap, ready, ports, proxy, sockets)
        self.hosts[name] = host
        if wait:
            self.wait_started([name])
        return host

    def restart_proxy(self, name: str, timeout: float = 10.0) -> Host:
        """Stop host ``name``'s proxy by PID (SIGTERM) and start it again, apps untouched.

        Listeners the bootstrap left on port 0 are pinned first to the ports the proxy
        actually bound (from its ready file), so the new process binds the same ports:
        the apps' ``--proxy`` and the endpoints peers know stay right.
        """
        host = self.hosts[name]
        info = host._info()
        doc = yaml.safe_load(host.bootstrap.read_text())

        def pin(listener: dict[str, Any], bound: str) -> None:
            if int(listener.get("port", 0)) == 0:
                listener["port"] = int(bound.rpartition(":")[2])

        pin(doc.setdefault("admin", {"address": self.address}), info["admin"].rstrip("/"))
        pin(doc.setdefault("outbound", {"address": self.address}), info["outbound"])
        for svc in doc.get("services") or []:
            pin(svc.setdefault("inbound", {"address": self.address}), info["inbound"][svc["name"]])
            own = (info.get("outbound_services") or {}).get(svc["name"])
            if own:
                pin(svc.setdefault("outbound", {"address": self.address}), own)
        host.bootstrap.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.supervisor.stop([host.proxy.name], timeout=timeout)
        host.ready_file.unlink(missing_ok=True)
        host.ready = None
        argv = [self.python, "-m", "plait.proxy", "--config", str(host.bootstrap)]
        host.proxy = self.supervisor.start(f"proxy:{name}", "proxy", argv)
        host.ready = self.supervisor.wait_ready_file(
            host.proxy, host.ready_file, self.start_timeout
        )
        return host

    def restart_host(self, name: str, timeout: float = 10.0) -> Host:
        """Restart host ``name``: its proxy (SIGTERM: it deregisters and drains), then its
        apps, by PID; then start them again with the same bootstrap, except that the apps
        get new sockets and the listeners the bootstrap left on port 0 new ports (the
        registry learns them by heartbeat). Waits until the proxy and apps are ready."""
        old = self.hosts[name]
        self.supervisor.stop([old.proxy.name], timeout=timeout)  # drains first
        self.supervisor.stop([p.name for p in old.app_procs.values()], timeout=timeout)
        for sock in old.app_sockets.values():
            sock.close()
        sockets = {
            app.name: socket.create_server((self.address, 0), backlog=512) for app in old.apps
        }
        ports = {svc: sock.getsockname()[1] for svc, sock in sockets.items()}
        doc = yaml.safe_load(old.bootstrap.read_text())
        for svc in doc.get("services") or []:
            svc["app"]["port"] = ports[svc["name"]]
        old.bootstrap.write_text(yaml.safe_dump(doc, sort_keys=False))
        old.ready_file.unlink(missing_ok=True)
        argv = [self.python, "-m", "plait.proxy", "--config", str(old.bootstrap)]
        proxy = self.supervisor.start(f"proxy:{name}", "proxy", argv)
        host = Host(name, old.apps, old.bootstrap, old.ready_file, ports, proxy, sockets)
        self.hosts[name] = host
        self.wait_started([name])
        return host

    def bootstrap_for(
        self, node: str, apps: Sequence[App], ports: Mapping[str, int], ready: Path
    ) -> dict[str, Any]:
        """The proxy bootstrap (docs/internals.md) for ``node``, listeners on port 0."""
        listen = {"address": self.address, "port": 0}
        return {
            "node_id": node,
            "control_plane": {"xds": self.xds_address, "api": self.api_url},
            "admin": dict(listen),
            "outbound": dict(listen),
            "services": [
                {
                    "name": app.name,
                    "labels": app.instance_labels(),
                    "app": {"address": self.address, "port": ports[app.name]},
                    "inbound": dict(listen),
                    "health_check": dict(self.health_check),
                }
                for app in apps
            ],
            "heartbeat_interval": self.heartbeat_interval,
            "lease_ttl": self.lease_ttl,
            "data_dir": str(self.state_dir / f"proxy-{node}"),
            "access_log": str(self.logs / f"access-{node}.log"),
            "ready_file": str(ready),
        }

    def wait_started(self, names: Sequence[str] | None = None) -> None:
        """Wait for the proxies' ready files, then start their apps and wait for those."""
        hosts = [self.hosts[n] for n in names] if names is not None else list(self.hosts.values())
        for host in hosts:
            if host.ready is None:
                host.ready = self.supervisor.wait_ready_file(
                    host.proxy, host.ready_file, self.start_timeout
                )
        pending: list[tuple[Process, Path]] = []
        for host in hosts:
            for app in host.apps:
                if app.name not in host.app_procs:
                    pending.append(self._start_app(host, app))
        for proc, ready in pending:
            self.supervisor.wait_ready_file(proc, ready, self.start_timeout)

    def _start_app(self, host: Host, app: App) -> tuple[Process, Path]:
        sock = host.app_sockets.pop(app.name)
        ready = self._fresh_ready_file(f"app-{host.name}-{app.name}")
        argv = [self.python, "-m", "plait.demo", "--name", app.name, "--version", app.version]
        for nxt in app.next:
            argv += ["--next", nxt]
        argv += ["--proxy", host.proxy_url, "--listen-fd", str(sock.fileno())]
        argv += ["--ready-file", str(ready), "--fail-health-file", str(self.fail_flag(host, app))]
        try:
            proc = self.supervisor.start(
                f"app:{host.name}/{app.name}", "app", argv, pass_fds=[sock.fileno()]
            )
        finally:
            sock.close()  # the app has its own copy of the listening socket
        host.app_procs[app.name] = proc
        return proc, ready

    def fail_flag(self, host: Host, app: App) -> Path:
        return self.state_dir / f"fail-health-{host.name}-{app.name}"

    def set_healthy(self, host: str, service: str, healthy: bool) -> None:
        """Make an app's /healthz answer 200 (healthy) or 503."""
        h = self.hosts[host]
        flag = self.fail_flag(h, next(a for a in h.apps if a.name == service))
        if healthy:
            flag.unlink(missing_ok=True)
        else:
            flag.touch()

    # -- readiness and requests -------------------------------------------------------

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every proxy's admin ``/ready`` answers 200."""
        deadline = time.monotonic() + timeout
        for host in self.hosts.values():
            while True:
                self._check_alive()
                status = _get_status(host.admin_url + "/ready")
                if status == 200:
                    break
                if time.monotonic() >= deadline:
                    raise host.proxy.failure(
                        f"/ready was {status or 'unreachable'} for {timeout:g}s"
                    )
                time.sleep(0.1)

    def wait_for_request(
        self,
        via: str,
        url: str,
        check: Check | None = None,
        timeout: float = 60.0,
        *,
        inbound: bool = False,
    ) -> tuple[int, bytes]:
        """Repeat a request through host ``via``'s proxy until ``check`` (default: 200) holds.

        ``inbound`` as for :meth:`request`."""
        check = check or (lambda status, _body: status == 200)
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                status, _, body = self.request(via, url, timeout=5.0, inbound=inbound)
            except OSError as exc:
                status, body = 0, str(exc).encode()
            if check(status, body):
                return status, body
            if time.monotonic() >= deadline:
                raise StartError(
                    f"GET {url} through {via} did not succeed within {timeout:g}s: "
                    f"last answer {status} {body[:500].decode('utf-8', 'replace')}"
                )
            time.sleep(0.2)

    def request(
        self,
        via: str,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        *,
        inbound: bool = False,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send ``url`` (absolute, e.g. ``http://orders/x``) through host ``via``'s outbound.

        With ``inbound``, send it instead to ``via``'s inbound listener of the service the
        URL names, as a client outside the mesh would (``GET /x``): that works whatever
        the service's ``spec.calls``, which decide what its outbound proxy routes to.
        """
        if inbound:
            parts = urlsplit(url)
            host, port = self.hosts[via].inbound(parts.hostname or "")
            target = parts.path or "/"
            target += f"?{parts.query}" if parts.query else ""
        else:
            (host, port), target = self.hosts[via].outbound, url
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request(method, target, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def _check_alive(self) -> None:
        for proc in self.supervisor.exited():
            raise proc.failure(f"exited with code {proc.returncode}")

    # -- lifecycle and state ----------------------------------------------------------

    def processes(self) -> list[Process]:
        return list(self.supervisor.processes)

    def stop(self, timeout: float = 5.0) -> dict[str, str]:
        """Stop every process this mesh started (SIGTERM, then SIGKILL after ``timeout``)."""
        for host in self.hosts.values():
            for sock in host.app_sockets.values():
                sock.close()
            host.app_sockets.clear()
        return self.supervisor.stop(timeout=timeout)

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def state(self) -> dict[str, Any]:
        """What ``plait status`` and ``plait down`` need: addresses, PIDs, logs."""
        hosts = {}
        for host in self.hosts.values():
            hosts[host.name] = {
                **(host.ready or {}),
                "bootstrap": str(host.bootstrap),
                "apps": {
                    app.name: {
                        "version": app.version,
                        "port": host.app_ports[app.name],
                        "pid": host.app_procs[app.name].pid if app.name in host.app_procs else None,
                    }
                    for app in host.apps
                },
            }
        return {
            "state_dir": str(self.state_dir),
            "api": self.api_url if self.control_info else None,
            "xds": self.xds_address if self.control_info else None,
            "processes": [p.to_json() for p in self.supervisor.processes],
            "hosts": hosts,
        }

    def _fresh_ready_file(self, name: str) -> Path:
        path = self.ready_dir / f"{name}.json"
        path.unlink(missing_ok=True)
        return path


def _get_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of ``GET url``, or None if nothing answers."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()
