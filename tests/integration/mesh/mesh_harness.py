"""Shared pieces of the mesh-level integration tests: a whole local mesh of real processes.

Each test module gets its own mesh (module-scoped ``mesh`` fixture, conftest.py): the control plane,
one proxy per demo "host" and the demo apps behind them, all on 127.0.0.1 with ports
chosen by the kernel, built with :class:`plait.cli.topology.Mesh` -- the same class
``plait up`` uses. A module may set ``MESH_HOSTS`` to change the hosts. Teardown stops
every process by PID and checks that none is left running.

Health checks and heartbeats run every 0.5 s so that health changes travel through the
mesh in about a second.

The demo config is applied *unscoped* (:func:`unscoped`: without the Services'
``spec.calls``), so that every proxy gets every service, as these tests expect: they enter
the mesh through host-frontend's outbound listener (``http://frontend/...``), send
requests to services other than what a host's app calls, and check that every proxy
knows every instance. Scoping of the demo mesh as ``plait up`` runs it is tested in
tests/e2e/test_cli_up.py and tests/unit/cli/test_demo_mesh_calls.py.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from plait.cli.supervisor import pid_alive, tail
from plait.cli.topology import App, Mesh
from plait.model.yaml_dialect import Loader

REPO = Path(__file__).resolve().parents[3]
DEMO_MESH = REPO / "examples" / "demo-mesh.yaml"
RECORDING_APP = Path(__file__).with_name("recording_app.py")

HEALTH_CHECK = {
    "http": "/healthz",
    "interval": "0.5s",
    "timeout": "1s",
    "unhealthy_threshold": 2,
    "healthy_threshold": 1,
}
HEARTBEAT_INTERVAL = "0.5s"

DEMO_HOSTS: tuple[tuple[str, tuple[App, ...]], ...] = (
    ("host-frontend", (App("frontend", "v1", next=("orders",)),)),
    ("host-orders-v1", (App("orders", "v1", next=("inventory",)),)),
    ("host-orders-v2", (App("orders", "v2", next=("inventory",)),)),
    ("host-inventory", (App("inventory", "v1"),)),
)

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

CURL_ENV = {
    k: v
    for k, v in os.environ.items()
    if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
}


# -- the mesh ----------------------------------------------------------------------------


def unscoped(config: Path) -> str:
    """``config``'s YAML without any Service's ``spec.calls``: every proxy gets everything."""
    docs = list(yaml.load_all(config.read_text(), Loader=Loader))  # plait's dialect
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "Service":
            (doc.get("spec") or {}).pop("calls", None)
    return yaml.safe_dump_all(docs, sort_keys=False)


def apply_unscoped(mesh: Mesh, config: Path = DEMO_MESH) -> dict[str, Any]:
    """Apply ``config`` (default: the demo mesh) without ``spec.calls`` (:func:`unscoped`)."""
    return mesh.apply(config, text=unscoped(config))


def start_mesh(
    state_dir: Path,
    hosts: Sequence[tuple[str, Sequence[App]]] = DEMO_HOSTS,
    config: Path = DEMO_MESH,
) -> Mesh:
    """Start control plane, apply ``config`` (unscoped), start every host; wait until a
    request works."""
    mesh = Mesh(
        state_dir,
        health_check=HEALTH_CHECK,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        start_timeout=30.0,
    )
    try:
        mesh.start_control()
        apply_unscoped(mesh, config)
        for name, apps in hosts:
            mesh.add_host(name, list(apps), wait=False)
        mesh.wait_started()
        mesh.wait_ready(timeout=30.0)
        entry = hosts[0][0]
        service = hosts[0][1][0].name
        mesh.wait_for_request(entry, f"http://{service}/warm-up", timeout=30.0)
        # Every service needs a healthy endpoint in every proxy before tests measure.
        wait_until(lambda: all_endpoints_known(mesh), 20.0, "every proxy knows every instance")
    except BaseException:
        logs = log_tails(mesh)
        stop_and_check(mesh)
        raise RuntimeError(f"the mesh did not start:\n{logs}") from None
    return mesh


def stop_and_check(mesh: Mesh) -> None:
    """Stop every process of ``mesh`` by PID; fail if one is still running."""
    pids = [p.pid for p in mesh.processes()]
    outcome = mesh.stop(timeout=5.0)
    killed = {name: how for name, how in outcome.items() if how not in ("stopped", "not running")}
    if killed:  # not a test failure, but worth seeing: SIGTERM was not enough
        print(f"Mesh.stop(): not stopped by SIGTERM within 5s: {killed}")
    left = [pid for pid in pids if pid_alive(pid)]
    assert not left, f"processes still running after Mesh.stop(): {left} ({outcome})"


def add_recording_host(mesh: Mesh, name: str, service: str) -> Path:
    """Add host ``name`` whose ``service`` app is recording_app.py; its record file.

    The proxy is started by :meth:`Mesh.add_host` as usual; the app socket the mesh bound
    goes to recording_app.py instead of a demo app, supervised (and stopped by PID) like
    every other process of the mesh. ``service`` needs a Service resource applied.
    """
    host = mesh.add_host(name, [App(service)], wait=False)
    sock = host.app_sockets.pop(service)
    record = mesh.state_dir / f"record-{name}-{service}.jsonl"
    ready = mesh.ready_dir / f"app-{name}-{service}.json"
    ready.unlink(missing_ok=True)
    argv = [mesh.python, str(RECORDING_APP), "--listen-fd", str(sock.fileno())]
    argv += ["--record", str(record), "--ready-file", str(ready)]
    try:
        proc = mesh.supervisor.start(f"app:{name}/{service}", "app", argv, pass_fds=[sock.fileno()])
    finally:
        sock.close()  # the app has its own copy
    host.app_procs[service] = proc  # so that wait_started() does not start a demo app
    mesh.wait_started([name])
    mesh.supervisor.wait_ready_file(proc, ready, mesh.start_timeout)
    return record


def recorded(record: Path) -> str:
    """Everything a recording app has received, all connections run together."""
    if not record.exists():
        return ""
    return "".join(json.loads(line)["data"] for line in record.read_text().splitlines())


def log_tails(mesh: Mesh, lines: int = 15) -> str:
    """The last lines of every process log of ``mesh``, for failure messages."""
    out = []
    for log in sorted(mesh.logs.glob("*.log")):
        if log.name.startswith("access-"):
            continue
        out.append(f"--- {log.name}\n{tail(log, lines)}")
    return "\n".join(out)


# -- waiting -----------------------------------------------------------------------------


def wait_until(
    cond: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.05,
    describe: Callable[[], str] | None = None,
) -> Any:
    """Poll ``cond`` until it returns something truthy; fail after ``timeout`` seconds.

    The failure message has ``cond``'s last value, and ``describe()`` if given.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = cond()
        except (OSError, ValueError, KeyError, http.client.HTTPException) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            more = f"\n{describe()}" if describe is not None else ""
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}{more}")
        time.sleep(interval)


