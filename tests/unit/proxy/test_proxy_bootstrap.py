"""The proxy bootstrap file: the documented example loads; errors name file, field, line."""

from __future__ import annotations

from pathlib import Path

import pytest

from plait.proxy.bootstrap import (
    Bootstrap,
    BootstrapError,
    BoundPorts,
    load_bootstrap,
    node_metadata,
    parse_bootstrap,
)
from plait.proxy.registration import instance_records

# The example from docs/internals.md, verbatim.
EXAMPLE = """\
node_id: host-a
control_plane:
  xds: 127.0.0.1:18000            # gRPC ADS address
  api: http://127.0.0.1:18001     # control plane HTTP API (registration, heartbeats)
admin: {address: 127.0.0.1, port: 0}
outbound: {address: 127.0.0.1, port: 0}
services:                          # local services this proxy fronts
  - name: orders
    labels: {version: v1}
    app: {address: 127.0.0.1, port: 9001}
    inbound: {address: 127.0.0.1, port: 0}
    health_check:                  # one of http: PATH or tcp: true
      http: /healthz
      interval: 1s
      timeout: 1s
      unhealthy_threshold: 2
      healthy_threshold: 1
heartbeat_interval: 1s
lease_ttl: 10s
data_dir: .plait/proxy-host-a
access_log: "-"                    # "-" = stdout, or a file path
ready_file: null
"""

MINIMAL = """\
node_id: n1
control_plane: {xds: "localhost:18000", api: "http://localhost:18001"}
"""


def test_the_documented_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.yaml"
    path.write_text(EXAMPLE)
    boot = load_bootstrap(path)
    assert boot.node_id == "host-a"
    assert (boot.control_plane.xds, boot.control_plane.api) == (
        "127.0.0.1:18000",
        "http://127.0.0.1:18001",
    )
    assert (boot.admin.port, boot.outbound.address) == (0, "127.0.0.1")
    (orders,) = boot.services
    assert (orders.name, orders.labels, orders.app.port) == ("orders", {"version": "v1"}, 9001)
    assert orders.health_check is not None
    assert orders.health_check.http == "/healthz"
    assert (orders.health_check.interval, orders.health_check.timeout) == (1.0, 1.0)
    assert (boot.heartbeat_interval, boot.lease_ttl) == (1.0, 10.0)
    assert (boot.data_dir, boot.access_log, boot.ready_file) == (".plait/proxy-host-a", "-", None)
    assert boot.service("orders") is orders


def test_defaults() -> None:
    boot = parse_bootstrap(MINIMAL)
    assert boot.services == ()
    assert (boot.admin.address, boot.admin.port) == ("127.0.0.1", 0)
    assert (boot.heartbeat_interval, boot.lease_ttl) == (1.0, 10.0)
    assert boot.data_dir == ".plait/proxy-n1"
    assert boot.access_log == "-"


def test_health_check_defaults_and_tcp() -> None:
    boot = parse_bootstrap(
        MINIMAL
        + "services:\n"
        + "  - {name: db, app: {port: 5432}, health_check: {tcp: true, interval: 250ms}}\n"
    )
    check = boot.services[0].health_check
    assert check is not None
    assert (check.tcp, check.http, check.interval, check.timeout) == (True, None, 0.25, 1.0)
    assert (check.unhealthy_threshold, check.healthy_threshold) == (2, 1)
    assert boot.services[0].health_check is check


