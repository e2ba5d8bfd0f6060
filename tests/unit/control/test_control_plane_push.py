"""ControlPlane pushes with a running event loop: the recompute runs as one task, in
batches, yielding to the loop between them; a change made meanwhile is recomputed again;
``close()`` stops it cleanly. Without a loop a push is synchronous (see also
test_control_trust_bundle.py)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from plait.control import plane as plane_module
from plait.control.cache import RECOMPUTE_BATCH, SnapshotCache, Watch
from plait.control.plane import ControlPlane
from plait.control.store import Store
from plait.model.config import ConfigSet
from plait.xds.inputs import Instance, NodeInfo
from plait.xds.snapshot import Snapshot
from plait.xds.types import CLUSTER

NODES = 600


def service(port: int) -> str:
    return f"""---
apiVersion: plait/v1
kind: Service
metadata:
  name: orders
spec:
  protocol: http
  ports:
    - name: http
      port: {port}
"""


class Translator:
    """Every node gets one cluster whose timeout is the translator's generation."""

    def __init__(self, rig: Rig, gen: int) -> None:
        self.rig = rig
        self.gen = gen

    def for_node(self, node: NodeInfo) -> Snapshot:
        self.rig.refreshed += 1
        c = cluster_pb2.Cluster(name="c")
        c.connect_timeout.seconds = self.gen
        return Snapshot(resources={CLUSTER: {"c": c}})


class Rig:
    def __init__(self, path: Path, nodes: int = NODES) -> None:
        self.gen = 0
        self.refreshed = 0
        self.woken: set[str] = set()
        cache = SnapshotCache(ConfigSet(), [], translator_factory=self._factory)
        self.plane = ControlPlane(Store(str(path)), cache=cache, min_push_interval=0.01)
        self.watches: list[Watch] = []
        for i in range(nodes):
            node_id = f"n{i}"
            w = cache.open_watch(
                NodeInfo(node_id, plait_proxy=True), lambda n=node_id: self.woken.add(n)
            )
            cache.on_request(w, CLUSTER, "", "", [])
            self.watches.append(w)
        self.port = 80

    def _factory(self, cfg: ConfigSet, instances: Sequence[Instance]) -> Translator:
        self.gen += 1
        return Translator(self, self.gen)

    def change(self) -> None:
        self.port += 1
        self.plane.apply("svc.yaml", service(self.port))

    def gens(self) -> set[int]:
        out = set()
        for w in self.watches:
            assert isinstance(w.snapshot, Snapshot)
            out.add(int(w.snapshot.items(CLUSTER)["c"].connect_timeout.seconds))
        return out


async def until(cond: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_without_a_loop_a_push_is_done_on_return(tmp_path: Path) -> None:
    rig = Rig(tmp_path, nodes=3 * RECOMPUTE_BATCH)
    rig.change()
    assert rig.gens() == {rig.gen} and not rig.plane.recomputing
    assert rig.woken == {w.node.node_id for w in rig.watches}


def test_the_loop_runs_between_batches(tmp_path: Path) -> None:
    rig = Rig(tmp_path)

    async def scenario() -> list[int]:
        seen: list[int] = []
        before = rig.refreshed

        async def observer() -> None:
            while True:
                seen.append(rig.refreshed - before)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(observer())
        rig.change()  # the push is due on the next turn of the loop
        await until(lambda: rig.refreshed - before >= NODES and not rig.plane.recomputing)
        watcher.cancel()
        await asyncio.wait({watcher})
        return seen

    seen = asyncio.run(scenario())
    # another coroutine ran while the recompute was half done, once per batch
    mid = sorted({n for n in seen if 0 < n < NODES})
    assert mid == list(range(RECOMPUTE_BATCH, NODES, RECOMPUTE_BATCH))
    assert rig.gens() == {rig.gen}
    assert rig.woken == {w.node.node_id for w in rig.watches}


def test_a_change_during_a_recompute_is_recomputed_again(tmp_path: Path) -> None:
    rig = Rig(tmp_path)

    async def scenario() -> None:
        rig.change()
        await until(lambda: rig.plane.recomputing and rig.refreshed >= 2 * NODES // 3)
        rig.change()  # a newer config while a third of the streams are still to do
        assert rig.plane.recomputing
        # no flush_and_wait(): the end of the running push must schedule the next one
        await until(lambda: rig.gens() == {rig.gen})
        await until(lambda: not rig.plane.recomputing)

    asyncio.run(scenario())
    assert rig.gens() == {rig.gen}


def test_never_two_recomputes_at_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    cache = rig.plane.cache
    running = [0]
    peak = [0]
    runs = [0]
    steps = cache.recompute_steps

    def counted(batch: int = RECOMPUTE_BATCH) -> Iterator[list[Watch]]:
        running[0] += 1
        runs[0] += 1
        peak[0] = max(peak[0], running[0])
        try:
            yield from steps(batch)
        finally:
            running[0] -= 1

    cache.recompute_steps = counted  # type: ignore[method-assign]

    async def scenario() -> None:
        rig.change()
        for _ in range(20):  # changes, and impatient flushes, during the recompute
            await asyncio.sleep(0)
            rig.change()
            rig.plane.flush()
        await rig.plane.flush_and_wait()
        assert not rig.plane.recomputing

    asyncio.run(scenario())
    assert peak[0] == 1
    assert 2 <= runs[0] <= 5  # coalesced: the 20 changes did not cost 20 recomputes
    assert rig.gens() == {rig.gen}


def test_flush_and_wait_returns_when_every_stream_is_up_to_date(tmp_path: Path) -> None:
    rig = Rig(tmp_path)

    async def scenario() -> None:
        rig.change()
        await rig.plane.flush_and_wait()
        assert rig.gens() == {rig.gen} and not rig.plane.recomputing
        rig.change()
        await asyncio.sleep(0)
        rig.change()
        await rig.plane.flush_and_wait()
        assert rig.gens() == {rig.gen} and not rig.plane.recomputing

    asyncio.run(scenario())


def test_close_during_a_recompute_is_clean(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path)
    caplog.set_level(logging.WARNING)

    async def scenario() -> None:
        rig.change()
        await until(lambda: rig.plane.recomputing and rig.refreshed > NODES // 3)
        task = rig.plane._recompute_task
        assert task is not None
        await rig.plane.close()
        assert task.cancelled() and not rig.plane.recomputing
        stopped = rig.refreshed
        rig.change()  # after close: no new push
        rig.plane.flush()
        await asyncio.sleep(0.05)
        assert rig.refreshed == stopped
        assert not rig.plane.recomputing
        await rig.plane.flush_and_wait()  # does not hang after close
        await rig.plane.close()  # twice is fine

    asyncio.run(scenario())
    gc.collect()
    assert not [r for r in caplog.records if r.name in ("asyncio", plane_module.log.name)]


def test_close_before_the_push_is_due(tmp_path: Path) -> None:
    rig = Rig(tmp_path, nodes=10)

    async def scenario() -> None:
        rig.change()
        rig.plane.flush()  # the task is created but has not run
        await rig.plane.close()
        assert not rig.plane.recomputing

    asyncio.run(scenario())
