"""The last-known-good file: round trip and every way it can be damaged (docs/resilience.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import any_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plait.proxy.lkg import (
    LkgError,
    decode_file,
    encode_file,
    load_lkg,
    make_payload,
    write_atomic,
)
from plait.proxy.runtime import Endpoint
from plait.xds.types import CLUSTER, ENDPOINT


def packed(msg: object) -> bytes:
    a = any_pb2.Any()
    a.Pack(msg)  # type: ignore[arg-type]
    return a.SerializeToString()


def resources() -> dict[str, list[bytes]]:
    cluster = cluster_pb2.Cluster(name="outbound|orders", type=cluster_pb2.Cluster.EDS)
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="outbound|orders")
    lb = cla.endpoints.add().lb_endpoints.add()
    lb.endpoint.address.socket_address.address = "127.0.0.1"
    lb.endpoint.address.socket_address.port_value = 9001
    return {CLUSTER: [packed(cluster)], ENDPOINT: [packed(cla)]}


VERSIONS = {CLUSTER: "c1", ENDPOINT: "e1"}


def good_file() -> bytes:
    payload = make_payload("host-a", 1_700_000_000.0, VERSIONS, resources(), None)
    return encode_file(payload)


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "lkg.dat"
    write_atomic(path, data)
    return path


def test_round_trip(tmp_path: Path) -> None:
    config, meta = load_lkg(write(tmp_path, good_file()))
    assert config.versions == VERSIONS
    assert config.endpoints == {"outbound|orders": (Endpoint("127.0.0.1", 9001),)}
    assert meta.node_id == "host-a"
    assert meta.saved_at_iso == "2023-11-14T22:13:20Z"
    assert meta.version == "CDS=c1,EDS=e1"
    assert meta.resources == resources()
    assert not list(tmp_path.glob(".lkg.dat.*"))  # no temp file left


def test_missing_file_is_not_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_lkg(tmp_path / "lkg.dat")


def flip(data: bytes, index: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[index] ^= 1 << bit
    return bytes(b)


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda d: flip(d, len(d) - 5), "checksum mismatch"),
        (lambda d: d[:-10], "truncated"),
        (lambda d: d[:5], "truncated"),
        (lambda d: b"GARBAGE" + d[7:], "not a plait last-known-good file"),
        (lambda d: b"", "empty file"),
        (
            lambda d: d.replace(d[d.index(b"sha256=") + 7 : d.index(b"sha256=") + 19], b"0" * 12),
            "checksum mismatch",
        ),
        (lambda d: d + b"x", "trailing data"),
        (lambda d: b"PLAIT-LKG 7" + d[11:], "format 7 is not supported"),
    ],
)
def test_corruption_is_a_clear_error(tmp_path: Path, mutate: object, words: str) -> None:
    path = write(tmp_path, mutate(good_file()))  # type: ignore[operator]
    with pytest.raises(LkgError) as info:
        load_lkg(path)
    assert str(info.value).startswith(f"{path}: ")
    assert words in str(info.value)


def test_valid_envelope_with_a_refused_resource(tmp_path: Path) -> None:
    bad = cluster_pb2.Cluster(name="x", type=cluster_pb2.Cluster.EDS)
    bad.lb_policy = cluster_pb2.Cluster.RING_HASH
    payload = make_payload("host-a", 1.0, {CLUSTER: "c"}, {CLUSTER: [packed(bad)]}, None)
    path = write(tmp_path, encode_file(payload))
    with pytest.raises(LkgError, match="stored CDS refused: Cluster 'x'"):
        load_lkg(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_damage_never_loads(data: st.DataObject) -> None:
    good = good_file()
    kind = data.draw(st.sampled_from(["truncate", "flip"]))
    if kind == "truncate":
        damaged = good[: data.draw(st.integers(0, len(good) - 1))]
    else:
        index = data.draw(st.integers(0, len(good) - 1))
        damaged = flip(good, index, data.draw(st.integers(0, 7)))
    with pytest.raises(LkgError):
        decode_file(damaged, "lkg.dat")
