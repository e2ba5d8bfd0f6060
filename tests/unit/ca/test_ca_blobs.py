"""The CA's saved form as blobs (what the etcd store keeps): round trip, adopt, merge."""

from __future__ import annotations

import pytest
from ca_fixtures import DAY, NOW, make_csr, new_ca, rng

from plait.ca.authority import CaError, CertificateAuthority


def reload(ca: CertificateAuthority) -> CertificateAuthority:
    state, blobs = ca.to_blobs()
    return CertificateAuthority.from_blobs(state, blobs, NOW, rng(2), "etcd /p/ca")


def test_blobs_round_trip_through_a_rotation() -> None:
    ca = new_ca()
    _, blobs = ca.to_blobs()
    assert set(blobs) == {
        "gen-1/root.crt",
        "gen-1/root.key",
        "gen-1/intermediate.crt",
        "gen-1/intermediate.key",
    }
    assert reload(ca).trust_bundle() == ca.trust_bundle()
    ca.begin_rotation(NOW)
    ca.switch_issuer()
    copy = reload(ca)
    assert copy.rotation_status() == ca.rotation_status()
    assert ca.retire_old(NOW + DAY)
    names = ("root.crt", "root.key", "intermediate.crt", "intermediate.key")
    assert set(ca.to_blobs()[1]) == {f"gen-2/{n}" for n in names}


def test_missing_or_bad_blobs_are_refused() -> None:
    state, blobs = new_ca().to_blobs()
    del blobs["gen-1/intermediate.key"]
    with pytest.raises(CaError, match=r"etcd /p/ca/gen-1/intermediate\.key: missing"):
        CertificateAuthority.from_blobs(state, blobs, NOW, rng(2), "etcd /p/ca")
    with pytest.raises(CaError, match="cannot be loaded"):
        CertificateAuthority.from_blobs(b"{}", blobs, NOW, rng(2), "etcd /p/ca")


def test_adopt_keeps_the_object_and_note_issued_merges() -> None:
    ca = new_ca()
    other = reload(ca)
    other.begin_rotation(NOW)
    bundle = ca.trust_bundle  # others hold bound methods of the CA object
    ca.adopt(other)
    assert bundle() == other.trust_bundle() and ca.rotation == "distributing"
    issued = other.sign_csr(make_csr(), "orders", NOW, DAY)
    assert ca.retire_after() is None
    ca.note_issued(issued.generation, issued.not_after)
    assert ca.retire_after() == issued.not_after
    ca.note_issued(99, issued.not_after)  # a generation this copy no longer has: ignored
    with pytest.raises(CaError):
        ca.adopt(new_ca(td="other.example"))
