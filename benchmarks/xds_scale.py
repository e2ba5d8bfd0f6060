"""Control plane at scale: many simulated proxies on real ADS streams to one `plait control`.

    .venv/bin/python benchmarks/xds_scale.py \
        --proxies 1000 --services 500 --endpoints 10000 --changes 10
    .venv/bin/python benchmarks/xds_scale.py --quick        # 50 proxies, 50 services, 500 endpoints
    .venv/bin/python benchmarks/xds_scale.py ... --profile  # + py-spy on the control plane

What it does, in order (everything on 127.0.0.1, every process stopped by its PID):

1. starts ``python -m plait.control --data-dir D --xds-port 0 --api-port 0 --ready-file F``;
2. applies ``--services`` http Services and ``--routes`` Routes with a weighted v1/v2 split
   (``POST /v1/apply``);
3. registers ``--endpoints`` instances by heartbeats from ``--reg-nodes`` node ids
   (``POST /v1/registry/heartbeat``, ttl ``--ttl``; a keep-alive thread re-heartbeats every
   ttl/3, which a run shorter than that never needs);
4. starts ``--client-procs`` processes of ``xds_scale_client.py`` that open ``--proxies`` ADS
   streams between them (one grpc.aio channel, i.e. one TCP connection, per simulated
   proxy; node metadata per docs/xds.md with ``plait_proxy: true`` and one inbound
   service), and waits until every stream has ACKed CDS, EDS, LDS and RDS;
5. makes ``--changes`` changes, alternating *endpoint added* (a heartbeat adding one
   instance) and *route weight changed* (an apply of one Route with new weights); for
   each, the time from just before the API request until every stream has received and
   ACKed a response of the affected type (EDS, resp. RDS) with a new version; the first
   stream's response is decoded to check that it carries the change;
6. samples the control plane's CPU (utime+stime, /proc/PID/stat) and memory (VmRSS,
   VmHWM) throughout; with ``--profile``, py-spy records the control plane during the
   changes and the hot spots are summarised;
7. writes ``benchmarks/out/xds-scale-<stamp>/results.json`` and the section
   ``## Control plane at scale`` of ``benchmarks/RESULTS.md`` (``--quick``: of
   ``benchmarks/out/xds_scale.quick.md``), replacing only that section (a ``### Findings``
   subsection already in it is kept as written).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
SECTION = "## Control plane at scale"
FINDINGS = "### Findings"

ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
TARGET_S = 2.0
TARGET_MIB = 1024


# -- /proc ----------------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def cpu_s(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds (threads included)."""
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    rest = text[text.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def mem_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB."""
    out = {}
    for line in (_read(f"/proc/{pid}/status") or "").splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class Sampler(threading.Thread):
    """Samples CPU seconds and memory of some PIDs every ``interval`` seconds."""

    def __init__(self, pids: dict[str, int], interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pids = dict(pids)
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def add(self, name: str, pid: int) -> None:
        with self._lock:
            self.pids[name] = pid

    def run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> dict[str, Any]:
        with self._lock:
            pids = dict(self.pids)
        row: dict[str, Any] = {"t": time.monotonic()}
        for name, pid in pids.items():
            row[name] = {"cpu": cpu_s(pid), **mem_kib(pid)}
        self.samples.append(row)
        return row

    def stop(self) -> None:
        self._stop.set()


# -- HTTP API -------------------------------------------------------------------------------


def api_call(base: str, method: str, path: str, body: Any = None, timeout: float = 60.0) -> Any:
    hostport = base.removeprefix("http://")
    host, _, port = hostport.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: {resp.status} {payload[:500]!r}")
        return json.loads(payload)
    finally:
        conn.close()


# -- the mesh -------------------------------------------------------------------------------


def svc(i: int) -> str:
    return f"svc-{i:04d}"


def calls_of(i: int, services: int, calls: int | None) -> list[int]:
    """The services service ``i`` declares in ``spec.calls`` (``--calls K``): the next K
    services round the ring, never itself; None: no ``calls`` (it may call every service)."""
    if calls is None:
        return []
    return [(i + 1 + j) % services for j in range(min(calls, services - 1))]


def callers_of(s: int, services: int, calls: int | None) -> list[int] | None:
    """The services whose proxies a change to service ``s`` must reach: the services that
    list ``s`` in ``calls``; None (every proxy) when services declare no ``calls``."""
    if calls is None:
        return None
    return sorted(i for i in range(services) if s in calls_of(i, services, calls))


def services_yaml(n: int, calls: int | None = None) -> str:
    docs = []
    for i in range(n):
        doc = (
            f"apiVersion: plait/v1\nkind: Service\nmetadata:\n  name: {svc(i)}\n"
            "spec:\n  protocol: http\n  ports:\n    - name: http\n      port: 80\n"
        )
        if calls is not None:
            doc += f"  calls: [{', '.join(svc(j) for j in calls_of(i, n, calls))}]\n"
        docs.append(doc)
    return "---\n".join(docs)


def route_yaml(index: int, v1_weight: int) -> str:
    return (
        f"apiVersion: plait/v1\nkind: Route\nmetadata:\n  name: split-{index:04d}\n"
        f"spec:\n  service: {svc(index)}\n  rules:\n    - backends:\n"
        f"        - subset: {{version: v1}}\n          weight: {v1_weight}\n"
        f"        - subset: {{version: v2}}\n          weight: {100 - v1_weight}\n"
        "      timeout: 5s\n"
    )


def instance(i: int, services: int) -> dict[str, Any]:
    """Instance ``i``: service ``i % services``; every 10th instance of a service is v2."""
    return {
        "service": svc(i % services),
        "address": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
        "port": 8080,
        "labels": {"version": "v2" if (i // services) % 10 == 0 else "v1"},
        "healthy": True,
    }


def registration(endpoints: int, services: int, nodes: int) -> dict[str, list[dict[str, Any]]]:
    by_node: dict[str, list[dict[str, Any]]] = {}
    for i in range(endpoints):
        by_node.setdefault(f"reg-{i % nodes:04d}", []).append(instance(i, services))
    return by_node


# -- client processes -----------------------------------------------------------------------


@dataclass
class Client:
    popen: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)

    def start_reader(self) -> None:
        def pump() -> None:
            assert self.popen.stdout is not None
            for line in self.popen.stdout:
                self.lines.put(line)

        threading.Thread(target=pump, daemon=True).start()

    def send(self, obj: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(obj) + "\n")
        self.popen.stdin.flush()

    def recv(self, timeout: float) -> dict[str, Any]:
        try:
            return json.loads(self.lines.get(timeout=timeout))
        except queue.Empty:
            raise TimeoutError(
                f"client pid {self.popen.pid} did not answer in {timeout}s"
            ) from None


def ask_all(clients: list[Client], obj: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    for c in clients:
        c.send(obj)
    rows = [c.recv(timeout) for c in clients]
    for c, row in zip(clients, rows, strict=True):
        if "error" in row:
            raise RuntimeError(f"client pid {c.popen.pid}: {row['error']}")
    return rows


def errors_of(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Why streams last failed, merged over the client processes."""
    out: Counter[str] = Counter()
    for r in rows:
        out.update(r.get("errors") or {})
    return dict(out)


def stop_pid(popen: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, by PID."""
    if popen.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(popen.pid, signal.SIGTERM)
    try:
        popen.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(popen.pid, signal.SIGKILL)
        popen.wait(5)


# -- statistics -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def collapsed_hotspots(path: Path, top: int = 15) -> dict[str, list[tuple[str, float]]]:
    """py-spy ``--format raw`` (collapsed stacks) -> top functions by self and total share."""
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        samples += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        if frames:
            self_c[frames[-1]] += count
        for f in set(frames):
            total_c[f] += count
    if not samples:
        return {"self": [], "total": [], "samples": []}

    def share(c: Counter[str], keep: Any = lambda f: True) -> list[tuple[str, float]]:
        return [(f, n / samples) for f, n in c.most_common() if keep(f)][:top]

    return {
        "self": share(self_c),
        "total": share(total_c, lambda f: "plait/" in f or "grpc" in f),
        "samples": [("samples", float(samples))],
    }


# -- the run --------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = "?"
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) // 1024
    try:
        import grpc

        grpc_version = grpc.__version__
    except ImportError:  # pragma: no cover
        grpc_version = "?"
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_mib": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc_version,
        "loadavg": (_read("/proc/loadavg") or "").split()[:3],
    }


def code_info() -> dict[str, Any]:
    """The commit under test, the uncommitted changes to src/ and a digest of the control
    plane's sources (others edit this tree concurrently: say exactly what was measured)."""
    import hashlib

    def git(*argv: str) -> str:
        try:
            out = subprocess.run(
                ["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=10
            )
            return out.stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    h = hashlib.sha256()
    for sub in ("src/plait/control", "src/plait/xds"):
        for path in sorted((REPO / sub).glob("*.py")):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "dirty_src": [line[3:] for line in git("status", "--porcelain", "--", "src").splitlines()],
        "control_xds_sha256": h.hexdigest()[:12],
    }


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        self.dir = HERE / "out" / f"xds-scale-{stamp}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + args.max_seconds
        self.procs: list[subprocess.Popen[Any]] = []
        self.clients: list[Client] = []
        self.cp: subprocess.Popen[Any] | None = None
        self.api = ""
        self.xds = ""
        self.result: dict[str, Any] = {
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": shlex.join([".venv/bin/python", "benchmarks/xds_scale.py", *sys.argv[1:]]),
            "params": vars(args),
            "machine": machine_info(),
            "code": code_info(),
        }
        self.sampler = Sampler({})
        self._stop_keepalive = threading.Event()

    def log(self, msg: str) -> None:
        left = self.deadline - time.monotonic()
        print(f"[xds_scale {time.strftime('%H:%M:%S')} {left:4.0f}s left] {msg}", flush=True)

    def left(self, cap: float) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the run exceeded --max-seconds {self.args.max_seconds}")
        return min(cap, left)

    # -- processes --------------------------------------------------------------------------

    def start_control(self) -> None:
        data = self.dir / "control-data"
        ready = self.dir / "control.ready"
        log = open(self.dir / "control.log", "wb")  # noqa: SIM115 - lives as long as the process
        argv = [
            PY,
            "-m",
            "plait.control",
            "--data-dir",
            str(data),
            "--xds-port",
            "0",
            "--api-port",
            "0",
            "--ready-file",
            str(ready),
            "--log-level",
            self.args.cp_log_level,
        ]
        if self.args.cp_cpu is not None:
            argv = ["taskset", "-c", str(self.args.cp_cpu), *argv]
        self.cp = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, stdin=subprocess.DEVNULL
        )
        self.procs.append(self.cp)
        t_end = time.monotonic() + 30
        while not ready.exists():
            if self.cp.poll() is not None or time.monotonic() > t_end:
                raise RuntimeError(f"control plane did not start; see {self.dir / 'control.log'}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        self.api, self.xds = info["api"], info["xds"]
        self.sampler.add("control", self.cp.pid)
        self.sampler.start()
        self.log(f"control plane pid {self.cp.pid}: xDS {self.xds}, API {self.api}")

    def start_clients(self) -> None:
        n, k = self.args.proxies, max(1, min(self.args.client_procs, self.args.proxies))
        first = 0
        for j in range(k):
            count = n // k + (1 if j < n % k else 0)
            argv = [
                PY,
                str(HERE / "xds_scale_client.py"),
                "--target",
                self.xds,
                "--first",
                str(first),
                "--count",
                str(count),
                "--services",
                str(self.args.services),
                "--ramp",
                str(self.args.ramp),
            ]
            if self.args.calls is not None:
                argv.append("--keep-all")
            if self.args.partial:
                argv.append("--partial")
            if self.args.client_cpu is not None:
                argv = ["taskset", "-c", str(self.args.client_cpu), *argv]
            err = open(self.dir / f"client-{j}.log", "wb")  # noqa: SIM115
            popen = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO
            )
            self.procs.append(popen)
            client = Client(popen)
            client.start_reader()
            self.clients.append(client)
            self.sampler.add(f"client{j}", popen.pid)
            first += count
        for c in self.clients:
            hello = c.recv(self.left(60))
            assert hello.get("ready"), hello

    def stop_all(self) -> None:
        self._stop_keepalive.set()
        for c in self.clients:
            with contextlib.suppress(Exception):
                c.send({"cmd": "stop"})
        for c in self.clients:
            with contextlib.suppress(Exception):
                c.popen.wait(10)
        for p in reversed(self.procs):
            stop_pid(p)
        self.sampler.stop()

    # -- phases -----------------------------------------------------------------------------

    def cp_now(self) -> dict[str, Any]:
        assert self.cp is not None
        return {"t": time.monotonic(), "cpu": cpu_s(self.cp.pid), **mem_kib(self.cp.pid)}

    def setup_mesh(self) -> None:
        a = self.args
        before = self.cp_now()
        t = time.monotonic()
        api_call(
            self.api,
            "POST",
            "/v1/apply",
            {"filename": "services.yaml", "yaml": services_yaml(a.services, a.calls)},
        )
        self.route_weights = {}
        if a.routes:
            docs = []
            for r in range(a.routes):
                self.route_weights[r] = 90
                docs.append(route_yaml(r, 90))
            api_call(
                self.api,
                "POST",
                "/v1/apply",
                {"filename": "routes.yaml", "yaml": "---\n".join(docs)},
            )
        t_apply = time.monotonic() - t
        self.reg = registration(a.endpoints, a.services, a.reg_nodes)
        t = time.monotonic()
        for node_id, instances in self.reg.items():
            api_call(
                self.api,
                "POST",
                "/v1/registry/heartbeat",
                {"node_id": node_id, "ttl": a.ttl, "instances": instances},
            )
            self.left(1)
        t_reg = time.monotonic() - t
        status = api_call(self.api, "GET", "/v1/status")
        after = self.cp_now()
        self.result["setup"] = {
            "apply_s": t_apply,
            "register_s": t_reg,
            "services": len(status["services"]),
            "instances": status["instances"],
            "cp_cpu_s": after["cpu"] - before["cpu"],
            "cp_rss_kib": after.get("VmRSS"),
        }
        self.log(
            f"applied {len(status['services'])} services in {t_apply:.1f}s; "
            f"registered {status['instances']['total']} instances from {len(self.reg)} nodes "
            f"in {t_reg:.1f}s; control plane RSS {after.get('VmRSS', 0) / 1024:.0f} MiB"
        )
        self.extra: list[dict[str, Any]] = []
        threading.Thread(target=self._keepalive, daemon=True).start()

    def _keepalive(self) -> None:
        while not self._stop_keepalive.wait(self.args.ttl / 3):
            for node_id, instances in list(self.reg.items()):
                with contextlib.suppress(Exception):
                    api_call(
                        self.api,
                        "POST",
                        "/v1/registry/heartbeat",
                        {"node_id": node_id, "ttl": self.args.ttl, "instances": instances},
                    )

    def connect(self) -> None:
        before = self.cp_now()
        t0 = time.monotonic()
        self.start_clients()
        self.log(f"{len(self.clients)} client process(es) opening {self.args.proxies} streams")
        last_log = 0.0
        while True:
            rows = ask_all(self.clients, {"cmd": "status"}, self.left(60))
            synced = sum(r["synced"] for r in rows)
            failed = sum(r["failed_streams"] for r in rows)
            if synced == self.args.proxies:
                break
            if time.monotonic() - t0 > self.args.sync_timeout:
                raise TimeoutError(
                    f"only {synced}/{self.args.proxies} streams synced "
                    f"after {self.args.sync_timeout}s"
                )
            if time.monotonic() - last_log > 10:
                self.log(
                    f"initial sync: {synced}/{self.args.proxies} streams have ACKed all four types"
                    + (
                        f"; {failed} stream(s) failed and reconnected: {errors_of(rows)}"
                        if failed
                        else ""
                    )
                )
                last_log = time.monotonic()
            time.sleep(0.2)
        all_synced = max(r["last_first_ack"] for r in rows)
        after = self.cp_now()
        self.result["connect"] = {
            "sync_s": all_synced - t0,
            "cp_cpu_s": after["cpu"] - before["cpu"],
            "cp_rss_kib_before": before.get("VmRSS"),
            "cp_rss_kib_after": after.get("VmRSS"),
            "responses": sum(r["responses"] for r in rows),
            "failed_streams": sum(r["failed_streams"] for r in rows),
            "failures": sum(r["failures"] for r in rows),
            "errors": errors_of(rows),
        }
        self.log(
            f"all {self.args.proxies} streams synced {all_synced - t0:.1f}s after start"
            + (
                f" ({self.result['connect']['failed_streams']} stream(s) had to reconnect: "
                f"{errors_of(rows)})"
                if self.result["connect"]["failed_streams"]
                else ""
            )
            + "; "
            f"control plane CPU {after['cpu'] - before['cpu']:.1f}s, "
            f"RSS {after.get('VmRSS', 0) / 1024:.0f} MiB"
        )

    def _endpoint_change(self, k: int) -> tuple[str, dict[str, Any], Any, int]:
        a = self.args
        s = (k * 7919 + 3) % a.services
        inst = {
            "service": svc(s),
            "address": f"10.250.{(k >> 8) & 255}.{k & 255}",
            "port": 9000 + k % 1000,
            "labels": {"version": "v1"},
            "healthy": True,
        }
        self.extra.append(inst)
        body = {"node_id": "reg-extra", "ttl": a.ttl, "instances": list(self.extra)}
        check = {
            "kind": "endpoint",
            "cluster": f"outbound|{svc(s)}",
            "address": inst["address"],
            "port": inst["port"],
        }
        return (
            ENDPOINT,
            check,
            lambda: api_call(self.api, "POST", "/v1/registry/heartbeat", body),
            s,
        )

    def _route_change(self, k: int) -> tuple[str, dict[str, Any], Any, int]:
        r = k % max(1, self.args.routes)
        w = self.route_weights.get(r, 90) - 5
        if w < 50:
            w = 95
        self.route_weights[r] = w
        text = route_yaml(r, w)
        check = {
            "kind": "route",
            "service": svc(r),
            "weights": {
                f"outbound|{svc(r)}|version=v1": w,
                f"outbound|{svc(r)}|version=v2": 100 - w,
            },
        }
        return (
            ROUTE,
            check,
            lambda: api_call(
                self.api, "POST", "/v1/apply", {"filename": f"route-{k}.yaml", "yaml": text}
            ),
            r,
        )

    def changes(self) -> None:
        a = self.args
        out: list[dict[str, Any]] = []
        self.result["changes"] = out  # filled as the changes are made (kept if the run fails)
        profiler = self._start_profiler() if a.profile else None
        try:
            for k in range(a.changes):
                kind = "endpoint added" if k % 2 == 0 or not a.routes else "route weight changed"
                type_url, check, do, changed = (
                    self._endpoint_change(k) if kind == "endpoint added" else self._route_change(k)
                )
                callers = callers_of(changed, a.services, a.calls)
                clients_cpu0 = [cpu_s(c.popen.pid) or 0.0 for c in self.clients]
                before = self.cp_now()
                t0 = time.monotonic()
                do()
                t_api = time.monotonic() - t0
                rows = ask_all(
                    self.clients,
                    {
                        "cmd": "wait",
                        "type": type_url,
                        "t0": t0,
                        "timeout": self.left(a.change_timeout),
                        "check": check,
                        "services": callers,
                        "service_count": a.services,
                    },
                    self.left(a.change_timeout + 30),
                )
                after = self.cp_now()
                clients_cpu = sum(
                    (cpu_s(c.popen.pid) or 0.0) - c0
                    for c, c0 in zip(self.clients, clients_cpu0, strict=True)
                )
                recv = [x for r in rows for x in r["recv"]]
                ack = [x for r in rows for x in r["ack"]]
                missing = sum(r["missing"] for r in rows)
                checks = [r["check"] for r in rows if r["check"] is not None]
                failures = sum(r["failures"] for r in rows)
                row = {
                    "k": k,
                    "kind": kind,
                    "api_s": t_api,
                    "acked": len(ack),
                    "missing": missing,
                    "affected": len(ack) + missing,
                    "first_ack_s": min(ack) if ack else None,
                    "p50_ack_s": percentile(ack, 50) if ack else None,
                    "all_acked_s": max(ack) if ack and not missing else None,
                    "last_recv_s": max(recv) if recv else None,
                    "bytes": sum(r["bytes"] for r in rows),
                    "versions": sorted({v for r in rows for v in r["versions"]}),
                    "check": all(checks) if checks else None,
                    "cp_cpu_s": after["cpu"] - before["cpu"],
                    "window_s": after["t"] - t0,
                    "clients_cpu_s": clients_cpu,
                    "cp_rss_kib": after.get("VmRSS"),
                    "stream_failures_so_far": failures,
                }
                out.append(row)
                idle = self.wait_idle(t0)
                row["cp_busy_s"] = idle["t"] - t0
                row["cp_cpu_to_idle_s"] = idle["cpu"] - before["cpu"]
                spare = ask_all(
                    self.clients,
                    {"cmd": "unneeded", "type": type_url, "t0": t0, "services": callers},
                    self.left(30),
                )
                row["spared"] = sum(r["spared"] for r in spare)
                row["unneeded"] = sum(r["unneeded"] for r in spare)
                all_s = row["all_acked_s"]
                self.log(
                    f"change {k + 1}/{a.changes} ({kind}): API {t_api * 1000:.0f} ms, "
                    + (
                        f"all {len(ack)} affected ACKed after {all_s:.2f}s"
                        f" ({row['unneeded']} of {row['spared']} unaffected got a push anyway)"
                        if all_s is not None
                        else f"{missing} stream(s) never got it ({len(ack)} did)"
                    )
                    + f" (first {row['first_ack_s'] or 0:.2f}s,"
                    + f" median {row['p50_ack_s'] or 0:.2f}s), "
                    f"{row['bytes'] / 1e6:.1f} MB, control-plane CPU {row['cp_cpu_s']:.2f}s, "
                    f"check {row['check']}; busy until {row['cp_busy_s']:.1f}s, "
                    f"{row['cp_cpu_to_idle_s']:.1f}s CPU in all"
                )
                time.sleep(self.left(a.settle))
        finally:
            if profiler is not None:
                self._stop_profiler(profiler)

    def wait_idle(
        self, t0: float, window: float = 0.5, busy: float = 0.1, cap: float = 60.0
    ) -> dict[str, Any]:
        """Wait until the control plane uses less than ``busy`` of a CPU over ``window``
        seconds (or ``cap`` seconds after ``t0``); return the reading at the start of that
        quiet window."""
        prev = self.cp_now()
        while time.monotonic() - t0 < cap:
            time.sleep(self.left(window))
            now = self.cp_now()
            if now["cpu"] - prev["cpu"] < busy * (now["t"] - prev["t"]):
                return prev
            prev = now
        return prev

    def _start_profiler(self) -> subprocess.Popen[Any]:
        assert self.cp is not None
        pyspy = Path(PY).parent / "py-spy"
        self.profile_path = self.dir / "control-changes.collapsed.txt"
        argv = [
            str(pyspy),
            "record",
            "--pid",
            str(self.cp.pid),
            "--rate",
            "100",
            "--format",
            "raw",
            "--output",
            str(self.profile_path),
            "--nonblocking",
        ]
        popen = subprocess.Popen(
            argv,
            stdout=open(self.dir / "py-spy.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        self.procs.append(popen)
        time.sleep(1.0)
        return popen

    def _stop_profiler(self, popen: subprocess.Popen[Any]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(popen.pid, signal.SIGINT)
        try:
            popen.wait(30)
        except subprocess.TimeoutExpired:
            stop_pid(popen)
        if self.profile_path.exists():
            self.result["profile"] = {
                "file": str(self.profile_path.relative_to(HERE)),
                **collapsed_hotspots(self.profile_path),
            }

    def verify(self) -> None:
        """Ask the control plane itself: every node connected and SYNCED?"""
        if self.args.skip_proxy_status:
            return
        self.wait_idle(time.monotonic())
        t = time.monotonic()
        try:
            rows = api_call(self.api, "GET", "/v1/proxy-status", timeout=self.left(120))["nodes"]
        except Exception as exc:
            self.result["proxy_status"] = {"error": str(exc)}
            return
        took = time.monotonic() - t
        counts = Counter(r["status"] for r in rows if r["connected"])
        by_type = Counter(
            f"{url.rsplit('.', 1)[-1]} {info['status']}"
            for r in rows
            if r["connected"]
            for url, info in r["types"].items()
        )
        self.result["proxy_status"] = {
            "took_s": took,
            "connected": sum(counts.values()),
            "status": dict(counts),
            "by_type": dict(by_type),
        }
        self.log(f"GET /v1/proxy-status took {took:.1f}s: {dict(counts)}; {dict(by_type)}")

    def finish(self) -> None:
        samples = self.sampler.samples
        hwm = max((s["control"].get("VmHWM", 0) for s in samples if "control" in s), default=0)
        if self.cp is not None and self.cp.poll() is None:
            now = mem_kib(self.cp.pid)
            hwm = max(hwm, now.get("VmHWM", 0))
        self.result["cp_peak_hwm_kib"] = hwm
        self.result["cp_total_cpu_s"] = cpu_s(self.cp.pid) if self.cp is not None else None
        self.result["machine"]["loadavg_end"] = (_read("/proc/loadavg") or "").split()[:3]
        self.result["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        (self.dir / "samples.json").write_text(json.dumps(samples))

    def run(self) -> None:
        try:
            self.start_control()
            self.setup_mesh()
            self.connect()
            time.sleep(self.left(2.0))
            self.changes()
            self.verify()
            self.finish()
        except BaseException as exc:
            self.result["error"] = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                self.finish()
            raise
        finally:
            self.stop_all()
            (self.dir / "results.json").write_text(json.dumps(self.result, indent=1))
            self.log(f"raw results: {self.dir / 'results.json'}")


# -- report ---------------------------------------------------------------------------------


def _fmt_s(x: float | None) -> str:
    return "—" if x is None or x != x else f"{x:.2f}"


def summarize(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for row in result.get("changes", []):
        kinds.setdefault(row["kind"], {"rows": []})["rows"].append(row)
    for data in kinds.values():
        rows = data["rows"]
        done = [r["all_acked_s"] for r in rows if r["all_acked_s"] is not None]
        data.update(
            n=len(rows),
            incomplete=len(rows) - len(done),
            p50=percentile(done, 50) if done else None,
            p99=percentile(done, 99) if done else None,
            max=max(done) if done else None,
            first_p50=percentile(
                [r["first_ack_s"] for r in rows if r["first_ack_s"] is not None], 50
            ),
            median_p50=percentile([r["p50_ack_s"] for r in rows if r["p50_ack_s"] is not None], 50),
            api_p50=percentile([r["api_s"] for r in rows], 50),
            mb=percentile([r["bytes"] / 1e6 for r in rows], 50),
            cpu=percentile([r["cp_cpu_s"] for r in rows], 50),
            ccpu=percentile([r["clients_cpu_s"] for r in rows], 50),
            busy=percentile([r["cp_busy_s"] for r in rows if "cp_busy_s" in r], 50),
            cpu_idle=percentile(
                [r["cp_cpu_to_idle_s"] for r in rows if "cp_cpu_to_idle_s" in r], 50
            ),
            checks=all(r["check"] for r in rows),
            affected=percentile([r.get("affected", r["acked"]) for r in rows], 50),
            unneeded=max(r.get("unneeded", 0) for r in rows),
            spared=max(r.get("spared", 0) for r in rows),
        )
    return kinds


def report(result: dict[str, Any], rel_raw: str) -> str:
    p = result["params"]
    m = result["machine"]
    kinds = summarize(result)
    started = result["started"].replace("T", " ")[:16]
    nan = float("nan")
    order = [k for k in ("endpoint added", "route weight changed") if k in kinds]
    calls = p.get("calls")
    scope = (
        f"Every Service declares `spec.calls`: the next {calls} services round the ring, so a "
        f"proxy gets the clusters, endpoints and routes of {calls} services, and a change to "
        f"one service concerns only the ~{calls * p['proxies'] // p['services']:,} proxies "
        "fronting a service that calls it (**affected**); the others must get nothing. "
        if calls is not None
        else "No Service declares `spec.calls`, so every proxy gets every service and every "
        "change concerns every proxy. "
    )
    lines = [
        section_title(p),
        "",
        f"Generated by `benchmarks/xds_scale.py` on {started} UTC. "
        f"Command: `{result['command']}`. Raw data: `{rel_raw}` (not in git).",
        "",
        f"One `plait control` (a subprocess) serves {p['proxies']:,} simulated plait proxies over "
        f"real ADS streams (grpc.aio, one channel and TCP connection per proxy, spread over "
        f"{p['client_procs']} client processes; `benchmarks/xds_scale_client.py`). The mesh: "
        f"{p['services']:,} http Services, {p['routes']} of them with a Route splitting v1/v2 by "
        f"weight, {p['endpoints']:,} endpoints registered by heartbeats from {p['reg_nodes']} "
        "node ids "
        f"(ttl {p['ttl']:.0f} s). Each simulated proxy subscribes CDS and LDS as wildcards and EDS "
        "and RDS by name, like `plait proxy`, and ACKs every response at once without decoding it"
        + (
            "; like `plait proxy` it announces `plait.xds.sotw_partial`, so EDS and RDS pushes "
            "carry only the resources that changed. "
            if p.get("partial", False)
            else "; it does not announce `plait.xds.sotw_partial` (`--no-partial`, like a plait "
            "proxy before it), so every EDS and RDS push is complete. "
        )
        + "A change alternates *endpoint added* (a heartbeat with one more instance) and *route "
        "weight changed* (an apply of one Route); **time to all ACKed** runs from just before the "
        "API request until the last affected stream has received and ACKed a response of the "
        "affected type (EDS, resp. RDS) with a new version (the first affected stream's "
        "response is decoded to check it carries the change). " + scope,
        "",
    ]
    if result.get("error"):
        lines += [f"**The run failed:** `{result['error']}`", ""]
    if order:
        lines += [
            "| | " + " | ".join(order) + " |",
            "| --- | " + " | ".join("---" for _ in order) + " |",
        ]

        def row(label: str, fn: Any) -> None:
            lines.append(f"| {label} | " + " | ".join(fn(kinds[k]) for k in order) + " |")

        row(
            "changes measured",
            lambda d: f"{d['n']}" + (f" ({d['incomplete']} incomplete)" if d["incomplete"] else ""),
        )
        row("**all affected proxies ACKed, p50 s**", lambda d: f"**{_fmt_s(d['p50'])}**")
        row("**all affected proxies ACKed, p99 s**", lambda d: f"**{_fmt_s(d['p99'])}**")
        row("all affected proxies ACKed, max s", lambda d: _fmt_s(d["max"]))
        row(
            f"target: all ACKed within {TARGET_S:.0f} s",
            lambda d: (
                "met"
                if d["max"] is not None and d["max"] <= TARGET_S and not d["incomplete"]
                else "**missed**"
            ),
        )
        row("proxies affected by a change, p50", lambda d: f"{d['affected']:,.0f}")
        row(
            "unaffected proxies that got a push anyway, max",
            lambda d: f"{d['unneeded']:,} of {d['spared']:,}",
        )
        row("first proxy ACKed, p50 s", lambda d: _fmt_s(d["first_p50"]))
        row("median proxy ACKed, p50 s", lambda d: _fmt_s(d["median_p50"]))
        row("API answered, p50 ms", lambda d: f"{d['api_p50'] * 1000:.0f}")
        row("pushed to the affected proxies per change, MB", lambda d: f"{d['mb']:.2f}")
        row("control-plane CPU until all ACKed, s", lambda d: f"{d['cpu']:.2f}")
        row("control-plane busy after the change (until idle), s", lambda d: _fmt_s(d["busy"]))
        row("control-plane CPU until idle, s", lambda d: _fmt_s(d["cpu_idle"]))
        row("client processes' CPU per change, s", lambda d: f"{d['ccpu']:.2f}")
        row("change seen by the decoded stream", lambda d: "yes" if d["checks"] else "**no**")
        lines.append("")
        lines.append(
            "p50/p99 are over changes (linear interpolation; with ≤ 5 changes per kind the "
            "p99 is close to the max). Every row's per-change values are in the raw data."
        )
        lines.append("")
    setup = result.get("setup", {})
    conn = result.get("connect", {})
    hwm = result.get("cp_peak_hwm_kib", 0) / 1024
    before = (conn.get("cp_rss_kib_before") or 0) / 1024
    after = (conn.get("cp_rss_kib_after") or 0) / 1024
    per_proxy = (after - before) * 1024 / p["proxies"] if conn else float("nan")
    ps = result.get("proxy_status", {})
    lines += [
        "| control plane | |",
        "| --- | --- |",
        f"| peak RSS (VmHWM), whole run | **{hwm:,.0f} MiB** (target < {TARGET_MIB:,} MiB: "
        f"{'met' if hwm and hwm < TARGET_MIB else '**missed**'}) |",
        f"| RSS with config + registry, no streams | {before:,.0f} MiB |",
        f"| RSS with all {p['proxies']:,} streams synced | {after:,.0f} MiB "
        f"(≈ {per_proxy:,.0f} KiB per proxy) |",
        f"| apply {setup.get('services', 0):,} Services + {p['routes']} Routes; register "
        f"{p['endpoints']:,} endpoints | {setup.get('apply_s', 0):.1f} s; "
        f"{setup.get('register_s', 0):.1f} s |",
        f"| initial sync of all {p['proxies']:,} proxies (start of the clients → last first ACK) | "
        f"{conn.get('sync_s', nan):.1f} s, control-plane CPU {conn.get('cp_cpu_s', nan):.1f} s"
        + (
            f"; **{conn['failed_streams']:,} stream(s) failed and reconnected** "
            f"({', '.join(f'{n:,}× `{e}`' for e, n in conn['errors'].items())})"
            if conn.get("failed_streams")
            else "; no stream failed"
        )
        + " |",
    ]
    changes = result.get("changes") or []
    if changes and conn:
        during = (changes[-1].get("stream_failures_so_far") or 0) - conn.get("failures", 0)
        lines.append(f"| stream failures (reconnects) during the changes | {during:,} |")
    if ps:
        if "error" in ps:
            lines.append(f"| `GET /v1/proxy-status` after the changes | failed: {ps['error']} |")
        else:
            states = ", ".join(f"{v:,} {k}" for k, v in sorted(ps["status"].items()))
            lines.append(
                f"| `GET /v1/proxy-status` once the control plane is idle after the changes | "
                f"{states} of {ps['connected']:,} connected; the call took {ps['took_s']:.1f} s |"
            )
    lines.append("")
    if result.get("changes"):
        lines += [
            "<details><summary>Per change</summary>",
            "",
            "| # | change | API ms | first ACK s | median ACK s | all ACKed s | MB pushed | "
            "control-plane CPU s (to all ACKed / to idle) | control plane busy s | "
            "clients' CPU s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in result["changes"]:
            all_s = (
                _fmt_s(r["all_acked_s"])
                if r["all_acked_s"] is not None
                else f"{r['missing']} missing"
            )
            lines.append(
                f"| {r['k'] + 1} | {r['kind']} | {r['api_s'] * 1000:.0f} | "
                f"{_fmt_s(r['first_ack_s'])} | {_fmt_s(r['p50_ack_s'])} | {all_s} | "
                f"{r['bytes'] / 1e6:.1f} | {r['cp_cpu_s']:.2f} / "
                f"{_fmt_s(r.get('cp_cpu_to_idle_s'))} | {_fmt_s(r.get('cp_busy_s'))} | "
                f"{r['clients_cpu_s']:.2f} |"
            )
        lines += ["", "</details>", ""]
    prof = result.get("profile")
    if prof and prof.get("self"):
        samples = int(prof["samples"][0][1]) if prof.get("samples") else 0
        lines += [
            "<details><summary>py-spy of the control plane during the changes "
            f"({samples:,} samples, "
            f"`{prof['file']}`)</summary>",
            "",
            "| own time | function | | time incl. callees | function (plait/grpc) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for i in range(max(len(prof["self"]), len(prof["total"]))):
            a = prof["self"][i] if i < len(prof["self"]) else ("", 0.0)
            b = prof["total"][i] if i < len(prof["total"]) else ("", 0.0)
            lines.append(f"| {a[1]:.0%} | `{a[0]}` | | {b[1]:.0%} | `{b[0]}` |")
        lines += ["", "</details>", ""]
    code = result.get("code")
    if code:
        dirty = code["dirty_src"]
        lines += [
            f"Code measured: commit `{code['commit']}`"
            + (
                f" plus uncommitted changes to {len(dirty)} file(s) under src/ "
                f"({', '.join(f'`{d}`' for d in dirty[:6])}{', …' if len(dirty) > 6 else ''})"
                if dirty
                else ""
            )
            + f"; sha256 of src/plait/control + src/plait/xds: `{code['control_xds_sha256']}`.",
            "",
        ]
    la0 = " ".join(m.get("loadavg", []))
    la1 = " ".join(m.get("loadavg_end", []))
    pin = []
    if p.get("cp_cpu") is not None:
        pin.append(f"control plane on CPU {p['cp_cpu']}")
    if p.get("client_cpu") is not None:
        pin.append(f"clients on CPU {p['client_cpu']}")
    lines += [
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['mem_mib']:,} MiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, grpcio {m['grpcio']}; "
        f"{', '.join(pin) if pin else 'no CPU pinning (control plane and clients share them)'}; "
        f"1-minute load average {la0} at the start, {la1} at the end (other work on the machine "
        "adds noise).",
        "",
    ]
    return "\n".join(lines)


def section_title(params: dict[str, Any]) -> str:
    """The RESULTS.md heading of a run: scoped runs (``--calls``) get their own section."""
    calls = params.get("calls")
    return SECTION if calls is None else f"{SECTION}, scoped (--calls {calls})"


def write_section(path: Path, section: str, heading: str = SECTION) -> None:
    """Put ``section`` at the end of ``path``, replacing an earlier copy of it (from its
    ``heading`` to the next ``## `` heading or the end) and keeping its ``### Findings``."""
    text = path.read_text() if path.exists() else ""  # re-read right before writing
    findings = ""
    start = (
        text.find("\n" + heading + "\n") + 1
        if ("\n" + heading + "\n") in text
        else (0 if text.startswith(heading + "\n") else -1)
    )
    if start >= 0:
        nxt = text.find("\n## ", start + len(heading))
        end = len(text) if nxt < 0 else nxt + 1
        old = text[start:end]
        f_at = old.find(FINDINGS + "\n")
        if f_at >= 0:
            findings = old[f_at:].rstrip() + "\n"
        text = text[:start] + text[end:]
    body = section.rstrip() + "\n" + ("\n" + findings if findings else "")
    if text and not text.endswith("\n"):
        text += "\n"
    sep = "\n" if text.strip() else ""
    tmp = path.with_suffix(path.suffix + ".tmp-xds-scale")
    tmp.write_text((text.rstrip() + "\n" + sep if text.strip() else "") + body)
    os.replace(tmp, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--proxies", type=int, default=1000)
    p.add_argument("--services", type=int, default=500)
    p.add_argument("--endpoints", type=int, default=10_000)
    p.add_argument("--changes", type=int, default=10)
    p.add_argument("--routes", type=int, default=5, help="Services with a weighted Route")
    p.add_argument(
        "--calls",
        type=int,
        default=None,
        metavar="K",
        help="every Service declares spec.calls: the next K services (scoped config); "
        "default: no calls, so every proxy gets every service",
    )
    p.add_argument("--reg-nodes", type=int, default=500, help="node ids that register endpoints")
    p.add_argument("--ttl", type=float, default=3600, help="lease ttl of the heartbeats, s")
    p.add_argument("--client-procs", type=int, default=2, help="processes holding the streams")
    p.add_argument("--ramp", type=float, default=0.0, help="pause after every 50 stream opens, s")
    p.add_argument("--cp-cpu", type=int, default=None, help="pin the control plane to this CPU")
    p.add_argument("--client-cpu", type=int, default=None, help="pin the clients to this CPU")
    p.add_argument("--change-timeout", type=float, default=60.0)
    p.add_argument("--sync-timeout", type=float, default=300.0)
    p.add_argument("--settle", type=float, default=1.0, help="pause between changes, s")
    p.add_argument("--max-seconds", type=float, default=570.0, help="abort the run after this")
    p.add_argument("--profile", action="store_true", help="py-spy the control plane during changes")
    p.add_argument("--skip-proxy-status", action="store_true")
    p.add_argument(
        "--no-partial",
        dest="partial",
        action="store_false",
        help="simulate older plait proxies: no client feature plait.xds.sotw_partial, so "
        "every EDS/RDS push is complete (default: announced, like plait proxy; docs/xds.md)",
    )
    p.add_argument("--cp-log-level", default="WARNING")
    p.add_argument("--results", default=None, help="markdown file for the section")
    p.add_argument("--no-results", action="store_true", help="write only the raw JSON")
    p.add_argument(
        "--quick", action="store_true", help="50 proxies, 50 services, 500 endpoints, 4 changes"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.proxies, args.services, args.endpoints, args.changes = 50, 50, 500, 4
        args.reg_nodes = min(args.reg_nodes, 50)
        args.routes = min(args.routes, 5)
    args.routes = min(args.routes, args.services)
    if args.calls is not None and not 1 <= args.calls < args.services:
        p.error(f"--calls {args.calls}: must be from 1 to --services - 1 ({args.services - 1})")
    if args.results is None:
        args.results = str(HERE / ("out/xds_scale.quick.md" if args.quick else "RESULTS.md"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    failed = False
    try:
        run.run()
    except BaseException as exc:
        failed = True
        run.log(f"FAILED: {type(exc).__name__}: {exc}")
    if not args.no_results and run.result.get("changes"):
        rel = os.path.relpath(run.dir / "results.json", HERE)
        section = report(run.result, rel)
        heading = section_title(run.result["params"])
        write_section(Path(args.results), section, heading)
        run.log(f"wrote '{heading}' to {args.results}")
        print(section)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
