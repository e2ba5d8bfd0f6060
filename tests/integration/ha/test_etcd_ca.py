"""The service CA shared through etcd (``plait control --store etcd://...``).

- :class:`EtcdCa` against the session etcd cluster: replicas racing to create the CA on
  an empty prefix all end up with one CA (create-if-absent), and a save on a stale CA
  state revision is refused;
- two real ``python -m plait.control`` replicas with separate, empty data dirs started at
  once on an empty prefix serve the same trust bundle; a rotation begun on one is seen
  in the other's bundle (through the watch); no CA files are written to the data dirs.

Processes are stopped by PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from plait.ca.authority import CertificateAuthority
from plait.control.ca_etcd import EtcdCa
from plait.control.etcd import EtcdClient
from plait.jsonhttp import request_json_sync

pytestmark = pytest.mark.timeout(120)


def _rng(n: int) -> bytes:
    return os.urandom(n)


def test_racing_creates_share_one_ca(etcd_cluster, etcd_prefix) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    results: list[tuple[CertificateAuthority, bool]] = []
    errors: list[BaseException] = []
    sides = [EtcdCa(EtcdClient(etcd_cluster.endpoints), etcd_prefix) for _ in range(4)]
    start = threading.Barrier(len(sides))

    def race(side: EtcdCa) -> None:
        try:
            mine = CertificateAuthority.create("plait.local", now, _rng)
            start.wait()
            results.append(side.create(mine, now, _rng))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(s,)) for s in sides]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert sorted(created for _, created in results) == [False, False, False, True]
    bundles = {ca.trust_bundle() for ca, _ in results}
    assert len(bundles) == 1
    assert len({s.revision for s in sides}) == 1

    # a rotation saved by one side; another side's save on the old revision is refused
    a, b = sides[0], sides[1]
    ca_a = a.load(now, _rng)
    ca_b = b.load(now, _rng)
    assert ca_a is not None and ca_b is not None
    ca_a.begin_rotation(now)
    assert a.save(ca_a)
    ca_b.begin_rotation(now)
    assert not b.save(ca_b)  # stale: a rotated first
    assert b.refresh(ca_b, now, _rng)
    assert ca_b.trust_bundle() == ca_a.trust_bundle()
    assert len(x509.load_pem_x509_certificates(ca_b.trust_bundle())) == 2
    # keys are in etcd (that is what lets every replica issue)
    snap = b.read()
    assert snap is not None and "gen-2/intermediate.key" in snap[1]


def _start(tmp_path: Path, name: str, store_url: str) -> subprocess.Popen[bytes]:
    data_dir = tmp_path / f"{name}-data"
    args = ["--data-dir", str(data_dir), "--xds-port", "0", "--api-port", "0"]
    args += ["--ready-file", str(tmp_path / f"{name}.ready.json"), "--store", store_url]
    args += ["--lease-sweep-interval", "0.2"]
    with open(tmp_path / f"{name}.log", "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "plait.control", *args], stdout=out, stderr=out
        )


def _ready(tmp_path: Path, name: str, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    path = tmp_path / f"{name}.ready.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (tmp_path / f"{name}.log").read_text(errors="replace")
            raise AssertionError(f"{name} exited {proc.returncode}:\n{log[-3000:]}")
        if path.exists():
            return dict(json.loads(path.read_text()))
        time.sleep(0.05)
    raise AssertionError(f"{name} did not become ready")


def _bundle(api: str) -> dict[str, Any]:
    status, obj = request_json_sync(api, "GET", "/v1/ca/bundle", timeout=5.0)
    assert status == 200, obj
    return dict(obj)


def test_replicas_share_the_ca_and_see_a_rotation(etcd_cluster, etcd_prefix, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = etcd_cluster.url(etcd_prefix)
    procs = {name: _start(tmp_path, name, url) for name in ("a", "b")}  # at once
    try:
        apis = {name: str(_ready(tmp_path, name, p)["api"]) for name, p in procs.items()}
        a, b = _bundle(apis["a"]), _bundle(apis["b"])
        assert a["bundle"] == b["bundle"] and a["version"] == b["version"]
        assert len(x509.load_pem_x509_certificates(a["bundle"].encode())) == 1
        for name in procs:  # the CA is in etcd, not in the data dirs
            assert not (tmp_path / f"{name}-data" / "ca" / "state.json").exists()
            assert not list((tmp_path / f"{name}-data" / "ca").glob("gen-*"))

        status, obj = request_json_sync(apis["a"], "POST", "/v1/ca/rotate", {}, timeout=10.0)
        assert status == 200, obj
        rotated = _bundle(apis["a"])
        assert len(x509.load_pem_x509_certificates(rotated["bundle"].encode())) == 2
        deadline = time.monotonic() + 15
        while _bundle(apis["b"])["version"] != rotated["version"]:
            assert time.monotonic() < deadline, "replica b never saw the rotation"
            time.sleep(0.1)
        # b knows a rotation is running: it refuses to begin another
        status, obj = request_json_sync(apis["b"], "POST", "/v1/ca/rotate", {}, timeout=10.0)
        assert status == 409, obj
        for name in procs:
            log = (tmp_path / f"{name}.log").read_text(errors="replace")
            assert "Traceback" not in log, log[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)
