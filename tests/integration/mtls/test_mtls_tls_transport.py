"""Bodies and a tunnel over the mTLS hop between two real proxies, whose TLS connections
are plait.proxy.tls_transport's (OpenSSL reads and writes the socket itself).

Bodies several buffers long must arrive intact both ways (the request body is read by
the inbound proxy's TLS server side, the response by the outbound proxy's TLS client
side), and an upgrade tunnel must work over the hop; when the app half-closes it, the
inbound proxy reaches the TLS side's protocol through ``transport.get_protocol()``
(``tunnel_eof``), which must not fail. The app is the data-plane tests' origin
(``/big/N``, a body summary with its sha256, a websocket echo).
"""

from __future__ import annotations

import hashlib
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mtls_harness import MtlsMesh, Proxy, curl, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy"))
from dataplane_harness import LoopThread, UpstreamServer, pattern_sha256

pytestmark = pytest.mark.timeout(180)

TD = "plait.local"

Mesh = tuple[MtlsMesh, Proxy, Proxy, UpstreamServer, LoopThread]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    lt = LoopThread()
    app = UpstreamServer("orders-app")
    app_port = lt.run(app.start())
    m = MtlsMesh(tmp_path_factory.mktemp("mtls-transport"))
    default_app = m.app
    m.app = lambda name: app_port if name == "orders" else default_app(name)  # type: ignore[method-assign]
    try:
        front, orders = m.start_strict_pair()
        yield m, front, orders, app, lt
    finally:
        m.stop()
        lt.run(app.stop())
        lt.stop()


def proxy_log(m: MtlsMesh, proxy: Proxy) -> str:
    return (m.root / proxy.name / "proxy.log").read_text(errors="replace")


def test_a_large_request_body_crosses_the_mtls_hop(mesh: Mesh, tmp_path: Path) -> None:
    _, front, orders, _, _ = mesh
    body = hashlib.sha256(b"request").digest() * (700_000 // 32)  # about 11 buffers
    path = tmp_path / "body.bin"
    path.write_bytes(body)
    status, head, text = curl(
        front.outbound("frontend"), "http://orders/upload", "--data-binary", f"@{path}"
    )
    assert status == 200, head
    assert f"len={len(body)} sha256={hashlib.sha256(body).hexdigest()}" in text
    # it was mTLS: the inbound proxy's access log (flushed about once a second) names the peer
    inbound = wait_until(
        lambda: [x for x in orders.log_lines() if x.get("path") == "/upload"], timeout=10
    )
    assert inbound[-1]["peer"] == f"spiffe://{TD}/svc/frontend"


def test_a_large_response_body_crosses_the_mtls_hop(mesh: Mesh) -> None:
    _, front, _, _, _ = mesh
    n = 3_000_000
    for _ in range(3):  # and again on the pooled connection
        status, head, text = curl(front.outbound("frontend"), f"http://orders/big/{n}")
        assert status == 200, head
        body, trailer = text.encode("latin-1")[:n], text.encode("latin-1")[n:]
        assert hashlib.sha256(body).hexdigest() == pattern_sha256(n)
        assert trailer.startswith(b"x-trailer: done")  # curl's -D - adds the trailers


def _read_until(s: socket.socket, marker: bytes, got: bytes = b"") -> bytes:
    while marker not in got:
        piece = s.recv(65536)
        assert piece, f"closed before {marker!r}; got {got[-200:]!r}"
        got += piece
    return got


def test_an_upgrade_tunnel_crosses_the_mtls_hop_and_survives_a_half_close(mesh: Mesh) -> None:
    m, front, orders, app, lt = mesh
    host, port = front.outbound("frontend").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: orders\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\nearly"
        )
        got = _read_until(s, b"\r\n\r\n")
        head, _, rest = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        _read_until(s, b"echo:early", rest)
        s.sendall(b"ping")
        _read_until(s, b"echo:ping")
        s.sendall(b"y" * 300_000)  # several TLS buffers through the tunnel, both ways
        total = 0
        while total < 300_000:
            piece = s.recv(65536)
            assert piece
            total += piece.count(b"y")

        def app_half_closes() -> int:
            tunnels = [t for t in app.transports if getattr(t.get_protocol(), "tunnel", False)]
            for t in tunnels:
                t.write_eof()
            return len(tunnels)

        # the inbound proxy's upstream side gets EOF: UpstreamConnection.eof_received calls
        # tunnel_eof on the downstream (TLS) transport's protocol.
        # A TLS transport cannot half-close, so the tunnel stays open until the client
        # closes (had the call failed, uvloop would have closed the tunnel at once).
        assert lt.call(app_half_closes) == 1
        s.settimeout(1.5)
        with pytest.raises(TimeoutError):
            s.recv(65536)
    for proxy in (front, orders):
        log = proxy_log(m, proxy)
        assert "Traceback" not in log and "Fatal error" not in log, log[-3000:]
    assert orders.proc.poll() is None and front.proc.poll() is None


def test_requests_still_work_after_the_tunnel(mesh: Mesh) -> None:
    _, front, _, _, _ = mesh
    status, head, text = curl(front.outbound("frontend"), "http://orders/after")
    assert status == 200, head
    assert "GET /after" in text