# -- HTTP helpers ------------------------------------------------------------------------


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def clusters(mesh: Mesh, host: str) -> dict[str, Any]:
    return dict(get_json(mesh.hosts[host].admin_url + "/clusters")["clusters"])


def endpoints(mesh: Mesh, host: str, cluster: str) -> set[tuple[str, int]]:
    """The endpoints of ``cluster`` in ``host``'s proxy (admin ``/clusters``)."""
    cl = clusters(mesh, host).get(cluster) or {"endpoints": []}
    return {(e["address"], int(e["port"])) for e in cl["endpoints"]}


def all_endpoints_known(mesh: Mesh) -> bool:
    """Every proxy has every registered, healthy instance in its ``outbound|<svc>``."""
    registry = get_json(mesh.api_url + "/v1/registry")["instances"]
    want: dict[str, set[tuple[str, int]]] = {}
    for inst in registry:
        if inst["healthy"]:
            want.setdefault(inst["service"], set()).add((inst["address"], int(inst["port"])))
    expected = {app.name for host in mesh.hosts.values() for app in host.apps}
    if set(want) != expected:
        return False
    for name in mesh.hosts:
        for svc, eps in want.items():
            if endpoints(mesh, name, f"outbound|{svc}") != eps:
                return False
    return True


def proxy_status(mesh: Mesh) -> dict[str, dict[str, Any]]:
    return {n["node_id"]: n for n in get_json(mesh.api_url + "/v1/proxy-status")["nodes"]}


def all_synced(mesh: Mesh) -> dict[str, dict[str, Any]] | None:
    """proxy-status if every host's node is connected and SYNCED on every type, else None.

    (``sent`` may be null: after a control-plane restart, a proxy that reconnects with
    the versions the new process would send is not sent them again.)
    """
    nodes = proxy_status(mesh)
    for name in mesh.hosts:
        node = nodes.get(name)
        if node is None or not node.get("connected") or node.get("status") != "SYNCED":
            return None
        if not {CDS, EDS, LDS, RDS} <= set(node["types"]):  # (and SDS, with mTLS)
            return None
        for entry in node["types"].values():
            if entry.get("status") != "SYNCED" or not entry.get("acked") or entry.get("error"):
                return None
            if entry.get("sent") not in (None, entry["acked"]):
                return None
    return nodes


