"""The proxy's import graph stays small: no pydantic, no grpcio, no cryptography, with or
without mTLS.

A proxy's memory is mostly what it imports (benchmarks/rss_breakdown.py): pydantic with
the resource models costs about 11 MB and cryptography about 10 MB, and neither is
needed by the proxy process: certificates are read by plait.identity.x509_reader and keys
and CSRs are made by a short-lived child (plait.identity.keygen); grpcio (about 14 MB) is
not needed at all: the xDS client is plait.proxy.ads_h2 (docs/internals.md, "Memory").
Nor are the generated envoy protos (about 8 MB with the udpa/xds/validate annotation
modules they import): the proxy's messages come from plait.proxy.xds_schema's private pool.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# Never imported by `import plait.proxy.main` (or its bootstrap loading and CLI parsing).
FORBIDDEN = (
    "pydantic",
    "pydantic_core",
    "cryptography",
    "plait.model.resources",
    "plait.model.load",
    "plait.ca.authority",
    "plait.ca.profile",
    "plait.identity.manager",
    "plait.proxy.identities",
    "typer",
    "grpc",  # the xDS client speaks HTTP/2 itself (plait.proxy.ads_h2)
    "envoy.service.discovery.v3.ads_pb2_grpc",
    # the generated protos: plait.proxy.xds_schema stands in for them (top-level packages:
    # "xds" is the cncf one, not plait.xds)
    "envoy",
    "udpa",
    "xds",
    "validate",
    "google.protobuf.descriptor_pb2",  # the schema is read without it
    "google.rpc",
    "plait.proxy.xds_schema_gen",
    "plait.ca.tokens",  # the bootstrap checks a token's shape with plait.ca.token_format
    # standard modules the proxy does without (docs/internals.md, "Memory")
    "urllib.request",
    "http.client",
    "email",
    "tempfile",
    "shutil",
    "decimal",
    "difflib",
)

PROBE = """
import json, sys
import plait.proxy.main
from plait.proxy.bootstrap import parse_bootstrap
parse_bootstrap(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""

BOOT = """\
node_id: n1
control_plane: {xds: "127.0.0.1:18000", api: "http://127.0.0.1:18001"}
services:
  - name: orders
    app: {port: 9001}
    health_check: {http: /healthz, interval: 1s}
"""


def modules_after_import() -> set[str]:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, BOOT], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(r.stdout))


def test_the_proxy_imports_neither_pydantic_nor_cryptography() -> None:
    loaded = modules_after_import()
    assert "plait.proxy.main" in loaded and "plait.proxy.bootstrap" in loaded
    assert "plait.proxy.xds_client" in loaded  # the probe did import the whole proxy
    assert "plait.proxy.xds_schema" in loaded
    assert sorted(m for m in FORBIDDEN if m in loaded) == []


MTLS_ONLY = ("plait.identity.manager", "plait.proxy.identities")

MTLS_PROBE = """
import asyncio, json, sys
from pathlib import Path
import plait.proxy.main
from plait.proxy.identities import ProxyIdentities
from plait.identity.keygen import make_csr
from plait.identity.manager import IdentityManager
from plait.proxy.peer_identity import check_peer
from plait.proxy.tls import LocalIdentity, TlsContexts
from plait.identity.x509_reader import load_pem_certificates

data = Path(sys.argv[1])
m = IdentityManager("https://127.0.0.1:1", "orders", "t", data)
ident = m.load_stored()  # reads key, chain and bundle, checks the certificate
assert ident is not None, "stored identity not reused"
tls = TlsContexts()
tls.set_identity(LocalIdentity(ident.service, ident.spiffe_id, ident.chain_pem, ident.key_pem,
    ident.not_before, ident.not_after, ident.serial, ident.bundle_pem))
tls.set_sds_bundle(ident.bundle_pem)
assert tls.server("orders") is not None and tls.client("orders") is not None
leaf = load_pem_certificates(ident.chain_pem)[0]
assert check_peer(leaf.der, "plait.local") == ident.spiffe_id
made = asyncio.run(make_csr(ident.spiffe_id, None))  # the key child, for real
assert made.created and b"CERTIFICATE REQUEST" in made.csr_pem
print(json.dumps(sorted(sys.modules)))
"""


