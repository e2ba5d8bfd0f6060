"""mTLS through real proxies: identities from the control plane's CA, strict inbound
listeners, peer checks that send no application byte to a bad peer, RBAC policies."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from certs_for_tests import load_issuer, make_ca, make_leaf, write_pair
from cryptography import x509
from mtls_harness import CURL_ENV, STRICT_PAIR, MtlsMesh, Proxy, curl, wait_until

pytestmark = pytest.mark.timeout(180)

TD = "plait.local"
CONFIG = (
    STRICT_PAIR
    + """---
apiVersion: plait/v1
kind: Service
metadata: {name: batch}
spec: {mtls: plaintext}
"""
)
HTTP_GET = b"GET / HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MtlsMesh, Proxy, Proxy]]:
    m = MtlsMesh(tmp_path_factory.mktemp("mtls-mesh"))
    try:
        m.start_control()
        m.apply(CONFIG)
        front = m.start_proxy("host-front", ["frontend", "batch"])
        orders = m.start_proxy("host-orders", ["orders"])
        wait_until(lambda: curl(front.outbound("frontend"), "http://orders/")[0] == 200, 60)
        yield m, front, orders
    finally:
        m.stop()


def test_requests_through_two_proxies_use_mtls(mesh: tuple[MtlsMesh, Proxy, Proxy]) -> None:
    _, front, orders = mesh
    for _ in range(20):
        status, head, body = curl(front.outbound("frontend"), "http://orders/")
        assert status == 200, head
        assert body == "hello from orders\n"
    inbound = [x for x in orders.log_lines() if x["direction"] == "inbound"]
    assert inbound and inbound[-1]["peer"] == f"spiffe://{TD}/svc/frontend"
    assert "plait_identity_expiry_seconds" in orders.admin("/stats/prometheus")
    assert f"spiffe://{TD}/svc/orders" in orders.admin("/identities")


def test_shared_outbound_with_two_local_services_has_no_identity(
    mesh: tuple[MtlsMesh, Proxy, Proxy],
) -> None:
    _, front, _ = mesh
    status, head, _ = curl(front.outbound(), "http://orders/")
    assert status == 503
    assert "destination_unavailable" in head and "no local identity" in head


def test_plaintext_client_gets_nothing_from_a_strict_listener(
    mesh: tuple[MtlsMesh, Proxy, Proxy],
) -> None:
    _, _, orders = mesh
    with socket.create_connection(orders.inbound("orders"), timeout=5) as s:
        s.sendall(HTTP_GET)
        assert _read_all(s) == b"" or not _read_all(s).startswith(b"HTTP/")


def _read_all(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (OSError, ssl.SSLError):
        pass
    return out


# -- peers that must get no application byte ---------------------------------------------


def _bad_peers(m: MtlsMesh, d: Path) -> dict[str, tuple[Path, Path] | None]:
    issuer, issuer_key = load_issuer(m.root / "cp" / "ca" / "gen-1")
    me = f"spiffe://{TD}/svc/frontend"
    other_ca, other_key = make_ca()
    now = datetime.now(UTC)
    cases: dict[str, tuple[x509.Certificate, object, list[x509.Certificate]]] = {
        "other_ca": (*make_leaf(other_ca, other_key, [me]), [other_ca]),
        "expired": (
            *make_leaf(
                issuer,
                issuer_key,
                [me],
                not_before=now - timedelta(hours=2),
                not_after=now - timedelta(hours=1),
            ),
            [issuer],
        ),
        "wrong_spiffe_id": (*make_leaf(issuer, issuer_key, [f"spiffe://{TD}/ns/x"]), [issuer]),
        "two_uri_sans": (
            *make_leaf(issuer, issuer_key, [me, f"spiffe://{TD}/svc/batch"]),
            [issuer],
        ),
        "foreign_trust_domain": (
            *make_leaf(issuer, issuer_key, ["spiffe://evil.example/svc/frontend"]),
            [issuer],
        ),
        "ca_true_leaf": (*make_leaf(issuer, issuer_key, [me], ca=True), [issuer]),
    }
    out: dict[str, tuple[Path, Path] | None] = {"no_certificate": None}
    for name, (cert, key, chain) in cases.items():
        out[name] = write_pair(d, name, cert, key, chain)  # type: ignore[arg-type]
    return out


BAD = [
    "no_certificate",
    "other_ca",
    "expired",
    "wrong_spiffe_id",
    "two_uri_sans",
    "foreign_trust_domain",
    "ca_true_leaf",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_peer_gets_no_application_bytes_openssl(
    mesh: tuple[MtlsMesh, Proxy, Proxy], tmp_path: Path, case: str
) -> None:
    """With TLS 1.3 a handshake can look complete before the server rejects: assert on
    bytes, not on the handshake."""
    m, _, orders = mesh
    pair = _bad_peers(m, tmp_path)[case]
    host, port = orders.inbound("orders")
    args = ["openssl", "s_client", "-connect", f"{host}:{port}", "-tls1_3", "-quiet", "-ign_eof"]
    if pair is not None:
        args += ["-cert", str(pair[0]), "-cert_chain", str(pair[0]), "-key", str(pair[1])]
    out = subprocess.run(args, input=HTTP_GET, capture_output=True, timeout=20)
    assert b"HTTP/1.1" not in out.stdout, out.stdout[:200]
    assert b"hello from" not in out.stdout


@pytest.mark.parametrize("case", ["no_certificate", "other_ca", "two_uri_sans", "expired"])
def test_bad_peer_gets_no_application_bytes_curl(
    mesh: tuple[MtlsMesh, Proxy, Proxy], tmp_path: Path, case: str
) -> None:
    m, _, orders = mesh
    pair = _bad_peers(m, tmp_path)[case]
    host, port = orders.inbound("orders")
    args = ["curl", "-s", "-k", "--tlsv1.3", "--max-time", "5", "-o", "-", "-w", "%{http_code}"]
    if pair is not None:
        args += ["--cert", str(pair[0]), "--key", str(pair[1])]
    out = subprocess.run([*args, f"https://{host}:{port}/"], capture_output=True, env=CURL_ENV)
    assert out.stdout in (b"000", b""), out.stdout[:200]


def test_good_peer_certificate_is_answered(
    mesh: tuple[MtlsMesh, Proxy, Proxy], tmp_path: Path
) -> None:
    """The control: a well-formed identity from the mesh CA does get an answer."""
    m, _, orders = mesh
    issuer, issuer_key = load_issuer(m.root / "cp" / "ca" / "gen-1")
    cert, key = make_leaf(issuer, issuer_key, [f"spiffe://{TD}/svc/frontend"])
    crt, k = write_pair(tmp_path, "good", cert, key, [issuer])
    host, port = orders.inbound("orders")
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"{host}:{port}", "-tls1_3", "-quiet", "-ign_eof",
         "-cert", str(crt), "-cert_chain", str(crt), "-key", str(k)],
        input=HTTP_GET, capture_output=True, timeout=20,
    )  # fmt: skip
    assert out.stdout.startswith(b"HTTP/1.1 200"), out.stdout[:300]


def test_listener_presents_the_service_identity(mesh: tuple[MtlsMesh, Proxy, Proxy]) -> None:
    _, front, orders = mesh
    seen = {}
    for proxy, svc in ((orders, "orders"), (front, "frontend")):
        host, port = proxy.inbound(svc)
        out = subprocess.run(
            ["openssl", "s_client", "-connect", f"{host}:{port}", "-tls1_3", "-showcerts"],
            input=b"", capture_output=True, timeout=20,
        )  # fmt: skip
        pem = re.search(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", out.stdout,
                        re.S)  # fmt: skip
        assert pem is not None, out.stdout[:500]
        leaf = x509.load_pem_x509_certificate(pem.group(0))
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        seen[svc] = sans.get_values_for_type(x509.UniformResourceIdentifier)
    assert seen == {
        "orders": [f"spiffe://{TD}/svc/orders"],
        "frontend": [f"spiffe://{TD}/svc/frontend"],
    }


# -- authorization -------------------------------------------------------------------------


def test_policy_deny_is_403_and_audit_lets_through(mesh: tuple[MtlsMesh, Proxy, Proxy]) -> None:
    m, front, orders = mesh
    deny = CONFIG + (
        "---\napiVersion: plait/v1\nkind: Policy\nmetadata: {name: orders-callers}\n"
        "spec: {service: orders, mode: enforce, allow: [batch]}\n"
    )
    m.apply(deny)
    _, head, _ = wait_until(
        lambda: (r := curl(front.outbound("frontend"), "http://orders/"))[0] == 403 and r, 20
    )
    assert re.search(
        r'(?im)^proxy-status:.*"host-orders/inbound"; error=http_request_denied; '
        rf'details="spiffe://{TD}/svc/frontend not allowed by policy',
        head,
    ), head
    assert "plait_rbac_denied_total" in orders.admin("/stats/prometheus")

    m.apply(deny.replace("mode: enforce", "mode: audit"))
    wait_until(lambda: curl(front.outbound("frontend"), "http://orders/")[0] == 200, 20)

    def audited() -> bool:
        assert curl(front.outbound("frontend"), "http://orders/")[0] == 200
        return any(
            x["direction"] == "inbound" and x["status"] == 200 and x["rbac"]
            and x["rbac"].startswith("would-deny: spiffe://plait.local/svc/frontend")
            for x in orders.log_lines()
        )  # fmt: skip

    wait_until(audited, 20, 0.5)
    m.apply(CONFIG)
    wait_until(lambda: curl(front.outbound("frontend"), "http://orders/")[0] == 200, 20)