def sync_summary(mesh: Mesh) -> str:
    """proxy-status in one line per node, for failure messages."""
    try:
        nodes = proxy_status(mesh)
    except (OSError, ValueError) as exc:
        return f"proxy-status: {exc}"
    lines = []
    for node_id, node in sorted(nodes.items()):
        types = ", ".join(
            f"{t.rsplit('.', 1)[-1]}={e.get('status')} sent={e.get('sent')} acked={e.get('acked')}"
            + (f" error={e['error']!r}" if e.get("error") else "")
            for t, e in sorted(node["types"].items())
        )
        lines.append(
            f"  {node_id}: connected={node.get('connected')} {node.get('status')}: {types}"
        )
    return "\n".join(lines)


def config_dump(mesh: Mesh, host: str) -> dict[str, Any]:
    return dict(get_json(mesh.hosts[host].admin_url + "/config_dump"))


def outbound_routes(dump: Mapping[str, Any], service: str) -> list[dict[str, Any]]:
    """The routes of ``service``'s virtual host in the ``outbound`` route table of a dump."""
    table = dump["config"]["route_tables"]["outbound"]
    for vhost in table["virtual_hosts"]:
        if vhost["name"] == service:
            return list(vhost["routes"])
    raise KeyError(f"no virtual host {service!r} in the outbound route table")


def route_clusters(route: Mapping[str, Any]) -> dict[str, int]:
    return {c["cluster"]: int(c["weight"]) for c in route["clusters"]}


def chain_of(body: bytes) -> list[str]:
    return list(json.loads(body)["chain"])


# -- logs --------------------------------------------------------------------------------


def access_log_path(mesh: Mesh, host: str) -> Path:
    """The access log of ``host``'s proxy, as its bootstrap (from the Mesh state) names it."""
    bootstrap = Path(mesh.state()["hosts"][host]["bootstrap"])
    return Path(yaml.safe_load(bootstrap.read_text())["access_log"])


def access_lines(mesh: Mesh, host: str) -> list[dict[str, Any]]:
    path = access_log_path(mesh, host)
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        if line.strip():
            lines.append(json.loads(line))
    return lines


# -- clients -----------------------------------------------------------------------------


def curl(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run curl (no proxy from the environment; ``-x`` is explicit); fail on curl errors."""
    argv = ["curl", "-sS", "--max-time", str(int(timeout)), *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10, env=CURL_ENV)
    assert out.returncode == 0, f"{' '.join(argv)} failed ({out.returncode}): {out.stderr}"
    return out


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


@dataclass
class Result:
    t: float  # monotonic time the request was sent
    status: int  # 0 = no answer
    chain: tuple[str, ...] = ()
    error: str = ""
    elapsed: float = 0.0


@dataclass
class RequestLoop:
    """A thread sending ``GET url`` through a proxy at ``rate`` per second, keep-alive.

    Every request is recorded as a :class:`Result`; a request fails if it gets no answer
    or a status other than 200. A broken connection is replaced by a new one (and the
    request that hit it counts as failed).
    """

    address: tuple[str, int]
    url: str
    rate: float = 20.0
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 5.0
    results: list[Result] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="request-loop", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Result]:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)
        return self.snapshot()

    def snapshot(self) -> list[Result]:
        with self._lock:
            return list(self.results)

    def failures(self) -> list[Result]:
        return [r for r in self.snapshot() if r.status != 200]

    def _run(self) -> None:
        period = 1.0 / self.rate
        conn: http.client.HTTPConnection | None = None
        next_at = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now < next_at:
                self._stop.wait(next_at - now)
                continue
            next_at += period
            if conn is None:
                conn = http.client.HTTPConnection(*self.address, timeout=self.timeout)
            started = time.monotonic()
            try:
                conn.request("GET", self.url, headers=dict(self.headers))
                resp = conn.getresponse()
                body = resp.read()
                chain: tuple[str, ...] = ()
                error = ""
                if resp.status == 200:
                    chain = tuple(chain_of(body))
                else:
                    error = f"{resp.status} {resp.getheader('proxy-status')} {body[:300]!r}"
                result = Result(started, resp.status, chain, error)
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                result = Result(started, 0, (), f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = None
            result.elapsed = time.monotonic() - started
            with self._lock:
                self.results.append(result)
        if conn is not None:
            conn.close()


def summarize(results: Sequence[Result]) -> str:
    """How many requests got which answer: chains of 200s, status and error of others."""
    counts: collections.Counter[str] = collections.Counter()
    for r in results:
        counts[" -> ".join(r.chain) if r.status == 200 else f"{r.status} {r.error[:200]}"] += 1
    return "\n".join(f"  {n:5d}  {what}" for what, n in counts.most_common())


def describe_failures(results: Sequence[Result], origin: float) -> str:
    return "\n".join(
        f"  t={r.t - origin:+.2f}s status={r.status} {r.error}" for r in results if r.status != 200
    )
