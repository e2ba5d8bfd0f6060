"""Proxyless gRPC against `plait control`: a real grpcio xDS client, no plait proxy.

The control plane runs as a subprocess; two demo gRPC servers (greeter v1 and v2) are
registered directly through the HTTP API, the way a proxyless server without a plait
proxy joins the mesh. The client runs in its own subprocess so that
``GRPC_XDS_BOOTSTRAP`` is set before grpc loads, and resolves ``xds:///greeter``.
Every process binds port 0 and is stopped by PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

CLIENT_NODE = "grpc-client-1"
XDS_TYPES = tuple(
    f"type.googleapis.com/envoy.config.{t}"
    for t in (
        "listener.v3.Listener",
        "route.v3.RouteConfiguration",
        "cluster.v3.Cluster",
        "endpoint.v3.ClusterLoadAssignment",
    )
)

SERVICE_YAML = """\
apiVersion: plait/v1
kind: Service
metadata: {name: greeter}
spec:
  protocol: grpc
  ports: [{name: grpc, port: 50051}]
"""


def route_yaml(v1: int, v2: int) -> str:
    return f"""\
apiVersion: plait/v1
kind: Route
metadata: {{name: greeter}}
spec:
  service: greeter
  rules:
    - backends:
        - {{subset: {{version: v1}}, weight: {v1}}}
        - {{subset: {{version: v2}}, weight: {v2}}}
"""


def _wait_ready(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{proc.args} not ready (rc={proc.poll()}):\n{_tail(log)}")


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass
class Mesh:
    tmp: Path
    api: str
    xds: str
    bootstrap: Path
    servers: dict[str, int] = field(default_factory=dict)  # version -> port
    logs: list[Path] = field(default_factory=list)

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.api + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path} -> {exc.code}: {exc.read()!r}") from exc

    def apply(self, text: str) -> dict:
        return self.call("POST", "/v1/apply", {"filename": "greeter.yaml", "yaml": text})

    def register(self) -> None:
        """(Re)register both demo servers directly, as a proxyless server would."""
        for i, (version, port) in enumerate(sorted(self.servers.items()), start=1):
            self.call(
                "POST",
                "/v1/registry/heartbeat",
                {
                    "node_id": f"grpc-host-{i}",
                    "ttl": 30,
                    "instances": [
                        {
                            "service": "greeter",
                            "address": "127.0.0.1",
                            "port": port,
                            "labels": {"version": version},
                            "healthy": True,
                        }
                    ],
                },
            )

    def client(self, target: str, calls: int) -> dict:
        """Run the proxyless client in a subprocess and return its JSON tally."""
        env = dict(os.environ, GRPC_XDS_BOOTSTRAP=str(self.bootstrap))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "plait.demo.grpc_client",
                "--target",
                target,
                "--calls",
                str(calls),
            ],
            env=env,
            capture_output=True,
            timeout=90,
        )
        out = proc.stdout.decode(errors="replace").strip()
        err = proc.stderr.decode(errors="replace")
        control = _tail(self.logs[0], 30)
        assert out, f"client printed nothing (rc={proc.returncode}):\n{err}\n--\n{control}"
        result = json.loads(out.splitlines()[-1])
        assert proc.returncode == 0 and result["failed"] == 0, (
            f"client failures: {result}\n{err[-4000:]}\n-- control --\n{control}"
        )
        return result


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("proxyless")
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []

    def start(args: list[str], name: str) -> tuple[subprocess.Popen[bytes], dict]:
        ready, log = tmp / f"{name}.ready.json", tmp / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", *args, "--ready-file", str(ready)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp,
            )
        procs.append(proc)
        logs.append(log)
        return proc, _wait_ready(ready, proc, log, timeout=30)

    try:
        data_dir = str(tmp / "data")
        _, control = start(
            ["plait.control", "--data-dir", data_dir, "--xds-port", "0", "--api-port", "0"],
            "control",
        )
        servers = {}
        for version in ("v1", "v2"):
            _, info = start(
                ["plait.demo.grpc_app", "--name", "greeter", "--version", version, "--port", "0"],
                f"greeter-{version}",
            )
            servers[version] = int(info["port"])
        bootstrap = tmp / "xds-bootstrap.json"
        bootstrap.write_text(
            json.dumps(
                {
                    "xds_servers": [
                        {
                            "server_uri": control["xds"],
                            "channel_creds": [{"type": "insecure"}],
                            "server_features": ["xds_v3"],
                        }
                    ],
                    "node": {"id": CLIENT_NODE, "locality": {}},
                }
            )
        )
        m = Mesh(tmp, control["api"].rstrip("/"), control["xds"], bootstrap, servers, logs)
        m.apply(SERVICE_YAML)
        yield m
    finally:
        for proc in reversed(procs):
            _stop(proc)


def test_weighted_route_90_10(mesh: Mesh) -> None:
    mesh.apply(route_yaml(90, 10))
    mesh.register()
    result = mesh.client("xds:///greeter", 1000)
    assert result["ok"] == 1000, result
    share = {v: result["versions"].get(v, 0) / 1000 for v in ("v1", "v2")}
    assert abs(share["v1"] - 0.90) <= 0.04, result
    assert abs(share["v2"] - 0.10) <= 0.04, result
    assert set(result["ports"]) == {str(p) for p in mesh.servers.values()}, result


def test_target_with_port_resolves(mesh: Mesh) -> None:
    mesh.apply(route_yaml(90, 10))
    mesh.register()
    result = mesh.client("xds:///greeter:50051", 50)
    assert result["ok"] == 50, result
    assert set(result["versions"]) <= {"v1", "v2"}, result


def test_reapplied_route_moves_everything_to_v2(mesh: Mesh) -> None:
    mesh.apply(route_yaml(90, 10))
    mesh.register()
    before = mesh.client("xds:///greeter", 200)
    assert before["versions"].get("v1", 0) > 0, before

    mesh.apply(route_yaml(0, 100))
    after = mesh.client("xds:///greeter", 200)
    assert after["versions"] == {"v2": 200}, after


def test_proxy_status_shows_grpc_client(mesh: Mesh) -> None:
    mesh.apply(route_yaml(90, 10))
    mesh.register()
    mesh.client("xds:///greeter", 5)
    status = mesh.call("GET", "/v1/proxy-status")
    nodes = {n["node_id"]: n for n in status["nodes"]}
    assert CLIENT_NODE in nodes, status
    node = nodes[CLIENT_NODE]
    assert node["status"] == "SYNCED", node
    # gRPC's own xDS client ACKed every type it was sent: nothing was refused.
    for type_url in XDS_TYPES:
        state = node["types"].get(type_url)
        assert state is not None, (type_url, node)
        assert state["acked"] == state["sent"] and not state["error"], (type_url, node)
