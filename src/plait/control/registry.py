"""The registry: which service instances are alive, as leases renewed by heartbeats.

Theory of operation. Each plait proxy heartbeats for its node every second or so with the
whole set of instances it fronts (one per local service) and a lease ttl. A heartbeat
*replaces* that node's set and pushes its deadline to ``now + ttl``; a node whose deadline
passes is dropped by the next :meth:`Registry.expire` sweep, with all its instances.
The served view is the union of the live nodes' latest sets; :meth:`Registry.heartbeat`
says whether that view changed (membership, address, labels or health), so the control
plane recomputes xDS snapshots only when something a client can see moved.

Rules:
- pure: no clock, no I/O; every time is a float ``now`` passed in (any monotonic clock);
- a lease is live until :meth:`expire` drops it (deadline ``<= now``), so between sweeps
  :meth:`instances` still includes a lease that has just run out;
- an instance always carries the node id of the node that reported it;
- a node reports each instance key (service, address, port) at most once; a later
  duplicate in the same heartbeat wins;
- leases reloaded after a control-plane restart (:meth:`load`) get a fresh deadline of
  ``now + ttl + grace``: the proxies were heartbeating while we were down, so they are
  given a full ttl to reach us again instead of all expiring at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from plait.xds.inputs import Instance


@dataclass(frozen=True)
class LeaseRow:
    """A node's lease as it is persisted: what a restart needs to rebuild the registry."""

    node_id: str
    ttl: float
    instances: tuple[Instance, ...]


@dataclass
class _Lease:
    ttl: float
    deadline: float
    instances: tuple[Instance, ...]


SortKey = tuple[str, str, str, int, tuple[tuple[str, str], ...], bool]


def instance_sort_key(inst: Instance) -> SortKey:
    return (
        inst.service,
        inst.node_id,
        inst.address,
        inst.port,
        tuple(sorted(inst.labels.items())),
        inst.healthy,
    )


def _normalize(node_id: str, instances: Iterable[Instance]) -> tuple[Instance, ...]:
    by_key: dict[tuple[str, str, int], Instance] = {}
    for inst in instances:
        if inst.node_id != node_id:
            inst = dataclasses.replace(inst, node_id=node_id)
        by_key[(inst.service, inst.address, inst.port)] = inst
    return tuple(sorted(by_key.values(), key=instance_sort_key))


def instance_to_dict(inst: Instance) -> dict[str, Any]:
    return {
        "service": inst.service,
        "node_id": inst.node_id,
        "address": inst.address,
        "port": inst.port,
        "labels": dict(inst.labels),
        "healthy": inst.healthy,
    }


class Registry:
    """Per-node leases of service instances. See the module docstring for the rules."""

    def __init__(self) -> None:
        self._leases: dict[str, _Lease] = {}

    def heartbeat(self, node_id: str, instances: list[Instance], ttl: float, now: float) -> bool:
        """Replace ``node_id``'s instances and renew its lease until ``now + ttl``.

        Returns True if the served view changed.
        """
        if ttl <= 0:
            raise ValueError("ttl must be greater than zero")
        new = _normalize(node_id, instances)
        old = self._leases.get(node_id)
        self._leases[node_id] = _Lease(ttl=ttl, deadline=now + ttl, instances=new)
        return (old.instances if old is not None else ()) != new

    def expire(self, now: float) -> list[str]:
        """Drop every lease whose deadline is at or before ``now``; return their node ids."""
        gone = sorted(n for n, lease in self._leases.items() if lease.deadline <= now)
        for node_id in gone:
            del self._leases[node_id]
        return gone

    def remove(self, node_id: str) -> bool:
        """Drop a node's lease at once (a proxy shutting down). True if the view changed."""
        lease = self._leases.pop(node_id, None)
        return lease is not None and bool(lease.instances)

    def instances(self) -> list[Instance]:
        """Every instance of every live lease, sorted by service, node, address, port."""
        out = [inst for lease in self._leases.values() for inst in lease.instances]
        out.sort(key=instance_sort_key)
        return out

    def instance_count(self) -> int:
        """``len(instances())``, without building and sorting the list."""
        return sum(len(lease.instances) for lease in self._leases.values())

    def node_ids(self) -> list[str]:
        return sorted(self._leases)

    def lease_row(self, node_id: str) -> LeaseRow | None:
        lease = self._leases.get(node_id)
        if lease is None:
            return None
        return LeaseRow(node_id=node_id, ttl=lease.ttl, instances=lease.instances)

    def lease_rows(self) -> list[LeaseRow]:
        return [
            LeaseRow(node_id=n, ttl=lease.ttl, instances=lease.instances)
            for n, lease in sorted(self._leases.items())
        ]

    def snapshot_rows(self, now: float) -> list[dict[str, Any]]:
        """Rows for ``GET /v1/registry``: each instance with its lease's ``expires_in``."""
        rows: list[dict[str, Any]] = []
        for inst in self.instances():
            row = instance_to_dict(inst)
            row["expires_in"] = round(max(0.0, self._leases[inst.node_id].deadline - now), 3)
            rows.append(row)
        return rows

    def load(self, rows: Iterable[LeaseRow], now: float, grace: float = 0.0) -> None:
        """Replace all leases with persisted ``rows``, each live until ``now + ttl + grace``."""
        self._leases = {
            row.node_id: _Lease(
                ttl=row.ttl,
                deadline=now + row.ttl + grace,
                instances=_normalize(row.node_id, row.instances),
            )
            for row in rows
        }
