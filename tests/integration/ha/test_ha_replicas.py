"""Three control-plane replicas on a 3-member etcd cluster lose the etcd leader and one
replica while config changes are being applied.

The scenario (docs/resilience.md, "HA on etcd"): replica 0 is the Mesh's control plane,
started with ``--store etcd://.../<prefix>``; replicas 1 and 2 share the store, and with
it the CA (kept in etcd under ``<prefix>/ca/``; their data dirs start empty, and all
three serve one trust bundle). Each proxy's bootstrap lists all three replicas, rotated
so that the hosts start on different replicas: the ones that start on replica 0 must
fail over (xDS and heartbeats) when it dies.

While a client sends 20 requests a second through host-frontend (frontend -> orders ->
inventory, every proxy on the path) and an apply loop changes the orders Route's weights
one change after another (failing over to the next replica on a connection error), the
etcd leader is SIGKILLed, then replica 0. Afterwards:

- not one client request failed;
- no acknowledged change was lost: every acknowledged version is in every surviving
  replica's history, holds in etcd exactly the weights acknowledged for it, and the
  final config on every surviving replica is the last acknowledged change;
- every proxy is connected to a surviving replica, SYNCED there on every type, and its
  config_dump shows the last acknowledged weights, within CONVERGE_LIMIT seconds.

The test uses its own etcd cluster (``own_etcd_cluster``): the session cluster keeps its
three members for the other tests. Everything runs on 127.0.0.1 and is stopped by PID.
"""

from __future__ import annotations

import http.client
import sys
import threading
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mesh"))

from mesh_harness import (
    CDS,
    DEMO_HOSTS,
    DEMO_MESH,
    EDS,
    HEALTH_CHECK,
    HEARTBEAT_INTERVAL,
    LDS,
    RDS,
    RequestLoop,
    all_endpoints_known,
    apply_unscoped,
    config_dump,
    describe_failures,
    get_json,
    log_tails,
    outbound_routes,
    route_clusters,
    stop_and_check,
    summarize,
    wait_until,
)

from plait.cli.api import request_json
from plait.cli.supervisor import Process, pid_alive, signal_pid
from plait.cli.topology import Mesh
from plait.control.store_etcd import EtcdStore
from plait.model.load import config_to_documents

pytestmark = pytest.mark.timeout(240)

REPLICAS = 3
CONVERGE_LIMIT = 20.0
V1, V2 = "outbound|orders|version=v1", "outbound|orders|version=v2"


def route_text(w: int) -> str:
    return f"""\
apiVersion: plait/v1
kind: Route
metadata:
  name: orders-split
spec:
  service: orders
  rules:
    - backends:
        - subset: {{version: v1}}
          weight: {w}
        - subset: {{version: v2}}
          weight: {100 - w}
      timeout: 5s
      retries:
        attempts: 2
        on: [connect-failure, reset]
"""


def weight_for(i: int) -> int:
    """The v1 weight of the i-th change: 10..90, never the same twice in a row (both
    subsets stay in use, so every change touches routes only)."""
    return 10 + (i * 37) % 81


def route_weights(documents: list[dict[str, Any]]) -> tuple[int, int] | None:
    for doc in documents:
        if doc.get("kind") == "Route" and doc["metadata"]["name"] == "orders-split":
            backends = doc["spec"]["rules"][0]["backends"]
            by_version = {b["subset"]["version"]: int(b.get("weight", 1)) for b in backends}
            return by_version["v1"], by_version["v2"]
    return None


# -- replicas ----------------------------------------------------------------------------


@dataclass
class Replica:
    index: int
    api: str
    xds: str
    proc: Process | None  # None for replica 0 (the Mesh's own control process)
    alive: bool = True


def start_replica(mesh: Mesh, index: int, store_url: str) -> Replica:
    """Start replica ``index`` (>= 1) like Mesh starts its control plane, with its own
    empty data dir: the CA comes from etcd, where replica 0 put it."""
    data_dir = mesh.state_dir / f"control-{index}"
    ready = mesh.ready_dir / f"control-{index}.json"
    ready.unlink(missing_ok=True)
    argv = [mesh.python, "-m", "plait.control", "--data-dir", str(data_dir)]
    argv += ["--host", mesh.address, "--xds-port", "0", "--api-port", "0"]
    argv += ["--ready-file", str(ready), "--store", store_url]
    proc = mesh.supervisor.start(f"control-{index}", "control", argv)
    info = mesh.supervisor.wait_ready_file(proc, ready, mesh.start_timeout)
    return Replica(index, str(info["api"]).rstrip("/"), str(info["xds"]), proc)


