"""Malformed requests sent over a raw socket to a running mesh proxy.

A request with both Content-Length and Transfer-Encoding, or with broken chunk framing,
gets ``400`` with ``Proxy-Status: "<node>/<direction>"; error=http_request_error`` and the
connection is closed -- on host-frontend's outbound listener (where apps send requests)
and on its inbound listener (where other proxies send them). The demo app never handles
one: had it, it would have called orders with the same path, and host-frontend's access
log would show that call; its proxy must show only the 400.

A stand-in app that records every byte it receives (recording_app.py, service
``recorder`` on host-recorder) shows more strictly that no byte of such a request --
not even its head -- goes upstream when the whole request arrives in one write.
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from mesh_harness import (
    access_lines,
    add_recording_host,
    all_endpoints_known,
    chain_of,
    clusters,
    recorded,
    wait_until,
)

from plait.cli.topology import Mesh

pytestmark = pytest.mark.timeout(60)

HOST = "host-frontend"


def cl_te(path: str, host: str = "frontend") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        "0\r\n\r\n"
    ).encode()


def bad_chunk_size(path: str, host: str = "frontend") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
        "zz\r\nhello\r\n0\r\n\r\n"
    ).encode()


def bad_chunk_end(path: str, host: str = "frontend") -> bytes:
    # chunk data longer than its size says: no CRLF after the 5 bytes
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhelloXX\r\n0\r\n\r\n"
    ).encode()


CASES = {"cl-te": cl_te, "bad-chunk-size": bad_chunk_size, "bad-chunk-end": bad_chunk_end}


def send_raw(address: tuple[str, int], data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send ``data``, read until the peer closes; (bytes read, whether it closed)."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                piece = sock.recv(65536)
            except TimeoutError:
                return got, False
            except ConnectionResetError:
                return got, True
            if not piece:
                return got, True
            got += piece
        return got, False


def parse_head(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def app_requests(mesh: Mesh) -> int:
    """Requests host-frontend's proxy has sent to its local frontend app."""
    eps = clusters(mesh, HOST)["inbound|frontend"]["endpoints"]
    return sum(int(e["total"]) for e in eps)


def rejections(mesh: Mesh, listener: str) -> list[dict[str, Any]]:
    """host-frontend's access-log lines for requests it refused as malformed."""
    return [
        line
        for line in access_lines(mesh, HOST)
        if line["direction"] == listener and line["error"] == "http_request_error"
    ]


def lines_for(mesh: Mesh, path: str) -> list[dict[str, Any]]:
    return [
        line
        for host in mesh.hosts
        for line in access_lines(mesh, host)
        if line["path"] == path or str(line["path"]).endswith(path)
    ]


