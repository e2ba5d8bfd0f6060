"""The bootstrap read in a child process (plait.proxy.bootstrap_reader): the same Bootstrap,
the same errors, and no PyYAML in the proxy process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from plait.proxy import bootstrap_reader
from plait.proxy.bootstrap import Bootstrap, BootstrapError, load_bootstrap
from plait.proxy.bootstrap_reader import read_bootstrap

FULL = """\
node_id: host-a
control_plane:
  xds: ["127.0.0.1:18000", "127.0.0.1:18010"]
  api: http://127.0.0.1:18001
admin: {port: 15000}
outbound: {address: 127.0.0.1, port: "15001"}
services:
  - name: orders
    labels: {version: v2, tier: backend}
    app: {port: 9001}
    inbound: {port: 15006}
    health_check: {http: /healthz, interval: 250ms, timeout: 1, unhealthy_threshold: 3}
    token_file: /run/secrets/orders.token
  - name: batch
    app: {address: 127.0.0.2, port: 9002}
    health_check: {tcp: yes}
heartbeat_interval: 500ms
lease_ttl: 5s
drain_time: 0s
guard: {confirm_after: 1m, panic_threshold: 25}
access_log: /var/log/plait/access.log
ready_file: ready.json
"""

BAD = """\
node_id: host a
control_plane: {xds: nope}
services:
  - name: Orders
    app: {port: 0}
    health_check: {interval: soon}
heartbeat_interval: 2s
lease_ttl: 1s
colour: blue
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bootstrap.yaml"
    path.write_text(text)
    return path


def test_the_child_reads_what_the_process_would(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    boot = read_bootstrap(path)
    assert isinstance(boot, Bootstrap)
    assert boot == load_bootstrap(path)
    assert boot.service("orders").health_check.interval == 0.25  # type: ignore[union-attr]
    assert boot.control_plane.xds == ("127.0.0.1:18000", "127.0.0.1:18010")
    assert boot.services[1].health_check.tcp is True  # type: ignore[union-attr]


def test_to_data_is_json_and_rebuilds_an_equal_bootstrap(tmp_path: Path) -> None:
    boot = load_bootstrap(write(tmp_path, FULL))
    data = json.loads(json.dumps(boot.to_data()))
    assert Bootstrap(**data) == boot
    assert data["services"][0]["labels"] == {"version": "v2", "tier": "backend"}


def test_errors_come_back_as_the_process_would_raise_them(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    with pytest.raises(BootstrapError) as here:
        load_bootstrap(path)
    with pytest.raises(BootstrapError) as child:
        read_bootstrap(path)
    assert child.value.errors == here.value.errors
    assert str(child.value) == str(here.value)
    assert any(e.line == 6 for e in child.value.errors)  # lines survive the trip


def test_an_unreadable_file_is_a_bootstrap_error(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(BootstrapError) as here:
        load_bootstrap(path)
    with pytest.raises(BootstrapError) as child:
        read_bootstrap(path)
    assert str(child.value) == str(here.value)
    assert "cannot read the bootstrap file" in str(child.value)


@pytest.mark.parametrize(
    "code",
    [
        "print('not json')",
        "import sys; sys.exit(3)",
        'print(\'{"bootstrap": {"node_id": 1}}\')',
        'print(\'{"errors": [{"nope": 1}]}\')',
    ],
)
def test_a_child_that_fails_is_a_bootstrap_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str
) -> None:
    monkeypatch.setattr(
        bootstrap_reader, "child_command", lambda path: [sys.executable, "-c", code]
    )
    with pytest.raises(BootstrapError) as err:
        read_bootstrap(write(tmp_path, FULL))
    if "node_id" in code:  # valid JSON, values the checks refuse
        assert "node_id" in str(err.value)
    else:
        assert "the bootstrap reader failed" in str(err.value)


def test_a_child_that_hangs_is_a_bootstrap_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hang = [sys.executable, "-c", "import time; time.sleep(30)"]
    monkeypatch.setattr(bootstrap_reader, "child_command", lambda path: hang)
    with pytest.raises(BootstrapError, match="did not finish"):
        read_bootstrap(write(tmp_path, FULL), timeout=0.5)


PROBE = """
import json, sys
import plait.proxy.main
from plait.proxy.bootstrap_reader import read_bootstrap
boot = read_bootstrap(sys.argv[1])
print(json.dumps({"node_id": boot.node_id, "modules": sorted(sys.modules)}))
"""


def test_the_proxy_process_never_imports_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = json.loads(r.stdout)
    assert out["node_id"] == "host-a"  # the bootstrap was read (by the child)
    loaded = set(out["modules"])
    assert "plait.proxy.xds_client" in loaded  # the probe did import the whole proxy
    yaml_side = ("yaml", "_yaml", "plait.model.source", "plait.model.yaml_dialect")
    assert sorted(m for m in loaded if m.split(".")[0] in yaml_side or m in yaml_side) == []


def test_main_and_the_supervisor_read_through_the_child() -> None:
    from plait.proxy import main, workers

    assert main.read_bootstrap is read_bootstrap
    assert workers.read_bootstrap is read_bootstrap
    assert not hasattr(main, "load_bootstrap") and not hasattr(workers, "load_bootstrap")
