"""What each worker of ``plait proxy --workers N`` runs (plait.proxy.workers)."""

from __future__ import annotations

import pytest

from plait.proxy.bootstrap import BootstrapError, parse_bootstrap
from plait.proxy.workers import check_worker_node_ids, worker_bootstrap, worker_node_id

BOOT = """\
node_id: host-a
control_plane: {xds: "127.0.0.1:18000", api: "http://127.0.0.1:18001"}
admin: {port: 15000}
outbound: {port: 0}
data_dir: /var/lib/plait
services:
  - name: orders
    labels: {version: v1}
    app: {port: 9001}
    inbound: {port: 15006}
    health_check: {http: /healthz}
"""

PORTS = {"outbound": 41000, "inbound|orders": 15006, "outbound|orders": 41001}


def test_worker_zero_keeps_the_node_id_data_dir_and_admin() -> None:
    boot = parse_bootstrap(BOOT)
    w0 = worker_bootstrap(boot, 0, PORTS)
    assert (w0.node_id, w0.data_dir, w0.admin.port) == ("host-a", "/var/lib/plait", 15000)
    assert w0.outbound.port == 41000
    (svc,) = w0.services
    assert (svc.inbound.port, svc.outbound.port) == (15006, 41001)
    assert (svc.labels, svc.health_check) == (
        boot.services[0].labels,
        boot.services[0].health_check,
    )
    assert w0.ready_file is None


def test_other_workers_have_their_own_node_id_data_dir_and_admin_port() -> None:
    boot = parse_bootstrap(BOOT)
    w2 = worker_bootstrap(boot, 2, PORTS)
    assert (w2.node_id, w2.data_dir, w2.admin.port) == ("host-a.w2", "/var/lib/plait/worker-2", 0)
    assert (w2.outbound.port, w2.services[0].inbound.port) == (41000, 15006)
    assert worker_node_id("host-a", 0) == "host-a"


def test_a_node_id_too_long_for_worker_suffixes_is_refused() -> None:
    boot = parse_bootstrap(BOOT.replace("node_id: host-a", "node_id: " + "a" * 125))
    check_worker_node_ids(boot, 10)  # "<125 a>.w9": 128 characters
    with pytest.raises(BootstrapError, match="at most 128 characters"):
        check_worker_node_ids(boot, 11)  # "<125 a>.w10": 129
