"""Registry: leases, expiry, change detection, reload after a restart."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.control.registry import LeaseRow, Registry, instance_sort_key
from plait.xds.inputs import Instance


def inst(
    service: str = "orders",
    node: str = "a",
    port: int = 4000,
    labels: dict[str, str] | None = None,
    healthy: bool = True,
) -> Instance:
    return Instance(service, node, "127.0.0.1", port, dict(labels or {}), healthy)


def test_heartbeat_registers_and_renews() -> None:
    reg = Registry()
    assert reg.heartbeat("a", [inst()], ttl=10, now=0) is True
    assert reg.instances() == [inst()]
    # Same set again: the lease is renewed but nothing a client sees changed.
    assert reg.heartbeat("a", [inst()], ttl=10, now=5) is False
    assert reg.expire(now=14) == []
    assert reg.instances() == [inst()]
    assert reg.expire(now=15) == ["a"]
    assert reg.instances() == []


def test_heartbeat_replaces_the_node_set() -> None:
    reg = Registry()
    reg.heartbeat("a", [inst(port=1), inst(port=2)], ttl=10, now=0)
    assert reg.heartbeat("a", [inst(port=2)], ttl=10, now=1) is True
    assert reg.instances() == [inst(port=2)]


def test_health_and_label_changes_are_changes() -> None:
    reg = Registry()
    reg.heartbeat("a", [inst()], ttl=10, now=0)
    assert reg.heartbeat("a", [inst(healthy=False)], ttl=10, now=1) is True
    assert reg.instances()[0].healthy is False
    assert reg.heartbeat("a", [inst(healthy=False, labels={"v": "2"})], ttl=10, now=2) is True
    assert reg.heartbeat("a", [inst(healthy=False, labels={"v": "2"})], ttl=10, now=3) is False


def test_empty_heartbeat_of_unknown_node_is_no_change() -> None:
    reg = Registry()
    assert reg.heartbeat("a", [], ttl=10, now=0) is False
    assert reg.node_ids() == ["a"]


def test_instances_take_the_reporting_node_id_and_duplicates_collapse() -> None:
    reg = Registry()
    reg.heartbeat("a", [inst(node="other"), inst(node="a", healthy=False)], ttl=10, now=0)
    assert reg.instances() == [inst(node="a", healthy=False)]


def test_instances_are_sorted() -> None:
    reg = Registry()
    reg.heartbeat("b", [inst("zeta", "b"), inst("alpha", "b")], ttl=10, now=0)
    reg.heartbeat("a", [inst("zeta", "a")], ttl=10, now=0)
    got = reg.instances()
    assert got == sorted(got, key=instance_sort_key)
    assert [(i.service, i.node_id) for i in got] == [("alpha", "b"), ("zeta", "a"), ("zeta", "b")]


def test_snapshot_rows_show_expires_in() -> None:
    reg = Registry()
    reg.heartbeat("a", [inst(labels={"version": "v1"})], ttl=10, now=100)
    assert reg.snapshot_rows(now=103) == [
        {
            "service": "orders",
            "node_id": "a",
            "address": "127.0.0.1",
            "port": 4000,
            "labels": {"version": "v1"},
            "healthy": True,
            "expires_in": 7.0,
        }
    ]


def test_remove_drops_a_node_at_once() -> None:
    reg = Registry()
    reg.heartbeat("a", [inst()], ttl=10, now=0)
    assert reg.remove("a") is True
    assert reg.remove("a") is False
    assert reg.instances() == []


def test_reload_gives_leases_a_fresh_deadline() -> None:
    before = Registry()
    before.heartbeat("a", [inst(node="a")], ttl=10, now=0)
    before.heartbeat("b", [inst(node="b")], ttl=30, now=0)
    rows = before.lease_rows()
    assert rows == [
        LeaseRow("a", 10, (inst(node="a"),)),
        LeaseRow("b", 30, (inst(node="b"),)),
    ]
    # The control plane restarts much later (by its own clock): nothing expires at once.
    after = Registry()
    after.load(rows, now=5000, grace=2)
    assert after.expire(now=5011) == []
    assert after.expire(now=5012) == ["a"]
    assert [i.node_id for i in after.instances()] == ["b"]
    assert after.expire(now=5032) == ["b"]


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Registry().heartbeat("a", [], ttl=0, now=0)


# -- property: the served view is always exactly the live nodes' latest sets ------------

NODES = ["a", "b", "c"]
instance_sets = st.lists(
    st.builds(
        inst,
        service=st.sampled_from(["orders", "users"]),
        port=st.integers(1, 4),
        labels=st.dictionaries(st.sampled_from(["version"]), st.sampled_from(["v1", "v2"])),
        healthy=st.booleans(),
    ),
    max_size=4,
)
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("beat"),
            st.sampled_from(NODES),
            instance_sets,
            st.integers(1, 5),
            st.integers(0, 3),
        ),
        st.tuples(st.just("expire"), st.integers(0, 3)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_view_is_the_unexpired_latest_sets(ops: list[tuple[object, ...]]) -> None:
    reg = Registry()
    model: dict[str, tuple[list[Instance], float]] = {}  # node -> (latest set, deadline)
    now = 0.0

    def view() -> list[Instance]:
        out = [
            Instance(i.service, node, i.address, i.port, i.labels, i.healthy)
            for node, (insts, _) in model.items()
            for i in {(i.service, i.address, i.port): i for i in insts}.values()
        ]
        return sorted(out, key=instance_sort_key)

    for op in ops:
        if op[0] == "beat":
            _, node, insts, ttl, advance = op
            assert isinstance(node, str) and isinstance(insts, list)
            assert isinstance(ttl, int) and isinstance(advance, int)
            now += advance
            before = view()
            model[node] = (insts, now + ttl)
            changed = reg.heartbeat(node, insts, float(ttl), now)
            assert changed == (view() != before)
        else:
            _, advance = op
            assert isinstance(advance, int)
            now += advance
            expired = sorted(n for n, (_, deadline) in model.items() if deadline <= now)
            for n in expired:
                del model[n]
            assert reg.expire(now) == expired
        assert reg.instances() == view()
