"""The plait bootstrap and registration bodies (benchmarks/plait_case.py)."""

import json
from pathlib import Path

import pytest
import yaml

from plait_case import (
    MTLS_YAML,
    SERVICE_YAML,
    PlaitCase,
    bootstrap,
    check_curl_argv,
    heartbeat_body,
    inbound_peer,
    spiffe_id,
)

TOKEN_BENCH = "plait-jt.0123456789abcdef.c2VjcmV0LWJlbmNo"
TOKEN_LOADGEN = "plait-jt.fedcba9876543210.c2VjcmV0LWxvYWRnZW4"

CONTROL = {"xds": "127.0.0.1:1", "api": "http://127.0.0.1:2"}


def test_outbound_only_bootstrap():
    doc = bootstrap("bench-out", CONTROL, Path("/w"), app_port=None, ready_file=Path("/r"))
    assert doc["services"] == []
    assert doc["outbound"] == {"address": "127.0.0.1", "port": 0}
    assert doc["access_log"] == "/w/access-bench-out.log"
    assert doc["control_plane"] == CONTROL
    assert "token" not in str(doc)


def test_inbound_bootstrap_fronts_the_upstream():
    doc = bootstrap("bench-in", CONTROL, Path("/w"), app_port=8080, ready_file=Path("/r"))
    (svc,) = doc["services"]
    assert svc["name"] == "bench"
    assert svc["app"] == {"address": "127.0.0.1", "port": 8080}
    assert svc["health_check"]["http"] == "/healthz"


def test_heartbeat_registers_the_upstream_itself():
    body = heartbeat_body(8080)
    assert body["node_id"] == "bench-upstream"
    assert 0 < body["ttl"] <= 3600
    assert body["instances"] == [
        {
            "service": "bench",
            "address": "127.0.0.1",
            "port": 8080,
            "labels": {"version": "v1"},
            "healthy": True,
        }
    ]


def test_service_yaml():
    doc = yaml.safe_load(SERVICE_YAML)
    assert doc["kind"] == "Service"
    assert doc["metadata"]["name"] == "bench"
    assert doc["spec"]["protocol"] == "http"
    assert "mtls" not in doc["spec"]


def test_mtls_yaml_makes_bench_strict_and_declares_loadgen():
    docs = list(yaml.safe_load_all(MTLS_YAML))
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("Service", "bench"),
        ("Service", "loadgen"),
    ]
    assert docs[0]["spec"]["mtls"] == "strict"
    assert docs[0]["spec"]["protocol"] == "http"


def test_mtls_inbound_bootstrap_has_the_bench_token():
    doc = bootstrap(
        "bench-in",
        CONTROL,
        Path("/w"),
        app_port=8080,
        ready_file=Path("/r"),
        tokens={"bench": TOKEN_BENCH, "loadgen": TOKEN_LOADGEN},
    )
    (svc,) = doc["services"]
    assert svc["name"] == "bench"
    assert svc["token"] == TOKEN_BENCH
    assert svc["health_check"]["http"] == "/healthz"


def test_mtls_outbound_bootstrap_fronts_the_dummy_loadgen():
    doc = bootstrap(
        "bench-out",
        CONTROL,
        Path("/w"),
        app_port=None,
        ready_file=Path("/r"),
        loadgen_port=9999,
        tokens={"bench": TOKEN_BENCH, "loadgen": TOKEN_LOADGEN},
    )
    (svc,) = doc["services"]
    assert svc["name"] == "loadgen"
    assert svc["app"] == {"address": "127.0.0.1", "port": 9999}
    assert svc["token"] == TOKEN_LOADGEN
    assert svc["outbound"] == {"address": "127.0.0.1", "port": 0}  # outbound|loadgen
    assert "health_check" not in svc  # its app is never called


def test_bootstraps_validate_against_plait():
    pytest.importorskip("plait.proxy.bootstrap")
    from plait.proxy.bootstrap import parse_bootstrap

    for kwargs in (
        {"app_port": None},
        {"app_port": 8080},
        {"app_port": 8080, "tokens": {"bench": TOKEN_BENCH}},
        {"app_port": None, "loadgen_port": 9999, "tokens": {"loadgen": TOKEN_LOADGEN}},
    ):
        doc = bootstrap("n", CONTROL, Path("/w"), ready_file=Path("/r"), **kwargs)
        boot = parse_bootstrap(yaml.safe_dump(doc))
        names = [s.name for s in boot.services]
        assert names == (
            ["loadgen"] if kwargs.get("loadgen_port") else (["bench"] if kwargs["app_port"] else [])
        )
        for svc in boot.services:
            assert svc.token == kwargs.get("tokens", {}).get(svc.name)


def test_check_curl_goes_to_the_outbound_listener_with_a_request_id():
    argv = check_curl_argv(4321, "rid-1")
    assert argv[0] == "curl"
    assert argv[-1] == "http://127.0.0.1:4321/"
    assert "Host: bench" in argv and "x-request-id: rid-1" in argv
    assert argv[argv.index("--noproxy") + 1] == "*"


def test_inbound_peer_finds_the_inbound_line_of_the_request():
    want = spiffe_id("plait.local", "loadgen")
    assert want == "spiffe://plait.local/svc/loadgen"
    lines = [
        json.dumps({"request_id": "other", "direction": "inbound", "peer": "x"}),
        "not json rid-1",
        json.dumps({"request_id": "rid-1", "direction": "outbound", "peer": None}),
        json.dumps({"request_id": "rid-1", "direction": "inbound", "peer": want}),
    ]
    assert inbound_peer("\n".join(lines), "rid-1") == (True, want)
    assert inbound_peer("\n".join(lines[:3]), "rid-1") == (False, None)
    plain = json.dumps({"request_id": "rid-2", "direction": "inbound", "peer": None})
    assert inbound_peer(plain, "rid-2") == (True, None)  # found, but not mTLS


def test_case_names_and_mtls_needs_two_hops(tmp_path):
    kw = {"upstream_port": 1, "proxy_cpu": 0, "side_cpu": 1}
    assert PlaitCase(None, tmp_path, hops=1, **kw).name == "plait-1hop"  # type: ignore[arg-type]
    assert PlaitCase(None, tmp_path, hops=2, **kw).name == "plait-2hop"  # type: ignore[arg-type]
    case = PlaitCase(None, tmp_path, hops=2, mtls=True, **kw)  # type: ignore[arg-type]
    assert case.name == "plait-2hop-mtls"
    with pytest.raises(ValueError):
        PlaitCase(None, tmp_path, hops=1, mtls=True, **kw)  # type: ignore[arg-type]
