"""Peer configs (benchmarks/peers.py); validated by haproxy -c / nginx -t when installed."""

import shutil
import subprocess
from pathlib import Path

import pytest

from peers import (
    BODY_SIZE,
    Certs,
    haproxy_conf,
    make_certs,
    nginx_proxy_conf,
    nginx_upstream_conf,
    openssl_commands,
    upstream_body,
)


def fake_certs(d: Path) -> Certs:
    return Certs(*(d / n for n in ("ca", "s.crt", "s.key", "s.pem", "c.crt", "c.key", "c.pem")))


def test_upstream_body_is_one_kib():
    assert len(upstream_body().encode()) == BODY_SIZE == 1024


def test_haproxy_plain_and_tls():
    plain = haproxy_conf(1000, 2000)
    assert "bind 127.0.0.1:1000\n" in plain
    assert "server s1 127.0.0.1:2000 maxconn 4096\n" in plain
    assert "ssl" not in plain
    c = fake_certs(Path("/c"))
    inbound = haproxy_conf(1000, 2000, listen_tls=c)
    assert "ssl crt /c/s.pem ca-file /c/ca verify required ssl-min-ver TLSv1.3" in inbound
    outbound = haproxy_conf(1000, 2000, target_tls=c)
    assert "ssl crt /c/c.pem ca-file /c/ca verify required verifyhost bench" in outbound


def test_nginx_proxy_tls_directives():
    c = fake_certs(Path("/c"))
    out = nginx_proxy_conf(Path("/p"), 1000, 2000, target_tls=c)
    assert "proxy_pass https://target;" in out
    assert "proxy_ssl_protocols TLSv1.3;" in out
    inbound = nginx_proxy_conf(Path("/p"), 1000, 2000, listen_tls=c)
    assert "ssl_verify_client on;" in inbound
    assert "listen 127.0.0.1:1000 ssl;" in inbound
    assert "keepalive 128" in nginx_proxy_conf(Path("/p"), 1, 2)


def test_openssl_commands_use_p256(tmp_path):
    cmds = openssl_commands(tmp_path)
    assert all(c[0] == "openssl" for c in cmds)
    assert sum("ec_paramgen_curve:P-256" in c for c in cmds) == 3


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")
def test_certificates_verify(tmp_path):
    certs = make_certs(tmp_path)
    for leaf in (certs.server_crt, certs.client_crt):
        r = subprocess.run(
            ["openssl", "verify", "-CAfile", str(certs.ca), str(leaf)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 0, r.stderr
    text = subprocess.run(
        ["openssl", "x509", "-in", str(certs.server_crt), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "prime256v1" in text or "P-256" in text
    assert "spiffe://bench.local/svc/bench" in text


@pytest.mark.skipif(not shutil.which("haproxy"), reason="haproxy not installed")
def test_haproxy_accepts_the_configs(tmp_path):
    certs = make_certs(tmp_path / "certs")
    for kw in ({}, {"listen_tls": certs}, {"target_tls": certs}):
        cfg = tmp_path / "h.cfg"
        cfg.write_text(haproxy_conf(1000, 2000, **kw))
        r = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(not shutil.which("nginx"), reason="nginx not installed")
def test_nginx_accepts_the_configs(tmp_path):
    certs = make_certs(tmp_path / "certs")
    confs = [
        nginx_upstream_conf(tmp_path, 1000, upstream_body()),
        nginx_proxy_conf(tmp_path, 1000, 2000),
        nginx_proxy_conf(tmp_path, 1000, 2000, listen_tls=certs),
        nginx_proxy_conf(tmp_path, 1000, 2000, target_tls=certs),
    ]
    for text in confs:
        path = tmp_path / "nginx.conf"
        path.write_text(text)
        r = subprocess.run(
            ["nginx", "-t", "-p", str(tmp_path), "-c", str(path)], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
