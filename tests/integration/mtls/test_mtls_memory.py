"""Running proxies with identities (mTLS) never load cryptography (docs/internals.md,
"Memory"): keys and CSRs come from a short-lived child (plait.identity.keygen) and
certificates are read by plait.identity.x509_reader.

Two proxies started as ``python -m plait.proxy`` (the proxy alone: ``plait.cli.main``
would import the whole CLI) get certificates from a real control plane's CA and carry a
request over mTLS; the shared objects mapped into each (``/proc/<pid>/maps``) must not
include cryptography's, pydantic's or grpcio's. Their key files are 0600.
"""

from __future__ import annotations

import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mtls_harness import MtlsMesh, Proxy, curl, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy"))
from dataplane_harness import mapped_libraries

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MtlsMesh, Proxy, Proxy]]:
    m = MtlsMesh(tmp_path_factory.mktemp("mtls-memory"))
    try:
        front, orders = m.start_strict_pair()
        yield m, front, orders
    finally:
        m.stop()


def test_mtls_proxies_map_no_cryptography(mesh: tuple[MtlsMesh, Proxy, Proxy]) -> None:
    _, front, orders = mesh
    status, head, body = curl(front.outbound("frontend"), "http://orders/")
    assert status == 200, head
    assert body == "hello from orders\n"
    inbound = wait_until(  # the access log is flushed about once a second
        lambda: [x for x in orders.log_lines() if x["direction"] == "inbound"], 10
    )
    assert inbound[-1]["peer"] == "spiffe://plait.local/svc/frontend"
    for proxy in (front, orders):
        libs = mapped_libraries(proxy.proc.pid)
        assert any("uvloop" in p for p in libs)  # the check reads the right process
        heavy = [p for p in libs if "cryptography" in p or "pydantic" in p or "grpc" in p]
        assert heavy == [], proxy.name


def test_key_files_are_private(mesh: tuple[MtlsMesh, Proxy, Proxy]) -> None:
    m, _, _ = mesh
    for node, service in (("host-front", "frontend"), ("host-orders", "orders")):
        key = m.root / node / "data" / "identity" / service / "key.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
        assert b"PRIVATE KEY" in key.read_bytes()
