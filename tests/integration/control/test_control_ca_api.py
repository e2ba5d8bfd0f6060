"""The service CA end to end: a real `python -m plait.control`, the real `plait` CLI and
real openssl as the workload and as the verifier.

A token is created with the CLI; a key and CSR are made with ``openssl ecparam`` and
``openssl req``; the CSR goes to the control plane's HTTPS listener (server certificate
checked against the bundle and its SPIFFE id); ``openssl verify`` checks the chain against
the bundle; refusals are answered 403 with a reason; the audit log has a line for each; key
files are 0600. Then a root rotation with short-lived certificates, and an existing PKI.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.client import HTTPSConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from plait.jsonhttp import request_json_sync

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]

CONTROL_ID = "spiffe://plait.local/svc/plait-control"


@dataclass
class Control:
    proc: subprocess.Popen[bytes]
    api: str
    ca: str
    data_dir: Path
    log: Path


def start(tmp_path: Path, *extra: str, name: str = "control") -> Control:
    ready = tmp_path / f"{name}.ready.json"
    log = tmp_path / f"{name}.log"
    data_dir = tmp_path / f"{name}-data"
    args = ["--data-dir", str(data_dir), "--xds-port", "0", "--api-port", "0"]
    args += ["--ready-file", str(ready), *extra]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "plait.control", *args], stdout=out, stderr=out
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if ready.exists():
            info = json.loads(ready.read_text())
            return Control(proc, info["api"], info["ca"], data_dir, log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop(proc)
    raise AssertionError(f"control plane not ready:\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    c = start(tmp_path)
    try:
        yield c
    finally:
        stop(c.proc)
    assert c.proc.returncode == 0, c.log.read_text()


def plait(control: Control, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}
    proc = subprocess.run(
        [sys.executable, "-m", "plait.cli.main", *args, "--api", control.api],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    if check:
        assert proc.returncode == 0, f"plait {args}: {proc.stdout}\n{proc.stderr}"
    return proc


def openssl(cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30, input=stdin
    )


def make_key_and_csr(cwd: Path, name: str, curve: str = "prime256v1") -> Path:
    key, csr = f"{name}.key", f"{name}.csr"
    assert openssl(cwd, "ecparam", "-genkey", "-name", curve, "-out", key).returncode == 0
    req = openssl(cwd, "req", "-new", "-key", key, "-subj", "/CN=anything-i-like", "-out", csr)
    assert req.returncode == 0, req.stderr
    return cwd / csr


def get(control: Control, path: str) -> Any:
    status, obj = request_json_sync(control.api, "GET", path)
    assert status == 200, obj
    return obj


def save_bundle(control: Control, path: Path) -> dict[str, Any]:
    bundle = get(control, "/v1/ca/bundle")
    path.write_text(bundle["bundle"])
    return bundle


def https_post(
    control: Control, body: dict[str, Any], bundle: Path, client: tuple[Path, Path] | None = None
) -> tuple[int, Any]:
    """POST /v1/ca/sign the way a proxy must: verify the listener's chain against the bundle
    (no hostname: the identity is the SPIFFE URI SAN, checked here)."""
    ctx = ssl.create_default_context(cafile=str(bundle))
    ctx.check_hostname = False
    if client is not None:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    url = urlsplit(control.ca)
    conn = HTTPSConnection(url.hostname or "", url.port, context=ctx, timeout=10)
    try:
        conn.request("POST", "/v1/ca/sign", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        peer = conn.sock.getpeercert()
        assert ("URI", CONTROL_ID) in peer["subjectAltName"]
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def split_chain(text: str, cwd: Path, prefix: str) -> tuple[Path, Path]:
    end = "-----END CERTIFICATE-----\n"
    blocks = [b + end for b in text.split(end) if b.strip()]
    assert len(blocks) == 2
    leaf, inter = cwd / f"{prefix}-leaf.pem", cwd / f"{prefix}-inter.pem"
    leaf.write_text(blocks[0])
    inter.write_text(blocks[1])
    return leaf, inter


def audit_lines(control: Control) -> list[dict[str, Any]]:
    path = control.data_dir / "ca" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_token_csr_over_https_openssl_verify_refusals_audit(control: Control, tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    created = plait(control, "token", "create", "orders", "--ttl", "1h")
    token = created.stdout.strip()
    assert token.startswith("plait-jt.") and "\n" not in token
    assert "shown only now" in created.stderr
    token_id = token.split(".")[1]

    bundle_path = work / "bundle.pem"
    bundle = save_bundle(control, bundle_path)
    assert hashlib.sha256(bundle["bundle"].encode()).hexdigest() == bundle["version"]
    assert bundle["version"] in created.stderr  # the pin printed with the token
    assert bundle["ca_url"] == control.ca

    csr = make_key_and_csr(work, "orders")
    status, answer = https_post(
        control,
        {"service": "orders", "token": token, "csr": csr.read_text(), "node": "host-a"},
        bundle_path,
    )
    assert status == 200, answer
    assert answer["spiffe_id"] == "spiffe://plait.local/svc/orders"
    assert answer["bundle"] == bundle["bundle"]
    leaf, inter = split_chain(answer["certificate"], work, "orders")

    verify = openssl(work, "verify", "-CAfile", "bundle.pem", "-untrusted", inter.name, leaf.name)
    assert verify.returncode == 0 and f"{leaf.name}: OK" in verify.stdout, verify.stderr
    for purpose in ("sslclient", "sslserver"):
        verify = openssl(
            work, "verify", "-purpose", purpose, "-CAfile", "bundle.pem", "-untrusted",
            inter.name, leaf.name,
        )  # fmt: skip
        assert verify.returncode == 0, (purpose, verify.stderr)
    text = openssl(work, "x509", "-in", leaf.name, "-noout", "-text").stdout
    assert "URI:spiffe://plait.local/svc/orders" in text
    assert "anything-i-like" not in text and "Subject: CN = orders" in text
    serial = openssl(work, "x509", "-in", leaf.name, "-noout", "-serial").stdout
    assert serial.strip().split("=")[1].lower().lstrip("0") == answer["serial"].lstrip("0")

    # the listener's own certificate verifies against the bundle (openssl as the client)
    port = str(urlsplit(control.ca).port)
    s_client = openssl(
        work, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", "bundle.pem",
        "-verify_return_error", stdin="",
    )  # fmt: skip
    assert s_client.returncode == 0 and "Verify return code: 0 (ok)" in s_client.stdout

    # renewal: mTLS with the current certificate instead of a token
    (work / "orders-chain.pem").write_text(answer["certificate"])
    status, renewed = https_post(
        control,
        {"service": "orders", "csr": csr.read_text()},
        bundle_path,
        client=(work / "orders-chain.pem", work / "orders.key"),
    )
    assert status == 200, renewed
    assert renewed["serial"] != answer["serial"]

    # refusals: 403 with a reason
    def refused(body: dict[str, Any], reason: str) -> None:
        status, obj = https_post(control, body, bundle_path)
        assert status == 403, obj
        assert reason in obj["reason"], obj

    p384 = make_key_and_csr(work, "big", curve="secp384r1")
    refused({"service": "orders", "token": token, "csr": p384.read_text()}, "P-256")
    refused({"service": "payments", "token": token, "csr": csr.read_text()}, "wrong service")
    refused(
        {"service": "orders", "token": "plait-jt.0000000000000000.x", "csr": csr.read_text()},
        "token unknown",
    )
    refused({"service": "orders", "csr": csr.read_text()}, "join token")
    plait(control, "token", "revoke", token_id)
    refused({"service": "orders", "token": token, "csr": csr.read_text()}, "token revoked")

    # CSRs are not taken over plain HTTP
    status, obj = request_json_sync(
        control.api, "POST", "/v1/ca/sign", {"service": "orders", "token": token, "csr": "x"}
    )
    assert status == 421 and control.ca in obj["error"]

    # the audit log: every issuance and refusal
    lines = audit_lines(control)
    issued = [x for x in lines if x["event"] == "issued" and x["service"] == "orders"]
    assert [(x["serial"], x["auth"]) for x in issued] == [
        (answer["serial"], "token"),
        (renewed["serial"], "certificate"),
    ]
    assert issued[0]["token_id"] == token_id and issued[0]["node"] == "host-a"
    assert issued[0]["peer"].startswith("127.0.0.1:")
    reasons = [x["reason"] for x in lines if x["event"] == "refused"]
    assert len(reasons) == 5
    assert any("P-256" in r for r in reasons)
    assert {"token wrong service", "token unknown", "token revoked"} <= set(reasons)
    assert [x["event"] for x in lines if x["event"].startswith("token")] == [
        "token_created",
        "token_revoked",
    ]
    assert token not in (control.data_dir / "ca" / "audit.jsonl").read_text()

    # files: keys 0600, certificates 0644, the CA directory 0700, the audit log 0600
    ca_dir = control.data_dir / "ca"
    assert mode(ca_dir) == 0o700
    assert mode(ca_dir / "gen-1" / "root.key") == 0o600
    assert mode(ca_dir / "gen-1" / "intermediate.key") == 0o600
    assert mode(ca_dir / "gen-1" / "root.crt") == 0o644
    assert mode(ca_dir / "gen-1" / "intermediate.crt") == 0o644
    assert mode(ca_dir / "audit.jsonl") == 0o600
    assert not list(ca_dir.glob(".control-tls-*"))  # the listener's key never stays on disk
    assert token not in (control.data_dir / "plait.db").read_bytes().decode("latin-1")

    # the CLI views
    certs = plait(control, "certs").stdout
    assert "spiffe://plait.local/svc/orders" in certs and renewed["serial"] in certs
    assert CONTROL_ID in certs
    tokens = plait(control, "token", "list").stdout
    assert token_id in tokens and "revoked" in tokens
    assert token.split(".")[2] not in tokens


def heartbeat(control: Control, node: str, bundle_version: str | None = None) -> None:
    body: dict[str, Any] = {"node_id": node, "ttl": 60, "instances": []}
    if bundle_version is not None:
        body["bundle_version"] = bundle_version
    status, obj = request_json_sync(control.api, "POST", "/v1/registry/heartbeat", body)
    assert status == 200, obj


def wait_for_state(control: Control, state: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = get(control, "/v1/ca/status")
        if status["state"] == state:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def test_root_rotation_with_a_proxy_reporting_its_bundle(tmp_path: Path):
    control = start(tmp_path, "--cert-ttl", "3s", "--lease-sweep-interval", "0.2")
    try:
        work = tmp_path / "work"
        work.mkdir()
        first = save_bundle(control, work / "old.pem")
        heartbeat(control, "host-a")
        out = plait(control, "ca", "rotate").stdout
        assert "distributing" in out
        status = wait_for_state(control, "distributing")
        time.sleep(0.5)  # several ticks: host-a has not reported the new bundle
        status = get(control, "/v1/ca/status")
        assert status["state"] == "distributing"
        assert status["plan"]["waiting_for"] == ["host-a"]
        both = save_bundle(control, work / "both.pem")
        assert both["bundle"].startswith(first["bundle"]) and both["bundle"].count("BEGIN") == 2
        assert "OLD-ROOT" in plait(control, "certs").stdout

        heartbeat(control, "host-a", both["version"])
        wait_for_state(control, "retiring")
        final = wait_for_state(control, "stable")
        assert final["bundle"] == [2] and [g["id"] for g in final["generations"]] == [2]
        new = save_bundle(control, work / "new.pem")
        assert new["bundle"].count("BEGIN") == 1 and new["bundle"] not in first["bundle"]
        assert not (control.data_dir / "ca" / "gen-1").exists()

        # the listener now serves a certificate from the new root only
        port = str(urlsplit(control.ca).port)
        s_client = openssl(
            work, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", "new.pem",
            "-verify_return_error", stdin="",
        )  # fmt: skip
        assert s_client.returncode == 0, s_client.stdout + s_client.stderr
        steps = [x["step"] for x in audit_lines(control) if x["event"] == "rotation"]
        assert steps == ["begin", "switch", "retire"]
        assert "stable" in plait(control, "ca", "status").stdout
    finally:
        stop(control.proc)
    assert control.proc.returncode == 0, control.log.read_text()


def write_external_pki(directory: Path) -> tuple[Path, Path, Path]:
    from cryptography.hazmat.primitives.asymmetric import ec

    from plait.ca.pki_files import cert_pem, key_pem
    from plait.ca.profile import build_ca, ca_name, new_key

    now = datetime.now(UTC)
    root_key, inter_key = new_key(), ec.generate_private_key(ec.SECP384R1())
    root = build_ca(root_key, ca_name("corp", "root", 7), now, timedelta(days=30), 71, 1)
    inter = build_ca(
        inter_key, ca_name("corp", "issuing", 7), now, timedelta(days=20), 72, 0, root, root_key
    )
    paths = (directory / "root.pem", directory / "inter.pem", directory / "inter.key")
    for path, data in zip(
        paths, (cert_pem(root), cert_pem(inter), key_pem(inter_key)), strict=True
    ):
        path.write_bytes(data)
    return paths


def test_existing_pki(tmp_path: Path):
    root, inter, key = write_external_pki(tmp_path)
    control = start(tmp_path, "--ca-root", str(root), "--ca-cert", str(inter), "--ca-key", str(key))
    try:
        bundle = get(control, "/v1/ca/bundle")
        assert bundle["bundle"] == root.read_text()
        token = plait(control, "token", "create", "orders").stdout.strip()
        csr = make_key_and_csr(tmp_path, "orders")
        (tmp_path / "bundle.pem").write_text(bundle["bundle"])
        status, answer = https_post(
            control, {"service": "orders", "token": token, "csr": csr.read_text()},
            tmp_path / "bundle.pem",
        )  # fmt: skip
        assert status == 200, answer
        leaf, _ = split_chain(answer["certificate"], tmp_path, "ext")
        verify = openssl(
            tmp_path, "verify", "-CAfile", "bundle.pem", "-untrusted", inter.name, leaf.name
        )
        assert verify.returncode == 0, verify.stderr
        refused = plait(control, "ca", "rotate", check=False)
        assert refused.returncode == 1 and "existing PKI" in refused.stderr
        assert not list((control.data_dir / "ca").glob("gen-*"))  # nothing copied
    finally:
        stop(control.proc)
    assert control.proc.returncode == 0, control.log.read_text()


def test_mismatched_pki_files_stop_the_start(tmp_path: Path):
    root, inter, _ = write_external_pki(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, _, wrong_key = write_external_pki(other)
    ready = tmp_path / "ready.json"
    proc = subprocess.run(
        [sys.executable, "-m", "plait.control", "--data-dir", str(tmp_path / "d"),
         "--xds-port", "0", "--api-port", "0", "--ready-file", str(ready),
         "--ca-root", str(root), "--ca-cert", str(inter), "--ca-key", str(wrong_key)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "does not match" in proc.stderr
    assert not ready.exists()