def write_identity(data: Path) -> None:
    """key.pem, cert.pem and bundle.pem of a valid identity for orders, as the CA makes
    them (cryptography here, in the test process)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    root_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "plait.local")])
    root = (
        x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(root_name)
        .public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier("spiffe://plait.local/svc/orders")]), False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    data.mkdir(mode=0o700)
    (data / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (data / "key.pem").chmod(0o600)
    (data / "cert.pem").write_bytes(leaf.public_bytes(pem))
    (data / "bundle.pem").write_bytes(root.public_bytes(pem))


def test_a_proxy_with_an_identity_does_not_import_cryptography(tmp_path: Path) -> None:
    # everything the proxy process does with an identity: load the stored one, build the
    # TLS contexts, merge bundles, check a peer, make a key and CSR (in the key child)
    write_identity(tmp_path / "id")
    r = subprocess.run(
        [sys.executable, "-c", MTLS_PROBE, str(tmp_path / "id")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(r.stdout))
    assert "plait.proxy.identities" in loaded and "plait.identity.manager" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in ("cryptography", "pydantic")) == []
    assert sorted(m for m in FORBIDDEN if m in loaded and m not in MTLS_ONLY) == []
    assert "plait.identity.csr" not in loaded  # only the key child imports it


def test_identities_still_import_cryptography_when_needed() -> None:
    # the lazy imports must still resolve: the CA side loads them on first use
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, plait.proxy.identities, plait.ca; plait.ca.CertificateAuthority;"
            "print('cryptography' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert r.stdout.strip() == "True"


CLI_PROBE = """
import json, sys
import plait.proxy.main as proxy_main
seen = {}
def fake_main(argv):
    seen["argv"] = argv
    print(json.dumps({"argv": argv, "modules": sorted(sys.modules)}))
    return 0
proxy_main.main = fake_main
sys.argv = ["plait", "proxy", "--config", "b.yaml", "--workers", "2"]
from plait.cli.entry import main
main()
"""


def test_plait_proxy_from_the_console_script_skips_the_rest_of_the_cli() -> None:
    r = subprocess.run(
        [sys.executable, "-c", CLI_PROBE], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["argv"] == ["--config", "b.yaml", "--workers", "2"]  # passed through unchanged
    loaded = set(out["modules"])
    assert sorted(m for m in (*FORBIDDEN, "rich", "plait.cli.main") if m in loaded) == []


def test_other_commands_still_reach_the_typer_app() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "plait.cli.entry", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "proxy" in r.stdout and "apply" in r.stdout


MAIN_PROBE = """
import json, sys
from plait.proxy.main import main
status = main(["--config", sys.argv[1]])  # parses the arguments, reads the bootstrap (a child)
print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
"""


def test_running_main_keeps_shutil_and_yaml_out(tmp_path: Path) -> None:
    # argparse's default help formatter imports shutil (bz2, lzma) when an argument is
    # added; the bootstrap's YAML is read by a child (plait.proxy.bootstrap_reader)
    path = tmp_path / "bootstrap.yaml"
    path.write_text(BOOT.replace("node_id: n1", "node_id: bad id"))  # stops after reading
    r = subprocess.run(
        [sys.executable, "-c", MAIN_PROBE, str(path)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == 2 and "node_id" in r.stderr  # the child's error was reported
    loaded = set(out["modules"])
    unwanted = (*FORBIDDEN, "bz2", "lzma", "yaml", "plait.model.source")
    assert sorted(m for m in unwanted if m in loaded) == []
