"""Root rotation with injected time: bundle contents and issuer through begin, switch and
retire; the plan (control.rotation) and the tick that drives it; saving and loading mid-way;
loading an existing PKI."""

from __future__ import annotations

import os
import stat
from datetime import timedelta

import pytest
from ca_fixtures import DAY, NOW, TD, load, make_csr, new_ca, rng
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from plait.ca import authority as au
from plait.ca.audit import AuditLog
from plait.ca.authority import CaError, CertificateAuthority, PeerRejected
from plait.ca.pki_files import cert_pem, key_pem
from plait.ca.profile import build_ca, ca_name, new_key
from plait.control import rotation
from plait.control.ca_plane import CaPlane, CaSetup
from plait.control.registry import Registry
from plait.control.store import Store

HOUR = timedelta(hours=1)


def roots(ca: CertificateAuthority) -> list[x509.Certificate]:
    return load(ca.trust_bundle())


def issue(ca, when):
    return ca.sign_csr(make_csr(), "orders", when, DAY)


def der(issued) -> bytes:
    return load(issued.cert_pem)[0].public_bytes(serialization.Encoding.DER)


def test_bundle_and_issuer_through_a_rotation():
    ca = new_ca()
    root1 = ca.issuer.root
    assert roots(ca) == [root1]
    assert ca.rotation == au.STABLE and ca.retire_after() is None
    v1 = ca.bundle_version()
    old_leaf = issue(ca, NOW)

    gen2 = ca.begin_rotation(NOW + HOUR)
    assert ca.rotation == au.DISTRIBUTING
    assert roots(ca) == [root1, gen2.root]
    assert ca.bundle_version() != v1
    during = issue(ca, NOW + 2 * HOUR)  # still the old issuer
    assert during.generation == 1
    load(during.cert_pem)[0].verify_directly_issued_by(ca.generation(1).intermediate)
    with pytest.raises(CaError, match="begin rotation while distributing"):
        ca.begin_rotation(NOW + 2 * HOUR)
    with pytest.raises(CaError, match="retire old while distributing"):
        ca.retire_old(NOW + 100 * DAY)
    assert ca.retire_after() == during.not_after

    ca.switch_issuer()
    assert ca.rotation == au.RETIRING
    assert roots(ca) == [root1, gen2.root]
    new_leaf = issue(ca, NOW + 3 * HOUR)
    assert new_leaf.generation == gen2.id == 2
    load(new_leaf.cert_pem)[0].verify_directly_issued_by(gen2.intermediate)
    assert ca.retire_after() == during.not_after  # the new issuer does not move it
    # both generations' leaves are accepted as peers while both roots are trusted
    assert ca.verify_peer(der(old_leaf), NOW + 3 * HOUR).service == "orders"
    assert ca.verify_peer(der(new_leaf), NOW + 3 * HOUR).service == "orders"

    assert ca.retire_old(during.not_after) is False  # not strictly after: too early
    assert roots(ca) == [root1, gen2.root]
    assert ca.retire_old(during.not_after + timedelta(seconds=1)) is True
    assert ca.rotation == au.STABLE
    assert roots(ca) == [gen2.root]
    assert ca.generation(1) is None
    with pytest.raises(PeerRejected):
        ca.verify_peer(der(during), during.not_after - timedelta(seconds=1))
    with pytest.raises(CaError, match="retire old while stable"):
        ca.retire_old(NOW + 100 * DAY)


def test_a_second_rotation_after_the_first():
    ca = new_ca()
    ca.begin_rotation(NOW)
    ca.switch_issuer()
    assert ca.retire_old(NOW)  # the old issuer signed nothing: retire at once
    gen3 = ca.begin_rotation(NOW + HOUR)
    assert gen3.id == 3 and [g["id"] for g in ca.rotation_status()["generations"]] == [2, 3]


def test_status_document():
    ca = new_ca()
    ca.begin_rotation(NOW)
    status = ca.rotation_status()
    assert status["state"] == "distributing"
    assert (status["issuer"], status["old"], status["bundle"]) == (1, 1, [1, 2])
    assert status["bundle_version"] == ca.bundle_version()
    assert status["trust_domain"] == TD and status["external"] is False


