"""The plait bootstrap and registration bodies (benchmarks/plait_case.py)."""

from pathlib import Path

import yaml

from plait_case import SERVICE_YAML, bootstrap, heartbeat_body

CONTROL = {"xds": "127.0.0.1:1", "api": "http://127.0.0.1:2"}


def test_outbound_only_bootstrap():
    doc = bootstrap("bench-out", CONTROL, Path("/w"), app_port=None, ready_file=Path("/r"))
    assert doc["services"] == []
    assert doc["outbound"] == {"address": "127.0.0.1", "port": 0}
    assert doc["access_log"] == "/w/access-bench-out.log"
    assert doc["control_plane"] == CONTROL


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
