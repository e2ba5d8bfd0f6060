"""A running plaintext proxy never loads pydantic, grpcio or cryptography
(docs/internals.md, "Memory").

The import graph is checked in tests/unit/proxy/test_proxy_imports.py; this checks the
running process after it received its config from a real control plane -- which sends
every proxy the mesh's trust bundle (SDS) -- and served a request: the shared objects
mapped into the process (``/proc/<pid>/maps``) must not include cryptography's,
pydantic's or grpcio's. Proxies with local identities (mTLS) are checked the same way in
tests/integration/mtls/test_mtls_memory.py.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml
from dataplane_harness import HOST, LoopThread, UpstreamServer, mapped_libraries
from test_proxy_main import http, start, start_control, wait_file

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
MANIFEST = (
    "apiVersion: plait/v1\nkind: Service\nmetadata: {name: orders}\n"
    "spec: {protocol: http, ports: [{name: http, port: 80}]}\n"
)


def test_a_plaintext_proxy_maps_no_pydantic_grpc_or_cryptography(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], lt: LoopThread
) -> None:
    app = UpstreamServer("orders-app")
    app_port = lt.run(app.start())
    cp = start_control(tmp_path, procs)
    api = cp["api"]
    body = json.dumps({"filename": "svc.yaml", "yaml": MANIFEST}).encode()
    req = urllib.request.Request(api + "/v1/apply", data=body, method="POST")
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=5) as r:
        assert r.status == 200
    ready = tmp_path / "ready.json"
    doc = {
        "node_id": "host-plain",
        "control_plane": {"xds": cp["xds"], "api": api},
        "services": [
            {
                "name": "orders",
                "app": {"address": HOST, "port": app_port},
                "health_check": {"tcp": True, "interval": "0.2s"},
            }
        ],
        "heartbeat_interval": "0.2s",
        "lease_ttl": "5s",
        "data_dir": str(tmp_path / "data"),
        "access_log": str(tmp_path / "access.log"),
    }
    boot = tmp_path / "bootstrap.yaml"
    boot.write_text(yaml.safe_dump(doc))
    proxy = start(
        ["-m", "plait.proxy", "--config", str(boot), "--ready-file", str(ready)], tmp_path
    )
    procs.append(proxy)
    info = wait_file(ready, proxy)

    deadline = time.monotonic() + 20
    status = 0
    while time.monotonic() < deadline and status != 200:
        status = http(f"http://{info['outbound']}/x", {"Host": "orders"})[0]
        time.sleep(0.05) if status != 200 else None
    assert status == 200
    dump = json.loads(http(info["admin"] + "/config_dump")[2])
    assert dump["xds"]["acked"].get(SECRET_TYPE), dump["xds"]  # the trust bundle arrived

    libs = mapped_libraries(proxy.pid)
    assert any("uvloop" in p for p in libs)  # the check reads the right process
    assert [p for p in libs if "cryptography" in p or "pydantic" in p or "grpc" in p] == []
    lt.run(app.stop())