def test_the_model_is_frozen() -> None:
    boot = parse_bootstrap(MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        boot.node_id = "other"  # type: ignore[misc]


def errors_of(text: str, filename: str = "boot.yaml") -> list[tuple[str, int | None, str]]:
    with pytest.raises(BootstrapError) as info:
        parse_bootstrap(text, filename)
    assert isinstance(info.value, ValueError)
    return [(e.field, e.line, e.message) for e in info.value.errors]


def example_with(old: str, new: str) -> str:
    assert old in EXAMPLE
    return EXAMPLE.replace(old, new)


def test_a_bad_duration_names_field_and_line() -> None:
    text = example_with("interval: 1s\n      timeout", "interval: soon\n      timeout")
    with pytest.raises(BootstrapError) as info:
        parse_bootstrap(text, "bootstrap.yaml")
    assert str(info.value) == (
        "bootstrap.yaml: services[0].health_check.interval: "
        "expected a duration such as '250ms' or '5s', got 'soon' (line 14)"
    )


@pytest.mark.parametrize(("text", "seconds"), [("0s", 0.0), ("0", 0.0), ("500ms", 0.5)])
def test_drain_time_zero_means_no_drain(text: str, seconds: float) -> None:
    boot = parse_bootstrap(
        example_with("lease_ttl: 10s\n", f"lease_ttl: 10s\ndrain_time: {text}\n"), "b.yaml"
    )
    assert boot.drain_time == seconds


def test_a_negative_drain_time_is_refused() -> None:
    with pytest.raises(BootstrapError) as info:
        parse_bootstrap(
            example_with("lease_ttl: 10s\n", "lease_ttl: 10s\ndrain_time: -1\n"), "b.yaml"
        )
    assert "drain_time: a duration must not be negative" in str(info.value)


def test_other_durations_still_refuse_zero() -> None:
    text = example_with("interval: 1s\n      timeout", "interval: 0s\n      timeout")
    with pytest.raises(BootstrapError) as info:
        parse_bootstrap(text, "b.yaml")
    assert "health_check.interval: a duration must be greater than zero" in str(info.value)


@pytest.mark.parametrize(
    ("old", "new", "field", "line", "words"),
    [
        ("node_id: host-a", "node_id: host a", "node_id", 1, "no spaces"),
        ("node_id: host-a", "nodeid: host-a", "nodeid", 1, "did you mean 'node_id'?"),
        ("node_id: host-a\n", "", "node_id", 1, "is required"),
        ("xds: 127.0.0.1:18000", "xds: 127.0.0.1", "control_plane.xds", 3, "host:port"),
        ("api: http://127.0.0.1:18001", "api: 127.0.0.1:18001", "control_plane.api", 4, "URL"),
        ("port: 0}\noutbound", "port: 99999}\noutbound", "admin.port", 5, "<= 65535"),
        ("outbound: {address", "outbound: {adress", "outbound.adress", 6, "allowed: address, port"),
        ("- name: orders", "- name: Orders", "services[0].name", 8, "DNS label"),
        ("{version: v1}", "{version: 1}", "services[0].labels.version", 9, "must be a string"),
        ("port: 9001", "port: 0", "services[0].app.port", 10, ">= 1"),
        ("port: 9001", "port: nine", "services[0].app.port", 10, "whole number"),
        ("http: /healthz", "http: healthz", "services[0].health_check.http", 13, "'/'"),
        ("http: /healthz", "http: /healthz\n      tcp: true", "services[0].health_check", 12,
         "exactly one of"),
        ("unhealthy_threshold: 2", "unhealthy_threshold: 0",
         "services[0].health_check.unhealthy_threshold", 16, ">= 1"),
        ("lease_ttl: 10s", "lease_ttl: 1s", "lease_ttl", 19, "longer than heartbeat_interval"),
        ("heartbeat_interval: 1s", "heartbeat_interval: -1s", "heartbeat_interval", 18,
         "expected a duration"),
        ("services:   ", "services: 3\nx:   ", "services", 7, "must be a list"),
    ],
)  # fmt: skip
def test_errors_name_field_and_line(old: str, new: str, field: str, line: int, words: str) -> None:
    errors = errors_of(example_with(old, new))
    found = [message for f, li, message in errors if (f, li) == (field, line)]
    assert found, errors
    assert words in found[0]


def test_cross_field_errors_point_at_the_second_use() -> None:
    text = MINIMAL + (
        "outbound: {port: 15001}\n"
        "services:\n"
        "  - {name: a, app: {port: 1}, inbound: {port: 15006}}\n"
        "  - name: a\n"
        "    app: {port: 2}\n"
        "    inbound: {port: 15001}\n"
    )
    assert errors_of(text) == [
        ("services[1].name", 6, "service 'a' is listed twice"),
        ("services[1].inbound.port", 8, "127.0.0.1:15001 is already used by outbound"),
    ]


def test_every_problem_is_reported_at_once() -> None:
    text = example_with("interval: 1s\n      timeout: 1s", "interval: x\n      timeout: y")
    fields = [f for f, _, _ in errors_of(text.replace("node_id: host-a", "node_id: ''"))]
    assert fields == [
        "node_id",
        "services[0].health_check.interval",
        "services[0].health_check.timeout",
    ]


def test_yaml_problems() -> None:
    assert errors_of("node_id: [a\n")[0][1] == 1  # fmt: skip
    dup = errors_of(MINIMAL + "node_id: n2\n")
    assert dup == [("node_id", 3, "is written twice here; keep one")]
    assert "one YAML mapping" in errors_of("")[0][2]
    assert "one YAML mapping" in errors_of("- a\n")[0][2]
    assert "one YAML mapping" in errors_of(MINIMAL + "---\n" + MINIMAL)[0][2]


def test_an_unreadable_file_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(BootstrapError) as info:
        load_bootstrap(missing)
    assert str(info.value).startswith(f"{missing}: cannot read the bootstrap file: ")


def test_building_in_code_runs_the_cross_checks_too() -> None:
    with pytest.raises(ValueError, match="lease_ttl: must be longer than heartbeat_interval"):
        Bootstrap.model_validate(
            {
                "node_id": "n",
                "control_plane": {"xds": "h:1", "api": "http://h:2"},
                "heartbeat_interval": 5,
                "lease_ttl": 5,
            }
        )


def test_node_metadata_reports_the_bound_ports() -> None:
    boot = parse_bootstrap(EXAMPLE)
    bound = BoundPorts(outbound=("127.0.0.1", 40123), inbound={"orders": ("127.0.0.1", 40124)})
    assert node_metadata(boot, bound) == {
        "plait_proxy": True,
        "outbound": {"address": "127.0.0.1", "port": 40123},
        "inbound": [
            {
                "service": "orders",
                "address": "127.0.0.1",
                "port": 40124,
                "app_address": "127.0.0.1",
                "app_port": 9001,
            }
        ],
    }
    assert instance_records(boot, bound, {"orders": False}) == [
        {
            "service": "orders",
            "address": "127.0.0.1",
            "port": 40124,
            "labels": {"version": "v1"},
            "healthy": False,
        }
    ]
    assert instance_records(boot, bound, {})[0]["healthy"] is True
    with pytest.raises(ValueError, match="orders"):
        node_metadata(boot, BoundPorts(outbound=("127.0.0.1", 1), inbound={}))


# --- mTLS: per-service outbound listeners and join tokens (docs/mtls.md) ------------------

TOKEN = "plait-jt.0123456789abcdef.c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"
MTLS = (
    MINIMAL
    + """\
services:
  - name: orders
    app: {port: 9001}
    outbound: {address: 127.0.0.1, port: 15101}
    token: TOKEN
  - name: web
    app: {port: 9002}
    token_file: /etc/plait/web.token
"""
)


def test_service_outbound_and_tokens_parse() -> None:
    boot = parse_bootstrap(MTLS.replace("TOKEN", TOKEN))
    orders, web = boot.services
    assert (orders.outbound.address, orders.outbound.port) == ("127.0.0.1", 15101)
    assert (orders.token, orders.token_file) == (TOKEN, None)
    assert (web.outbound.port, web.token, web.token_file) == (0, None, "/etc/plait/web.token")
    assert TOKEN not in repr(orders)


def test_a_bad_token_is_refused_without_echoing_it() -> None:
    (error,) = errors_of(MTLS.replace("TOKEN", "hunter2-secret"))
    assert error[0] == "services[0].token"
    assert "plait-jt" in error[2] and "hunter2" not in error[2]


def test_token_and_token_file_together_are_refused() -> None:
    text = MTLS.replace("TOKEN", TOKEN).replace(
        "    token_file: /etc/plait/web.token\n",
        f"    token_file: /etc/plait/web.token\n    token: {TOKEN}\n",
    )
    (error,) = errors_of(text)
    assert error[0] == "services[1]" and "not both" in error[2]


def test_service_outbound_ports_are_cross_checked() -> None:
    text = MTLS.replace("TOKEN", TOKEN).replace(
        "port: 15101", "port: 15101}\n    inbound: {port: 15101"
    )
    errors = errors_of(text)
    assert [e[0] for e in errors] == ["services[0].outbound.port"]


def test_node_metadata_reports_service_outbound_ports() -> None:
    boot = parse_bootstrap(MTLS.replace("TOKEN", TOKEN))
    bound = BoundPorts(
        outbound=("127.0.0.1", 1),
        inbound={"orders": ("127.0.0.1", 2), "web": ("127.0.0.1", 3)},
        service_outbound={"orders": ("127.0.0.1", 15101)},
    )
    orders, web = node_metadata(boot, bound)["inbound"]
    assert (orders["outbound_address"], orders["outbound_port"]) == ("127.0.0.1", 15101)
    assert "outbound_port" not in web
