"""The etcd store's pure parts: key layout, URLs, the commit transaction, lease values."""

from __future__ import annotations

import base64
import json

import pytest

from plait.control.etcd import parse_endpoints, prefix_end
from plait.control.registry import LeaseRow
from plait.control.store_etcd import (
    Keys,
    commit_txn,
    lease_from_value,
    lease_value,
    parse_store_url,
)
from plait.xds.inputs import Instance


def _d(text: str) -> str:
    return base64.b64decode(text).decode()


def test_key_layout_sorts_versions_numerically() -> None:
    keys = Keys("/plait/")
    assert keys.version == "/plait/config/version"
    assert keys.log(7) == "/plait/config/log/00000000000000000007"
    assert keys.log(10) > keys.log(9)
    assert keys.lease("host-a") == "/plait/leases/host-a"
    assert keys.node_of("/plait/leases/host-a") == "host-a"
    assert keys.node_of("/plait/config/version") is None


def test_prefix_end() -> None:
    assert prefix_end("/plait/leases/") == "/plait/leases0"
    assert prefix_end("/a/") == "/a0"


def test_store_url_and_endpoints() -> None:
    assert parse_store_url("etcd://127.0.0.1:2379,127.0.0.1:22379") == (
        "127.0.0.1:2379,127.0.0.1:22379",
        "/plait",
    )
    assert parse_store_url("etcd://h:1/team/a/") == ("h:1", "/team/a")
    assert parse_endpoints("127.0.0.1:2379, http://h:5 ,etcd://x") == [
        ("127.0.0.1", 2379),
        ("h", 5),
        ("x", 2379),
    ]
    with pytest.raises(ValueError):
        parse_store_url("http://h:1")
    with pytest.raises(ValueError):
        parse_endpoints(" , ")
    with pytest.raises(ValueError, match="TLS"):
        parse_endpoints("https://h:1")


def test_commit_txn_compares_the_version_read() -> None:
    keys = Keys()
    compare, success, failure = commit_txn(keys, 4, 12.5, "apply x", [{"kind": "Service"}])
    assert compare == [
        {
            "key": compare[0]["key"],
            "target": "VALUE",
            "result": "EQUAL",
            "value": compare[0]["value"],
        }
    ]
    assert _d(compare[0]["key"]) == "/plait/config/version" and _d(compare[0]["value"]) == "4"
    puts = [op["request_put"] for op in success]
    assert [_d(p["key"]) for p in puts] == [keys.version, keys.log(5), keys.docs(5)]
    assert _d(puts[0]["value"]) == "5"
    assert json.loads(_d(puts[1]["value"])) == {
        "version": 5,
        "created_at": 12.5,
        "summary": "apply x",
    }
    assert _d(failure[0]["request_range"]["key"]) == keys.version


def test_first_commit_requires_no_version_key() -> None:
    compare, _, _ = commit_txn(Keys(), 0, 0.0, "first", [])
    assert compare[0]["target"] == "CREATE" and compare[0]["create_revision"] == "0"


def test_lease_value_round_trip() -> None:
    inst = Instance(
        service="orders", node_id="n", address="127.0.0.1", port=9, labels={"v": "1"}, healthy=True
    )
    row = LeaseRow("n", 10.0, (inst,))
    assert lease_from_value("n", lease_value(row, 1.0).encode()) == row
