"""The control plane feeds the trust domain and CA bundle into translation, and a changed
bundle (rotation) is pushed to connected proxies."""

from __future__ import annotations

from pathlib import Path

from plait.control.plane import ControlPlane, lookup
from plait.control.store import Store
from plait.xds.inputs import NodeInfo
from plait.xds.types import CLUSTER, SECRET

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

MESH = """\
kind: Service
metadata: {name: orders}
spec: {mtls: strict}
---
kind: Policy
metadata: {name: orders-callers}
spec: {service: orders, allow: [web]}
"""


def test_bundle_and_trust_domain_reach_the_snapshot_and_rotation_pushes(tmp_path: Path) -> None:
    bundle = [PEM]
    plane = ControlPlane(
        Store(str(tmp_path)), trust_domain="example.org", trust_bundle_source=lambda: bundle[0]
    )
    plane.apply("mesh.yaml", MESH)
    wakes: list[int] = []
    watch = plane.cache.open_watch(NodeInfo("n1", plait_proxy=True), lambda: wakes.append(1))
    for type_url in (SECRET, CLUSTER):
        plane.cache.on_request(watch, type_url, "", "", [])
    sds, cds = plane.cache.pending(watch)
    assert sds.resources[0].validation_context.trusted_ca.inline_bytes == PEM
    assert b"spiffe://example.org/svc/orders" in cds.resources[0].SerializeToString()
    for push in (sds, cds):
        plane.cache.on_request(watch, push.type_url, push.version, push.nonce, [])

    assert plane.bundle_changed() is False  # same bundle: nothing to do
    bundle[0] = PEM + PEM
    assert plane.bundle_changed() is True
    plane.flush()
    (pushed,) = plane.cache.pending(watch)
    assert pushed.type_url == SECRET
    assert pushed.resources[0].validation_context.trusted_ca.inline_bytes == PEM + PEM
    assert wakes


def test_policies_are_looked_up_and_shown(tmp_path: Path) -> None:
    plane = ControlPlane(Store(str(tmp_path)))
    plane.apply("mesh.yaml", MESH)
    assert lookup(plane.config, "policy", "orders-callers").spec.allow == ("web",)
    (row,) = plane.status()["services"]
    assert (row["mtls"], row["policy"]) == ("strict", "orders-callers")
    assert plane.bundle_changed() is False  # no bundle source
