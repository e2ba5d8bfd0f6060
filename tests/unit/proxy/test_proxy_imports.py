"""The proxy's import graph stays small: no pydantic, no grpcio, no cryptography without
mTLS.

A plaintext proxy's memory is mostly what it imports (benchmarks/rss_breakdown.py):
pydantic with the resource models costs about 11 MB and cryptography about 10 MB, and
neither is needed unless a local service has an identity (docs/internals.md, "Memory");
grpcio (about 14 MB) is not needed at all: the xDS client is plait.proxy.ads_h2.
"""

from __future__ import annotations

import json
import subprocess
import sys

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
    assert sorted(m for m in FORBIDDEN if m in loaded) == []


def test_identities_still_import_cryptography_when_needed() -> None:
    # the lazy imports must still resolve: the mTLS side loads them on first use
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