@pytest.mark.parametrize("listener", ["outbound", "inbound"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_request_gets_400_and_never_reaches_the_app(
    mesh: Mesh, listener: str, case: str
) -> None:
    host = mesh.hosts[HOST]
    path = f"/malformed-{case}-{uuid.uuid4().hex[:8]}"
    if listener == "outbound":
        address, target = host.outbound, f"http://frontend{path}"
    else:
        address, target = host.inbound("frontend"), path
    sent_to_app = app_requests(mesh)
    rejected_before = rejections(mesh, listener)

    raw, closed = send_raw(address, CASES[case](target))

    status, headers, _ = parse_head(raw)
    assert status == 400, raw
    proxy_status = headers.get("proxy-status", "")
    assert proxy_status.startswith(f'"{HOST}/{listener}"'), proxy_status
    assert "error=http_request_error" in proxy_status, proxy_status
    assert headers.get("connection") == "close", headers
    assert closed, "the proxy did not close the connection"
    assert raw.count(b"HTTP/1.1") == 1, raw  # nothing after the 400

    # The proxy logs its 400 with the same error type, and the request's method, path
    # and destination (even for a head rejected outright) ...
    wait_until(
        lambda: len(rejections(mesh, listener)) == len(rejected_before) + 1,
        10.0,
        f"one more http_request_error line for {listener} in {HOST}'s access log",
        interval=0.2,
    )
    (line,) = [x for x in rejections(mesh, listener) if x not in rejected_before]
    assert line["status"] == 400 and line["node"] == HOST, line
    assert line["details"] and line["details"] in proxy_status, (line, proxy_status)
    assert (line["method"], line["path"], line["destination"]) == ("POST", path, "frontend")
    # ... and the app never handled it: it would have called orders with the same path.
    time.sleep(0.3)
    seen = [x for x in lines_for(mesh, path) if x != line]
    assert not [line for line in seen if line["destination"] != "frontend"], seen
    assert not [line for line in seen if line["status"] == 200], seen
    if case == "cl-te":  # ambiguous framing: not even the head goes upstream
        assert app_requests(mesh) == sent_to_app
        assert not seen, seen

    # The mesh still serves well-formed requests.
    status2, _, answer = mesh.request(HOST, "http://frontend/after-malformed")
    assert status2 == 200 and chain_of(answer)[0] == "frontend/v1", answer


@pytest.mark.parametrize("listener", ["outbound", "inbound"])
def test_a_rejected_request_keeps_its_identity(mesh: Mesh, listener: str) -> None:
    """Content-Length + Transfer-Encoding is refused mid-head, yet the 400 keeps the
    client's x-request-id and the access log line its method, path and destination."""
    host = mesh.hosts[HOST]
    path = f"/clte-{uuid.uuid4().hex[:8]}"
    request_id = f"my-id-{uuid.uuid4().hex[:8]}"
    if listener == "outbound":
        address, target = host.outbound, f"http://frontend{path}?q=1"
    else:
        address, target = host.inbound("frontend"), f"{path}?q=1"
    data = (
        f"POST {target} HTTP/1.1\r\nHost: frontend\r\nx-request-id: {request_id}\r\n"
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ).encode()

    raw, closed = send_raw(address, data)

    status, headers, _ = parse_head(raw)
    assert status == 400 and closed, raw
    assert headers.get("x-request-id") == request_id, headers
    assert "error=http_request_error" in headers.get("proxy-status", ""), headers

    def logged() -> list[dict[str, Any]]:
        return [x for x in access_lines(mesh, HOST) if x["request_id"] == request_id]

    wait_until(lambda: logged(), 10.0, f"the 400 for {request_id} in {HOST}'s access log")
    (line,) = logged()
    assert line["direction"] == listener and line["status"] == 400, line
    assert (line["method"], line["path"]) == ("POST", path), line
    assert line["destination"] == "frontend", line
    assert line["error"] == "http_request_error", line

    # An x-request-id that is not sane to repeat is replaced, not echoed.
    bad = data.replace(request_id.encode(), b"two words")
    raw, _ = send_raw(address, bad)
    status, headers, _ = parse_head(raw)
    assert status == 400 and headers.get("x-request-id") not in (None, "two words"), headers


RECORDER_SERVICE = """\
apiVersion: plait/v1
kind: Service
metadata: {name: recorder}
spec:
  protocol: http
  ports: [{name: http, port: 80}]
"""


@pytest.fixture(scope="module")
def record(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Service ``recorder`` on host-recorder, served by recording_app.py: its record file."""
    config = tmp_path_factory.mktemp("recorder") / "recorder.yaml"
    config.write_text(RECORDER_SERVICE)
    mesh.apply(config)
    path = add_recording_host(mesh, "host-recorder", "recorder")
    mesh.wait_ready(timeout=30.0)
    wait_until(lambda: all_endpoints_known(mesh), 20.0, "every proxy to know the recorder")
    status, _, body = mesh.request(HOST, "http://recorder/hello")
    assert (status, body) == (200, b"ok")
    return path


@pytest.mark.parametrize("listener", ["outbound", "inbound"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_request_in_one_write_sends_no_byte_upstream(
    mesh: Mesh, record: Path, listener: str, case: str
) -> None:
    """host-frontend's outbound (to recorder) or host-recorder's inbound: nothing arrives."""
    marker = f"/nothing-{case}-{uuid.uuid4().hex[:8]}"
    if listener == "outbound":
        address, target = mesh.hosts[HOST].outbound, f"http://recorder{marker}"
        node = HOST
    else:
        address, target = mesh.hosts["host-recorder"].inbound("recorder"), marker
        node = "host-recorder"

    raw, closed = send_raw(address, CASES[case](target, host="recorder"))

    status, headers, _ = parse_head(raw)
    assert status == 400, raw
    assert headers.get("proxy-status", "").startswith(f'"{node}/{listener}"'), headers
    assert "error=http_request_error" in headers["proxy-status"]
    assert closed
    # A good request along the same path afterwards arrives; the bad one never did.
    after = f"{marker}-after"
    status2, _, body2 = mesh.request(HOST, f"http://recorder{after}")
    assert (status2, body2) == (200, b"ok")
    wait_until(lambda: f"GET {after} HTTP/1.1" in recorded(record), 5.0, "the good request")
    time.sleep(0.2)
    got = recorded(record)
    assert f"{marker} HTTP/1.1" not in got, f"the app received the malformed request:\n{got}"