def kill_replica(mesh: Mesh, replica: Replica) -> int:
    """SIGKILL a replica by PID, wait until it is gone, forget it (it is no failure)."""
    replica.alive = False
    if replica.proc is None:
        return mesh.kill_control()
    proc = replica.proc
    signal_pid(proc, 9)
    deadline = time.monotonic() + 10
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.popen is not None:
        proc.popen.wait()
    mesh.supervisor.processes = [p for p in mesh.supervisor.processes if p is not proc]
    return proc.pid


# -- the apply loop ----------------------------------------------------------------------


@dataclass
class Ack:
    version: int
    weights: tuple[int, int]
    replica: int
    t: float
    changed: list[str]


@dataclass
class ApplyLoop:
    """A thread applying one Route change after another, ``pause`` seconds apart.

    A change is retried until some replica acknowledges it (HTTP 200 with a version);
    on a connection error the loop moves on to the next replica. Only 200 answers are
    acknowledgements; everything else is recorded in ``attempts_failed``."""

    replicas: list[Replica]
    pause: float = 0.15
    acks: list[Ack] = field(default_factory=list)
    attempts_failed: list[tuple[float, int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="apply-loop", daemon=True)
        self._lock = threading.Lock()
        self._target = 0
        self.error: BaseException | None = None

    def start(self) -> ApplyLoop:
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> list[Ack]:
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the apply loop did not finish its last change"
        if self.error is not None:
            raise self.error
        return self.snapshot()

    def snapshot(self) -> list[Ack]:
        with self._lock:
            return list(self.acks)

    def _apply_until_acked(self, i: int) -> None:
        w = weight_for(i)
        body = {"filename": f"change-{i}.yaml", "yaml": route_text(w)}
        give_up = None
        while True:
            replica = self.replicas[self._target % len(self.replicas)]
            try:
                status, obj = request_json(replica.api, "POST", "/v1/apply", body, timeout=20.0)
            except (OSError, http.client.HTTPException) as exc:
                self.attempts_failed.append((time.monotonic(), replica.index, repr(exc)))
                self._target += 1  # fail over to the next replica
                time.sleep(0.05)
            else:
                if status == 200:
                    ack = Ack(
                        int(obj["version"]),
                        (w, 100 - w),
                        replica.index,
                        time.monotonic(),
                        list(obj.get("changed") or []),
                    )
                    with self._lock:
                        self.acks.append(ack)
                    return
                self.attempts_failed.append((time.monotonic(), replica.index, f"{status} {obj}"))
                time.sleep(0.1)
            if self._stop.is_set():
                give_up = give_up or time.monotonic() + 30.0
                if time.monotonic() > give_up:
                    raise RuntimeError(f"change {i} not acknowledged by any replica in 30s")

    def _run(self) -> None:
        try:
            i = 0
            while not self._stop.is_set():
                self._apply_until_acked(i)
                i += 1
                self._stop.wait(self.pause)
        except BaseException as exc:  # reported by stop()
            self.error = exc


# -- convergence ---------------------------------------------------------------------------


def node_rows(replica: Replica) -> dict[str, dict[str, Any]]:
    rows = get_json(replica.api + "/v1/proxy-status", timeout=2.0)["nodes"]
    return {n["node_id"]: n for n in rows if n.get("connected")}


def synced_on_survivors(
    mesh: Mesh, survivors: list[Replica], weights: tuple[int, int]
) -> dict[str, tuple[int, dict[str, Any]]] | None:
    """host -> (replica index, its proxy-status row) if every host is connected to a
    surviving replica, SYNCED there on every type, and its config_dump shows
    ``weights`` at the acked RDS version; else None."""
    rows = {r.index: node_rows(r) for r in survivors}
    out: dict[str, tuple[int, dict[str, Any]]] = {}
    for host in mesh.hosts:
        where = [(i, nodes[host]) for i, nodes in rows.items() if host in nodes]
        if len(where) != 1:
            return None
        index, node = where[0]
        if node.get("status") != "SYNCED" or not {CDS, EDS, LDS, RDS} <= set(node["types"]):
            return None
        for entry in node["types"].values():
            if entry.get("status") != "SYNCED" or not entry.get("acked") or entry.get("error"):
                return None
            if entry.get("sent") not in (None, entry["acked"]):
                return None
        dump = config_dump(mesh, host)
        if dump["versions"].get(RDS) != node["types"][RDS]["acked"]:
            return None
        routes = outbound_routes(dump, "orders")
        if not routes or route_clusters(routes[0]) != {V1: weights[0], V2: weights[1]}:
            return None
        out[host] = (index, node)
    return out


def survivors_summary(mesh: Mesh, survivors: list[Replica]) -> str:
    lines = []
    for r in survivors:
        try:
            rows = get_json(r.api + "/v1/proxy-status", timeout=2.0)["nodes"]
            version = get_json(r.api + "/v1/config", timeout=2.0)["version"]
        except (OSError, ValueError) as exc:
            lines.append(f"replica {r.index}: {exc}")
            continue
        lines.append(f"replica {r.index} (config version {version}):")
        for n in rows:
            types = ", ".join(
                f"{t.rsplit('.', 1)[-1]}={e.get('status')} sent={e.get('sent')} "
                f"acked={e.get('acked')}" + (f" error={e['error']!r}" if e.get("error") else "")
                for t, e in sorted(n["types"].items())
            )
            lines.append(
                f"  {n['node_id']}: connected={n.get('connected')} {n.get('status')}: {types}"
            )
    for host in mesh.hosts:
        try:
            routes = outbound_routes(config_dump(mesh, host), "orders")
            lines.append(f"{host}: orders routes {[route_clusters(r) for r in routes]}")
        except (OSError, ValueError, KeyError) as exc:
            lines.append(f"{host}: {exc}")
    return "\n".join(lines)


# -- the test ------------------------------------------------------------------------------


def test_etcd_leader_and_a_replica_killed_while_changes_are_applied(
    own_etcd_cluster: Any, etcd_prefix: str, tmp_path: Path
) -> None:
    cluster = own_etcd_cluster
    store_url = cluster.url(etcd_prefix)
    mesh = Mesh(
        tmp_path / ".plait",
        health_check=HEALTH_CHECK,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        start_timeout=30.0,
    )
    store: EtcdStore | None = None
    try:
        started = time.monotonic()
        mesh.start_control(["--store", store_url])
        replicas = [Replica(0, mesh.api_url, mesh.xds_address, None)]
        replicas += [start_replica(mesh, i, store_url) for i in range(1, REPLICAS)]
        bundles = {get_json(r.api + "/v1/ca/bundle", timeout=5.0)["version"] for r in replicas}
        assert len(bundles) == 1, f"the replicas serve different trust bundles: {bundles}"
        apply_unscoped(mesh, DEMO_MESH)  # every proxy gets every service (mesh_harness)
        for n, (name, apps) in enumerate(DEMO_HOSTS):
            order = [replicas[(n + k) % REPLICAS] for k in range(REPLICAS)]
            cp = {"xds": [r.xds for r in order], "api": [r.api for r in order]}
            mesh.add_host(name, list(apps), wait=False, bootstrap_overrides={"control_plane": cp})
        mesh.wait_started()
        mesh.wait_ready(timeout=30.0)
        mesh.wait_for_request("host-frontend", "http://frontend/warm-up", timeout=30.0)
        wait_until(lambda: all_endpoints_known(mesh), 20.0, "every proxy knows every instance")
        first = {name: (n % REPLICAS) for n, (name, _) in enumerate(DEMO_HOSTS)}
        wait_until(
            lambda: all(name in node_rows(replicas[i]) for name, i in first.items()),
            10.0,
            "every proxy connected to the first replica of its list",
            describe=lambda: survivors_summary(mesh, replicas),
        )
        print(f"3 replicas and {len(mesh.hosts)} hosts ready in {time.monotonic() - started:.2f}s")
        on_replica_0 = [name for name, i in first.items() if i == 0]

        entry = mesh.hosts["host-frontend"].outbound
        applier = ApplyLoop(replicas)
        with RequestLoop(entry, "http://frontend/ha", rate=20.0) as loop:
            origin = time.monotonic()
            applier.start()
            wait_until(lambda: len(applier.snapshot()) >= 5, 15.0, "5 acknowledged changes")

            leader = cluster.leader()
            cluster.kill(leader)  # SIGKILL by PID
            leader_killed = time.monotonic()
            assert not pid_alive(int(leader["pid"]))
            acks_at_leader_kill = len(applier.snapshot())
            time.sleep(0.5)
            pid = kill_replica(mesh, replicas[0])  # SIGKILL by PID
            replica_killed = time.monotonic()
            assert not pid_alive(pid)
            with pytest.raises(urllib.error.URLError):
                get_json(replicas[0].api + "/v1/health", timeout=1.0)
            acks_at_replica_kill = len(applier.snapshot())

            # changes keep being applied on the survivors for a while
            wait_until(
                lambda: len(applier.snapshot()) >= acks_at_replica_kill + 10,
                20.0,
                "10 acknowledged changes after the replica was killed",
            )
            time.sleep(2.0)
            acks = applier.stop()
            applies_stopped = time.monotonic()
            last = acks[-1]

            survivors = [r for r in replicas if r.alive]
            converged = wait_until(
                lambda: synced_on_survivors(mesh, survivors, last.weights),
                CONVERGE_LIMIT,
                f"every proxy SYNCED on a surviving replica with weights {last.weights}",
                interval=0.2,
                describe=lambda: survivors_summary(mesh, survivors),
            )
            converged_at = time.monotonic()
            time.sleep(1.0)
            results = loop.stop()

        # -- 0 failed requests
        failures = [r for r in results if r.status != 200]
        assert not failures, f"{len(failures)} of {len(results)} requests failed:\n" + (
            describe_failures(results, origin) + "\n" + summarize(results)
        )
        assert len([r for r in results if r.t >= leader_killed]) >= 40

        # -- no acknowledged change lost
        versions = [a.version for a in acks]
        assert versions == sorted(set(versions)), (
            f"acknowledged versions not increasing: {versions}"
        )
        store = EtcdStore(cluster.endpoints, etcd_prefix)
        for a in acks:
            cfg = store.config_at(a.version)
            assert cfg is not None, f"acknowledged version {a.version} is not in etcd"
            got = route_weights(config_to_documents(cfg))
            assert got == a.weights, f"version {a.version}: acknowledged {a.weights}, etcd {got}"
        for r in survivors:
            final = get_json(r.api + "/v1/config")
            assert final["version"] == last.version, (r.index, final["version"], last)
            assert route_weights(final["resources"]) == last.weights, (r.index, final)
            history = get_json(r.api + f"/v1/history?limit={last.version + 10}")["versions"]
            have = {int(v["version"]) for v in history}
            missing = [v for v in versions if v not in have]
            assert not missing, f"replica {r.index}: acknowledged versions missing: {missing}"
            assert have == set(range(1, last.version + 1)), (r.index, sorted(have))

        # -- every proxy converged; the ones on replica 0 moved to a survivor
        rds = {host: node["types"][RDS]["acked"] for host, (_, node) in converged.items()}
        for host in on_replica_0:
            assert converged[host][0] != 0
        assert len(set(rds.values())) == 1, f"proxies at different route versions: {rds}"
        print(
            f"etcd leader {leader['name']} killed at +{leader_killed - origin:.2f}s "
            f"(after {acks_at_leader_kill} acks), replica 0 at +{replica_killed - origin:.2f}s "
            f"(after {acks_at_replica_kill} acks); {len(acks)} changes acknowledged "
            f"(versions {versions[0]}..{versions[-1]}), {len(applier.attempts_failed)} "
            f"unacknowledged attempts; every proxy converged {converged_at - last.t:.2f}s after "
            f"the last acknowledgement ({converged_at - applies_stopped:.2f}s after the loop "
            f"stopped); {len(results)} requests, 0 failed"
        )
        print(
            "proxies (replica, RDS version):", {h: (i, rds[h]) for h, (i, _) in converged.items()}
        )
        print(
            "acks after a lost answer:",
            [(a.version, a.replica, a.changed) for a in acks if not a.changed],
        )
        for t, idx, what in applier.attempts_failed:
            print(f"  unacknowledged attempt at +{t - origin:.2f}s on replica {idx}: {what[:200]}")
    except BaseException:
        print(log_tails(mesh, 30))
        raise
    finally:
        if store is not None:
            store.close()
        stop_and_check(mesh)