def test_save_and_load_mid_rotation(tmp_path):
    ca = new_ca()
    issue(ca, NOW)
    ca.begin_rotation(NOW)
    leaf = issue(ca, NOW + HOUR)
    directory = str(tmp_path / "ca")
    ca.save(directory)
    for gen in ("gen-1", "gen-2"):
        for name, mode in (
            ("root.key", 0o600),
            ("intermediate.key", 0o600),
            ("root.crt", 0o644),
            ("intermediate.crt", 0o644),
        ):
            path = os.path.join(directory, gen, name)
            assert stat.S_IMODE(os.stat(path).st_mode) == mode, path
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700

    again = CertificateAuthority.load(directory, NOW + HOUR, rng(2))
    assert again.rotation_status() == ca.rotation_status()
    assert again.trust_bundle() == ca.trust_bundle()
    assert again.retire_after() == leaf.not_after
    assert issue(again, NOW + HOUR).generation == 1

    again.switch_issuer()
    assert again.retire_old(leaf.not_after + timedelta(seconds=1))
    again.save(directory)
    assert sorted(os.listdir(directory)) == ["gen-2", "state.json"]
    third = CertificateAuthority.load(directory, NOW + 2 * DAY, rng(3))
    assert third.rotation == au.STABLE and roots(third) == roots(again)


def test_load_refuses_a_tampered_directory(tmp_path):
    ca = new_ca()
    directory = str(tmp_path / "ca")
    ca.save(directory)
    other = new_ca(seed=7)
    with open(os.path.join(directory, "gen-1", "intermediate.key"), "wb") as f:
        f.write(key_pem(other.issuer.intermediate_key))
    with pytest.raises(CaError, match="does not match"):
        CertificateAuthority.load(directory, NOW, rng(1))


# -- the plan and the tick -----------------------------------------------------------


def test_plan_waits_for_every_live_node():
    later = NOW + DAY
    p = rotation.plan("distributing", "v2", ["a", "b"], {"a": "v2", "b": "v1"}, NOW, later)
    assert p.action is None and p.waiting_for == ("b",)
    p = rotation.plan("distributing", "v2", ["a", "b"], {"a": "v2", "b": "v2"}, NOW, later)
    assert p.action == rotation.SWITCH
    assert rotation.plan("distributing", "v2", [], {}, NOW, later).action == rotation.SWITCH
    # a node that left does not hold the rotation back
    assert rotation.plan("distributing", "v2", ["a"], {"a": "v2", "gone": "v1"}, NOW, later).action


def test_plan_retires_after_the_last_old_certificate():
    assert rotation.plan("retiring", "v", [], {}, NOW, NOW).action is None
    assert (
        rotation.plan("retiring", "v", [], {}, NOW + timedelta(seconds=1), NOW).action == "retire"
    )
    assert rotation.plan("retiring", "v", [], {}, NOW, None).action == "retire"
    assert rotation.plan("stable", "v", ["a"], {}, NOW, None).action is None


class Clock:
    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now


def test_tick_drives_the_rotation(tmp_path):
    clock = Clock()
    store = Store(str(tmp_path / "db"))
    registry = Registry()
    ca_dir = str(tmp_path / "ca")
    setup = CaSetup(new_ca(), AuditLog(str(tmp_path / "audit.jsonl")), ca_dir, DAY, rng(5))
    plane = CaPlane(setup, store, registry, clock)
    try:
        _, secret = plane.create_token("orders", HOUR)
        old = plane.sign("orders", make_csr(), token=secret, node="host-a")
        registry.heartbeat("host-a", [], 10, 0.0)
        registry.heartbeat("host-b", [], 10, 0.0)
        assert plane.tick() is None

        plane.begin_rotation()
        version = plane.ca.bundle_version()
        assert plane.tick() is None
        assert plane.status()["plan"]["waiting_for"] == ("host-a", "host-b")
        plane.report_bundle("host-a", version)
        plane.report_bundle("host-b", "stale")
        assert plane.tick() is None
        plane.report_bundle("host-b", version)
        assert [c["old_root"] for c in plane.issued_certs()] == [True]
        assert plane.tick() == rotation.SWITCH
        assert plane.ca.rotation == au.RETIRING
        assert CertificateAuthority.load(ca_dir, NOW, rng(1)).rotation == au.RETIRING

        new = plane.sign("orders", make_csr(), peer_cert=der(old))
        assert new.generation == 2
        assert plane.tick() is None  # the old certificate is still valid
        clock.now = old.not_after.timestamp() + 1
        assert plane.tick() == rotation.RETIRE
        assert roots(plane.ca) == [plane.ca.issuer.root]
        assert sorted(os.listdir(ca_dir)) == ["gen-2", "state.json"]
        steps = [e for e in (tmp_path / "audit.jsonl").read_text().splitlines() if "rotation" in e]
        assert len(steps) == 3
    finally:
        store.close()


