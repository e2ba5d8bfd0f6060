"""A small mTLS mesh of real processes: a control plane with its CA, proxies, test apps.

Everything binds 127.0.0.1 with kernel-chosen ports. Apps are tiny threaded HTTP servers
in the test process that answer ``hello from <name>``; the control plane and the proxies
are real ``plait`` processes; clients are curl and openssl. :class:`MtlsMesh` starts the
control plane (``--cert-ttl`` configurable), creates join tokens through the API, writes
one bootstrap per proxy and stops every process by pid at the end.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PY = sys.executable

# Services frontend and orders, both at mtls: strict (most tests here); strict_pair()
# gives it with another mode for orders.
STRICT_PAIR = """
apiVersion: plait/v1
kind: Service
metadata: {name: frontend}
spec: {mtls: strict}
---
apiVersion: plait/v1
kind: Service
metadata: {name: orders}
spec: {mtls: strict}
"""


def strict_pair(orders_mode: str = "strict") -> str:
    """:data:`STRICT_PAIR` with ``orders`` at ``orders_mode``."""
    orders = "metadata: {name: orders}\nspec: {mtls: strict}"
    return STRICT_PAIR.replace(orders, orders.replace("strict", orders_mode))


CURL_ENV = {
    k: v
    for k, v in os.environ.items()
    if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"hello from {self.server.app_name}\n".encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def start_app(name: str) -> http.server.ThreadingHTTPServer:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.app_name = name  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def wait_file(
    path: Path, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before writing {path}")
        time.sleep(0.05)
    raise TimeoutError(f"{path} did not appear")


def api_call(api: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(api + path, data=data, method=method)
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@dataclass
class Proxy:
    name: str
    proc: subprocess.Popen[bytes]
    ready: dict[str, Any]
    access_log: Path

    def inbound(self, service: str) -> tuple[str, int]:
        host, port = self.ready["inbound"][service].rsplit(":", 1)
        return host, int(port)

    def outbound(self, service: str | None = None) -> str:
        if service is None:
            return self.ready["outbound"]
        return self.ready["outbound_services"][service]

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(self.ready["admin"] + path, timeout=5) as resp:
            return resp.read().decode()

    def log_lines(self) -> list[dict[str, Any]]:
        if not self.access_log.exists():
            return []
        return [json.loads(x) for x in self.access_log.read_text().splitlines() if x.strip()]


@dataclass
class MtlsMesh:
    root: Path
    cert_ttl: str = "1h"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    apps: list[http.server.ThreadingHTTPServer] = field(default_factory=list)
    control: dict[str, Any] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return str(self.control["api"])

    def start_control(self) -> None:
        ready = self.root / "control.ready"
        log = open(self.root / "control.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [PY, "-m", "plait.cli.main", "control", "--data-dir", str(self.root / "cp"),
             "--xds-port", "0", "--api-port", "0", "--ready-file", str(ready),
             "--cert-ttl", self.cert_ttl],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs.append(proc)
        self.control = wait_file(ready, proc=proc)

    def token(self, service: str) -> str:
        status, answer = api_call(self.api, "POST", "/v1/tokens", {"service": service})
        assert status == 200, answer
        return str(answer["token"])

    def apply(self, text: str) -> None:
        status, answer = api_call(self.api, "POST", "/v1/apply", {"yaml": text})
        assert status == 200, answer

    def app(self, name: str) -> int:
        srv = start_app(name)
        self.apps.append(srv)
        return int(srv.server_address[1])

    def start_proxy(
        self,
        node: str,
        services: Sequence[str],
        entry: Sequence[str] = ("plait.cli.main", "proxy"),
    ) -> Proxy:
        """A proxy for ``services`` (each with a join token), started as ``python -m
        <entry...>`` (``("plait.proxy",)``: the proxy alone, without the CLI)."""
        host_dir = self.root / node
        host_dir.mkdir(parents=True, exist_ok=True)
        xds = self.control["xds"]
        boot = {
            "node_id": node,
            "control_plane": {"xds": xds, "api": self.api},
            "services": [
                {"name": s, "app": {"port": self.app(s)}, "token": self.token(s)} for s in services
            ],
            "heartbeat_interval": "0.5s",
            "lease_ttl": "5s",
            "data_dir": str(host_dir / "data"),
            "access_log": str(host_dir / "access.log"),
        }
        (host_dir / "bootstrap.yaml").write_text(yaml.safe_dump(boot))
        ready = host_dir / "ready.json"
        log = open(host_dir / "proxy.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [PY, "-m", *entry, "--config", str(host_dir / "bootstrap.yaml"),
             "--ready-file", str(ready)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs.append(proc)
        return Proxy(node, proc, wait_file(ready, proc=proc), host_dir / "access.log")

    def start_strict_pair(self) -> tuple[Proxy, Proxy]:
        """A control plane with :data:`STRICT_PAIR` applied and the proxies of frontend and
        orders (``python -m plait.proxy``), once frontend's reaches orders over mTLS."""
        self.start_control()
        self.apply(STRICT_PAIR)
        front = self.start_proxy("host-front", ["frontend"], entry=("plait.proxy",))
        orders = self.start_proxy("host-orders", ["orders"], entry=("plait.proxy",))
        wait_until(lambda: curl(front.outbound("frontend"), "http://orders/")[0] == 200, 60)
        return front, orders

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for srv in self.apps:
            srv.shutdown()
            srv.server_close()


def curl(proxy_addr: str, url: str, *extra: str, timeout: float = 5.0) -> tuple[int, str, str]:
    """``(status, headers, body)`` of a GET through an HTTP proxy (status 0: failed)."""
    out = subprocess.run(
        ["curl", "-s", "-S", "--max-time", str(timeout), "-x", f"http://{proxy_addr}", "-D", "-",
         url, *extra],
        capture_output=True, env=CURL_ENV, timeout=timeout + 5,
    )  # fmt: skip
    text = out.stdout.decode("latin-1")
    head, _, body = text.partition("\r\n\r\n")
    if not head.startswith("HTTP/"):
        return 0, out.stderr.decode(), ""
    return int(head.split()[1]), head, body


def wait_until(check: Any, timeout: float = 20.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last: {last!r}")
