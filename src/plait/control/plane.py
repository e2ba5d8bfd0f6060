"""The control plane's state and operations, one level below the HTTP API.

:class:`ControlPlane` ties together the store (config versions, leases), the registry and
the snapshot cache, and is the only place that changes them: apply and delete config,
take heartbeats, sweep expired leases. Every change that can move what clients see
schedules a *push*: one recompute of every connected node's snapshot. Pushes are
coalesced: at most one per ``min_push_interval`` (a burst of registrations, say 1,000
proxies starting together, costs a handful of recomputes, not one each); the first
change after a quiet period is pushed on the next turn of the event loop.

With a running event loop, a push does not block it: :meth:`ControlPlane.flush` starts
the recompute as a task owned by the plane, which refreshes ``RECOMPUTE_BATCH`` (16)
streams at a time (:meth:`SnapshotCache.recompute_steps
<plait.control.cache.SnapshotCache.recompute_steps>`) and yields to the loop between
batches, so that API calls, new ADS streams and ACKs are served while 1,000 snapshots are
rebuilt. There is never more than one such task. A change made while it runs hands its
inputs to the cache at once (the streams not yet refreshed get them in this run) and marks
the plane dirty; when the task ends it schedules another full recompute (still at most one
per ``min_push_interval``), so no stream stays on inputs older than the newest change.
``await plane.flush_and_wait()`` returns once no recompute is running or due;
``await plane.close()`` cancels the pending push and the running recompute. Without a
running loop (tests, tools) a push is done synchronously, before the call returns.

Lease deadlines use a monotonic ``clock``; versions and leases are stamped in the store
with ``wall`` time (unix seconds).

Given a :class:`~plait.control.ca_plane.CaSetup`, ``plane.ca`` is the service CA's
:class:`~plait.control.ca_plane.CaPlane` (tokens, issuance, rotation; None without one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from plait.control.ca_plane import CaPlane, CaSetup
from plait.control.cache import NACKED, RECOMPUTE_BATCH, STALE, SYNCED, SnapshotCache
from plait.control.guard import Guard, GuardSettings
from plait.control.registry import LeaseRow, Registry
from plait.control.store import Store, StoreConflict
from plait.model.config import ConfigSet
from plait.model.load import apply_text, delete_resource
from plait.xds.inputs import Instance

log = logging.getLogger("plait.control")

KINDS = ("Service", "Route", "Policy")
# a shared (etcd) store: how often a change is recomputed on a newer version that
# another replica committed first before giving up (docs/resilience.md)
CONFLICT_RETRIES = 20


class NotFound(LookupError):
    """The named resource does not exist."""


def resource_key(kind: str, name: str) -> str:
    return f"{kind}/{name}"


def config_keys(cfg: ConfigSet) -> set[str]:
    return {resource_key(r.kind, r.name) for r in cfg.resources()}


def lookup(cfg: ConfigSet, kind: str, name: str) -> Any:
    """The resource ``kind/name`` of ``cfg`` (kind case-insensitive), or raise NotFound."""
    canonical = {k.lower(): k for k in KINDS}.get(kind.lower())
    table: dict[str, Any] | None = None
    if canonical == "Service":
        table = dict(cfg.services)
    elif canonical == "Route":
        table = dict(cfg.routes)
    elif canonical == "Policy":
        table = dict(cfg.policies)
    if table is None:
        raise NotFound(f"there is no resource kind {kind!r}; kinds are {', '.join(KINDS)}")
    if name not in table:
        raise NotFound(f"{canonical}/{name} does not exist (see GET /v1/config)")
    return table[name]


def _report_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("push failed", exc_info=task.exception())


class ControlPlane:
    def __init__(
        self,
        store: Store,
        registry: Registry | None = None,
        cache: SnapshotCache | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        min_push_interval: float = 0.05,
        restart_grace: float = 0.0,
        ca: CaSetup | None = None,
        trust_domain: str | None = None,
        trust_bundle_source: Callable[[], bytes] | None = None,
        guard: GuardSettings | None = None,
        sync_timeout: float | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.wall = wall
        self.min_push_interval = min_push_interval
        self.registry = registry if registry is not None else Registry()
        if registry is None:
            self.registry.load(store.load_leases(), now=clock(), grace=restart_grace)
        _, cfg = store.current()
        self.cache = cache if cache is not None else SnapshotCache(cfg, self.registry.instances())
        # the push guard (docs/resilience.md): the registry keeps the truth of the leases,
        # the guard decides which instances are served; what it starts from is trusted
        self.guard = Guard(
            guard, clock, wall, served=self.registry.instances(), services=cfg.services
        )
        # sync-before-serve: no xDS response until the reloaded nodes have heartbeated
        # (or sync_timeout passed); a store with config but no leases waits the timeout
        self._sync_waiting: set[str] = set()
        self._sync_deadline = float("-inf")
        self._sync_blind = False
        self.syncing = False
        if sync_timeout is not None and sync_timeout > 0:
            self._sync_waiting = set(self.registry.node_ids())
            self._sync_blind = not self._sync_waiting
            if self._sync_waiting or cfg.services:
                self._sync_deadline = clock() + sync_timeout
                self.syncing = True
                self.cache.serving = False
        self._push_handle: asyncio.Handle | None = None
        self._recompute_task: asyncio.Task[None] | None = None  # the running push, if any
        self._last_push = float("-inf")
        self._dirty = False
        self._closed = False
        self.ca = CaPlane(ca, store, self.registry, wall) if ca is not None else None
        # mTLS inputs of translation (docs/mtls.md): the CA's trust domain and bundle,
        # unless given explicitly (tests, an external bundle)
        if trust_bundle_source is None and self.ca is not None:
            trust_bundle_source = self.ca.ca.trust_bundle
        if trust_domain is None and self.ca is not None:
            trust_domain = self.ca.ca.trust_domain
        self._trust_bundle_source = trust_bundle_source
        if trust_domain is not None:
            self.cache.trust_domain = trust_domain
        if trust_bundle_source is not None:
            self.cache.update_inputs(trust_bundle=trust_bundle_source())

    # -- config ------------------------------------------------------------------------

    @property
    def config_version(self) -> int:
        return self.store.current()[0]

    @property
    def config(self) -> ConfigSet:
        return self.store.current()[1]

    def apply(self, filename: str, text: str) -> tuple[int, list[str]]:
        """Upsert the YAML documents of ``text``. Raises ConfigError; nothing changes then."""
        for _ in range(CONFLICT_RETRIES):
            try:
                return self._apply_once(filename, text)
            except StoreConflict as exc:
                log.info("config: %s; recomputing the apply on it", exc)
        return self._apply_once(filename, text)

    def _apply_once(self, filename: str, text: str) -> tuple[int, list[str]]:
        version, current = self.store.current()
        cfg, changed = apply_text(current, text, filename)
        if not changed:
            return version, []
        known = config_keys(current)
        marks = [("~" if key in known else "+") + key for key in changed]
        version = self.store.commit(cfg, f"apply {filename}: {' '.join(marks)}", self.wall())
        log.info("config version %d: apply %s: %s", version, filename, " ".join(marks))
        self._schedule(config=True)
        return version, list(changed)

    def delete(self, kind: str, name: str) -> int:
        """Delete ``kind/name``. Raises NotFound, or ConfigError if others still use it."""
        for _ in range(CONFLICT_RETRIES):
            try:
                return self._delete_once(kind, name)
            except StoreConflict as exc:
                log.info("config: %s; recomputing the delete on it", exc)
        return self._delete_once(kind, name)

    def _delete_once(self, kind: str, name: str) -> int:
        _, current = self.store.current()
        resource = lookup(current, kind, name)
        cfg = delete_resource(current, resource.kind, name)
        key = resource_key(resource.kind, name)
        version = self.store.commit(cfg, f"delete {key}", self.wall())
        log.info("config version %d: delete %s", version, key)
        self._schedule(config=True)
        return version

    # -- registry ----------------------------------------------------------------------

    def heartbeat(self, node_id: str, instances: Sequence[Instance], ttl: float) -> bool:
        before = self.registry.lease_row(node_id)
        changed = self.registry.heartbeat(node_id, list(instances), ttl, self.clock())
        after = self.registry.lease_row(node_id)
        if after is not None and after != before:
            self.store.save_lease(after, self.wall())
        if self.syncing:
            self._sync_waiting.discard(node_id)
            self.check_sync()
        elif after is not None and hasattr(self.store, "renew_lease"):
            self.store.renew_lease(after, self.wall())  # etcd: keep its lease alive
        if changed:
            log.info("registry: node %s now has %d instance(s)", node_id, len(instances))
            self._schedule(instances=True)
        return changed

    def leave(self, node_id: str) -> bool:
        """A proxy shutting down: drop its lease (and its row in the store) at once.
        The change goes through the push guard like any other; True if the view changed."""
        if self.syncing:
            self._sync_waiting.discard(node_id)
            self.check_sync()
        if self.registry.lease_row(node_id) is None:
            return False
        changed = self.registry.remove(node_id)
        self.store.delete_leases([node_id])
        log.info("registry: node %s left (graceful shutdown)", node_id)
        if changed:
            self._schedule(instances=True)
        return changed

    def sweep(self) -> list[str]:
        """Drop expired leases (and their rows in the store); push if instances went away."""
        self.check_sync()
        if getattr(self.store, "expires_leases", False):
            return []  # etcd expires leases itself; store_changed() hears of it
        before = self.registry.instance_count()
        expired = self.registry.expire(self.clock())
        if expired:
            self.store.delete_leases(expired)
            log.info("registry: lease expired for %s", ", ".join(expired))
            if self.registry.instance_count() != before:
                self._schedule(instances=True)
        return expired

    def store_changed(
        self, config: bool, leases: Sequence[LeaseRow] = (), gone: Sequence[str] = ()
    ) -> None:
        """A shared store (etcd) changed under us: another replica committed a config
        version, or a node's lease was written or expired there. Adopt it and push."""
        now = self.clock()
        moved = False
        for row in leases:
            if self.registry.lease_row(row.node_id) != row:
                moved = (
                    self.registry.heartbeat(row.node_id, list(row.instances), row.ttl, now) or moved
                )
        for node_id in gone:
            moved = self.registry.remove(node_id) or moved
        if moved:
            log.info("registry: changed in the store (%d put, %d gone)", len(leases), len(gone))
        if config:
            log.info("config version %d: committed by another replica", self.config_version)
        if config or moved:
            self._schedule(config=config, instances=moved)

    # -- sync-before-serve and the push guard (docs/resilience.md) ----------------------

    def check_sync(self) -> bool:
        """Start serving xDS once every reloaded node has heartbeated or the sync timeout
        has passed. True while still syncing."""
        if not self.syncing:
            return False
        # nothing reloaded but a config (a wiped lease table?): wait the whole timeout
        if (self._sync_waiting or self._sync_blind) and self.clock() < self._sync_deadline:
            return True
        late = sorted(self._sync_waiting)
        self.syncing = False
        self._sync_waiting.clear()
        self.cache.serving = True
        if late:
            log.warning("sync timeout: serving xDS without a heartbeat from %s", ", ".join(late))
        else:
            log.info("registry synced: serving xDS")
        self._schedule(instances=True)
        return False

    def approve_hold(self, hold_id: str) -> None:
        """Apply a held change (raises HoldNotFound)."""
        self.guard.approve(hold_id)
        log.warning("guard: held change %s approved", hold_id)
        self._schedule(instances=True)

    def discard_hold(self, hold_id: str) -> None:
        """Refuse a held change: keep serving what it would remove (raises HoldNotFound)."""
        self.guard.discard(hold_id)
        log.warning("guard: held change %s discarded; its instances stay served", hold_id)
        self._schedule(instances=True)

    def guard_status(self) -> dict[str, Any]:
        return {"syncing": self.syncing, **self.guard.to_dict()}

    # -- trust bundle ------------------------------------------------------------------

    def bundle_changed(self) -> bool:
        """Re-read the trust bundle; if it differs from the one served, push it (and the
        snapshots built with it) to every connected proxy. Cheap when nothing changed:
        call it after every CA rotation step. True if a push was scheduled."""
        if self._trust_bundle_source is None:
            return False
        bundle = self._trust_bundle_source()
        if bundle == self.cache.trust_bundle:
            return False
        self.cache.update_inputs(trust_bundle=bundle)
        log.info("trust bundle changed (%d bytes): pushing", len(bundle))
        self._schedule()
        return True

    # -- pushing -----------------------------------------------------------------------

    def _schedule(self, config: bool = False, instances: bool = False) -> None:
        """Hand the new inputs to the cache now (streams opened from now on see them) and
        schedule the recompute of the open streams (coalesced, see module docstring)."""
        served = None
        if instances or config:
            holds = {h.id for h in self.guard.holds()}
            served = self.guard.propose(
                self.registry.instances(), services=self.config.services if config else None
            )
            for hold in self.guard.holds():
                if hold.id not in holds:
                    log.warning("guard: held change %s: %s", hold.id, hold.reason)
        self.cache.update_inputs(config=self.config if config else None, instances=served)
        self._dirty = True
        if self._push_handle is not None or self.recomputing:
            return  # the push due, or the end of the running one, takes this change along
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._closed:
            return
        delay = max(0.0, self._last_push + self.min_push_interval - self.clock())
        self._push_handle = loop.call_later(delay, self.flush)

    @property
    def recomputing(self) -> bool:
        """True while a (batched) recompute task is running."""
        return self._recompute_task is not None and not self._recompute_task.done()

    def flush(self) -> None:
        """Recompute the open streams' snapshots now, if anything changed since last time.

        Without a running event loop the recompute is done when this returns. With one,
        it is started as a task that yields between batches (module docstring); await
        :meth:`flush_and_wait` to wait for it. While a recompute runs this does nothing:
        its end schedules the next one."""
        if self._push_handle is not None:
            self._push_handle.cancel()
            self._push_handle = None
        if not self._dirty or self.recomputing:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            self._dirty = False
            self._last_push = self.clock()
            woken = self.cache.recompute()
            if woken:
                log.debug("pushed to %d stream(s)", len(woken))
            return
        if self._closed:
            return
        self._dirty = False
        self._last_push = self.clock()
        task = loop.create_task(self._recompute(), name="plait-control-push")
        task.add_done_callback(_report_failure)
        self._recompute_task = task

    async def _recompute(self) -> None:
        """The push task: the cache's recompute steps, yielding to the loop after each."""
        woken = 0
        steps = self.cache.recompute_steps(RECOMPUTE_BATCH)
        try:
            for batch in steps:
                woken += len(batch)
                await asyncio.sleep(0)  # let API calls, new streams and ACKs in
        finally:
            steps.close()
            self._recompute_task = None
        if woken:
            log.debug("pushed to %d stream(s)", woken)
        if self._dirty:  # inputs changed during this run: recompute again
            self._arm(asyncio.get_running_loop())

    async def flush_and_wait(self) -> None:
        """Push now, and return once no recompute is running or due: every open stream's
        snapshot is then built from the newest inputs (and woken if it has news)."""
        while (self._dirty or self._recompute_task is not None) and not self._closed:
            self.flush()
            task = self._recompute_task
            if task is not None:
                await asyncio.wait({task})
                if self._recompute_task is task:  # cancelled before it ever ran
                    self._recompute_task = None

    async def close(self) -> None:
        """Stop pushing: cancel the push due and the running recompute (and wait for it)."""
        self._closed = True
        if self._push_handle is not None:
            self._push_handle.cancel()
            self._push_handle = None
        task = self._recompute_task
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
            self._recompute_task = None

    # -- views -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        cfg = self.config
        instances = self.registry.instances()
        served = self.guard.served()
        nodes = self.cache.status_rows()
        services = []
        for name in sorted(cfg.services):
            mine = [i for i in instances if i.service == name]
            route = cfg.route_for(name)
            policy = cfg.policy_for(name)
            services.append(
                {
                    "name": name,
                    "protocol": cfg.services[name].spec.protocol,
                    "instances": len(mine),
                    "healthy": sum(1 for i in mine if i.healthy),
                    "served_healthy": sum(1 for i in served if i.service == name and i.healthy),
                    "route": route.name if route is not None else None,
                    "mtls": cfg.services[name].spec.mtls,
                    "policy": policy.name if policy is not None else None,
                }
            )
        return {
            "config_version": self.config_version,
            "services": services,
            "instances": {
                "total": len(instances),
                "healthy": sum(1 for i in instances if i.healthy),
            },
            "nodes": {
                "total": len(nodes),
                "connected": sum(1 for n in nodes if n["connected"]),
                **{s: sum(1 for n in nodes if n["status"] == s) for s in (SYNCED, STALE, NACKED)},
            },
            "syncing": self.syncing,
            "guard": {
                "held": len(self.guard.holds()),
                "holds": [h.to_dict(self.clock()) for h in self.guard.holds()],
            },
        }
