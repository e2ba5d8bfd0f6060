"""Snapshot cache: the recompute in steps (``recompute_steps``), as the control plane runs
it between turns of its event loop, gives what the one-shot ``recompute`` gives; inputs
replaced, and watches opened or closed, between two steps."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.control.cache import RECOMPUTE_BATCH, SnapshotCache, Watch
from plait.model.config import ConfigSet
from plait.xds.inputs import Instance, NodeInfo
from plait.xds.snapshot import Snapshot
from plait.xds.types import CLUSTER, ENDPOINT, SOTW_PARTIAL


def cluster(name: str, timeout_s: int) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name)
    c.connect_timeout.seconds = timeout_s
    return c


class Translator:
    def __init__(self, values: dict[str, int], gen: int) -> None:
        self.values = dict(values)
        self.gen = gen

    def for_node(self, node: NodeInfo) -> Snapshot:
        value = self.values.get(node.node_id, 0)
        return Snapshot(resources={CLUSTER: {"c": cluster("c", value)}, ENDPOINT: {}})


class World:
    """A cache whose nodes each see one cluster; ``values`` (node id -> its timeout) is
    what the test changes, ``gen`` counts the translators made (one per input change)."""

    def __init__(self, nodes: int, subscribed: Sequence[bool] | None = None) -> None:
        self.values = {f"n{i}": 1 for i in range(nodes)}
        self.gen = 0
        self.wakes: list[str] = []
        self.cache = SnapshotCache(ConfigSet(), [], translator_factory=self._factory)
        self.watches: list[Watch] = []
        for i in range(nodes):
            w = self.open(f"n{i}")
            if subscribed is None or subscribed[i]:
                self.cache.on_request(w, CLUSTER, "", "", [])
                (sent,) = self.cache.pending(w)
                self.cache.on_request(w, CLUSTER, sent.version, sent.nonce, [])
        self.wakes.clear()

    def _factory(self, cfg: ConfigSet, instances: Sequence[Instance]) -> Translator:
        self.gen += 1
        return Translator(self.values, self.gen)

    def open(self, node_id: str) -> Watch:
        w = self.cache.open_watch(
            NodeInfo(node_id, plait_proxy=True), lambda: self.wakes.append(node_id)
        )
        self.watches.append(w)
        return w

    def change(self, nodes: Sequence[str], value: int) -> None:
        for node in nodes:
            self.values[node] = value
        self.cache.update_inputs(config=ConfigSet())


def value_of(w: Watch) -> int:
    assert isinstance(w.snapshot, Snapshot)
    return int(w.snapshot.items(CLUSTER)["c"].connect_timeout.seconds)


def state(world: World) -> list[tuple[str, int, str | None]]:
    return [(w.node.node_id, value_of(w), w.desired_version(CLUSTER)[0]) for w in world.watches]


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    nodes=st.integers(min_value=0, max_value=30),
    batch=st.integers(min_value=1, max_value=12),
)
def test_steps_give_the_snapshots_and_wakes_of_one_recompute(
    data: st.DataObject, nodes: int, batch: int
) -> None:
    subscribed = data.draw(st.lists(st.booleans(), min_size=nodes, max_size=nodes))
    moved = data.draw(st.sets(st.integers(min_value=0, max_value=max(0, nodes - 1))))
    closed = data.draw(st.sets(st.integers(min_value=0, max_value=max(0, nodes - 1))))
    one, stepped = World(nodes, subscribed), World(nodes, subscribed)
    for world in (one, stepped):
        for i in sorted(closed):
            if i < nodes:
                world.cache.close_watch(world.watches[i])
        world.change([f"n{i}" for i in moved if i < nodes], 7)

    woken_one = [w.node.node_id for w in one.cache.recompute()]
    steps = list(stepped.cache.recompute_steps(batch))
    woken_stepped = [w.node.node_id for step in steps for w in step]

    assert woken_stepped == woken_one
    assert stepped.wakes == one.wakes == woken_one
    assert state(stepped) == state(one)
    live = nodes - len({i for i in closed if i < nodes})
    assert len(steps) == -(-live // batch)  # ceil: every step refreshes a full batch
    assert all(len(step) <= batch for step in steps)


def test_each_step_refreshes_one_batch() -> None:
    world = World(2 * RECOMPUTE_BATCH + 1)
    world.change(list(world.values), 5)
    steps = world.cache.recompute_steps()
    sizes = []
    for step in steps:
        sizes.append(len(step))
        # the watches not reached yet still hold the old snapshot
        assert sum(value_of(w) == 5 for w in world.watches) == sum(sizes)
    assert sizes == [RECOMPUTE_BATCH, RECOMPUTE_BATCH, 1]
    with pytest.raises(ValueError):
        next(world.cache.recompute_steps(0))


def test_inputs_replaced_between_steps_reach_the_rest_of_the_run() -> None:
    world = World(10)
    world.change(list(world.values), 2)
    steps = world.cache.recompute_steps(4)
    first = next(steps)
    assert [value_of(w) for w in first] == [2, 2, 2, 2]
    world.change(list(world.values), 3)  # a newer change, while the run goes on
    rest = [w for step in steps for w in step]
    assert [value_of(w) for w in rest] == [3] * 6
    assert [value_of(w) for w in world.watches] == [2] * 4 + [3] * 6
    assert world.gen == 3  # one translator per input change, not one per step
    # the follow-up recompute the caller owes brings the first batch up to date
    world.cache.recompute()
    assert [value_of(w) for w in world.watches] == [3] * 10


def test_watches_opened_or_closed_during_a_run() -> None:
    world = World(6)
    world.change([*world.values, "late"], 2)
    steps = world.cache.recompute_steps(2)
    next(steps)
    gone = world.watches[4]
    world.cache.close_watch(gone)
    late = world.open("late")  # gets its snapshot (newest inputs) when it opens
    world.cache.on_request(late, CLUSTER, "", "", [])
    woken = [w.node.node_id for step in steps for w in step]
    assert woken == ["n2", "n3", "n5"]  # not the closed one, not the one opened meanwhile
    assert value_of(gone) == 1 and value_of(late) == 2
    assert "n4" not in world.wakes and "late" not in world.wakes


def test_digests_stay_right_across_steps_and_runs() -> None:
    """pending() between steps memoizes digests; a run started later (or the rest of this
    one, on newer inputs) must not be served the digests of other resources."""
    values = {"a": 1, "b": 1}

    class T:
        def for_node(self, node: NodeInfo) -> Snapshot:
            n = values[node.node_id]
            return Snapshot(resources={ENDPOINT: {"e": cluster("e", n)}})

    cache = SnapshotCache(ConfigSet(), [], translator_factory=lambda c, i: T())
    watches = []
    for node in ("a", "b"):
        w = cache.open_watch(
            NodeInfo(node, plait_proxy=True, client_features=frozenset({SOTW_PARTIAL})),
            lambda: None,
        )
        cache.on_request(w, ENDPOINT, "", "", ["e"])
        (sent,) = cache.pending(w)
        cache.on_request(w, ENDPOINT, sent.version, sent.nonce, ["e"])
        watches.append(w)
    values.update(a=2, b=2)
    cache.update_inputs(config=ConfigSet())
    steps = cache.recompute_steps(1)
    next(steps)
    (pa,) = cache.pending(watches[0])  # digests memoized mid-run
    assert [m.connect_timeout.seconds for m in pa.resources] == [2]
    cache.on_request(watches[0], ENDPOINT, pa.version, pa.nonce, ["e"])
    values.update(b=3)
    cache.update_inputs(config=ConfigSet())
    list(cache.recompute_steps(1))  # a new run while the old one is not finished
    list(steps)
    assert cache.pending(watches[0]) == []  # acked, and still what it holds
    (pb,) = cache.pending(watches[1])
    assert [m.connect_timeout.seconds for m in pb.resources] == [3]
    assert pb.version == watches[1].snapshot.version(ENDPOINT)