def test_force_switch_and_errors(tmp_path):
    store = Store(str(tmp_path / "db"))
    setup = CaSetup(new_ca(), AuditLog(str(tmp_path / "a.jsonl")), None, DAY, rng(5))
    plane = CaPlane(setup, store, Registry(), Clock())
    try:
        with pytest.raises(CaError):
            plane.switch_issuer()
        plane.begin_rotation()
        plane.switch_issuer()
        assert plane.ca.rotation == au.RETIRING
    finally:
        store.close()


# -- an existing PKI -----------------------------------------------------------------


def external_pki(root_path_len: int = 1):
    root_key = new_key()
    root = build_ca(root_key, ca_name("corp", "root", 1), NOW - DAY, 1000 * DAY, 1, root_path_len)
    inter_key = ec.generate_private_key(ec.SECP384R1())
    inter = build_ca(
        inter_key, ca_name("corp", "issuing", 1), NOW - DAY, 300 * DAY, 2, 0, root, root_key
    )
    return root, inter, inter_key


def test_existing_pki_signs_and_cannot_rotate():
    root, inter, inter_key = external_pki()
    ca = CertificateAuthority.from_pem(
        TD, cert_pem(root), cert_pem(inter), key_pem(inter_key), NOW, rng(1)
    )
    out = issue(ca, NOW)
    leaf = load(out.chain_pem)[0]
    leaf.verify_directly_issued_by(inter)
    assert leaf.signature_hash_algorithm.name == "sha384"
    assert roots(ca) == [root]
    with pytest.raises(CaError, match="existing PKI"):
        ca.begin_rotation(NOW)
    with pytest.raises(CaError, match="not saved"):
        ca.save("/nonexistent")


def test_existing_pki_validation():
    root, inter, inter_key = external_pki()
    other_root, _, other_key = external_pki()
    ok = (cert_pem(root), cert_pem(inter), key_pem(inter_key))
    with pytest.raises(CaError, match="not signed by the root"):
        CertificateAuthority.from_pem(TD, cert_pem(other_root), ok[1], ok[2], NOW, rng(1))
    with pytest.raises(CaError, match="does not match"):
        CertificateAuthority.from_pem(TD, ok[0], ok[1], key_pem(other_key), NOW, rng(1))
    with pytest.raises(CaError, match="not valid now"):
        CertificateAuthority.from_pem(TD, *ok, NOW + 400 * DAY, rng(1))
    with pytest.raises(CaError, match="exactly one"):
        CertificateAuthority.from_pem(TD, ok[0] + ok[0], ok[1], ok[2], NOW, rng(1))
    with pytest.raises(CaError, match="private key"):
        CertificateAuthority.from_pem(TD, ok[0], ok[1], b"nope", NOW, rng(1))
    leafy = issue(new_ca(), NOW)  # a leaf is no CA
    with pytest.raises(CaError, match="not a CA"):
        CertificateAuthority.from_pem(TD, ok[0], leafy.cert_pem, ok[2], NOW, rng(1))
    root0, inter0, key0 = external_pki(root_path_len=0)
    with pytest.raises(CaError, match="pathLen"):
        CertificateAuthority.from_pem(
            TD, cert_pem(root0), cert_pem(inter0), key_pem(key0), NOW, rng(1)
        )
