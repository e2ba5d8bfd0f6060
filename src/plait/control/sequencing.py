"""Make-before-break sequencing of one ADS stream: what may be sent now, and what is held.

docs/xds.md: "Clusters and endpoints are sent before the listeners and routes that name
them". Pushing every due type at once in ``PUSH_ORDER`` is not enough for that: a route
change that starts using a new cluster must wait until the client has *applied* the
cluster and its endpoints (ACKed, not just sent), and one that stops using a cluster
must be applied before the cluster goes away. This module decides that, per stream, the
way Envoy's ADS sequencing guidance and go-control-plane/Istio servers do it:

make
    the clusters the node has applied (or has in flight) that its applied (or in-flight)
    listeners and routes still name are *retained* in CDS next to the new snapshot's
    clusters, and their ClusterLoadAssignments in EDS (while subscribed): CDS goes out as
    the union of what the node uses and the new clusters;
gate
    a listener or route update that names a cluster is *held* until the node has ACKed a
    CDS with that cluster and (for an EDS cluster) an EDS with its ClusterLoadAssignment,
    and no CDS/EDS response in flight lacks them (the node applies responses in order);
break
    once the new listeners and routes are ACKed nothing names the retained clusters any
    more, so the next CDS (and EDS) is the snapshot's own: the old clusters go.

A removal-only change passes the gate at once: routes go first, the final CDS after
their ACK. A NACK never deadlocks the sequence: a NACKed CDS/EDS leaves the routes held
(the node keeps what it had, which is consistent) until the input changes; a NACKed route
keeps the clusters it names retained. Only clients that subscribe to CDS as a wildcard
(plait proxies, Envoy) are sequenced; a client that names its clusters (proxyless gRPC)
orders them itself and gets exactly the snapshot.

Pure: no clock, no I/O; resources are read-only protobuf messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from plait.xds.builders import http_connection_manager_of
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE

Resources = Mapping[str, Any]
"""Resource name -> message (``google.protobuf.message.Message``)."""

_EDS = 3  # envoy.config.cluster.v3.Cluster.DiscoveryType.EDS


@dataclass(frozen=True)
class TypeView:
    """One resource type of one stream, as the sequencer sees it.

    ``target``: the snapshot's resources for this subscription (the final goal).
    ``names``: the subscription; None = wildcard.
    ``acked``: what the node has applied (the resources of its ACKed version); None if
    unknown or nothing. ``unanswered``: responses sent and not yet ACKed or NACKed, oldest
    first (the node may be applying any of them right now). ``acked_exact`` False: the
    node may hold only part of ``acked`` (a named subscription whose version it reported
    without ACKing it on this stream).
    """

    target: Resources
    names: tuple[str, ...] | None = None
    acked: Resources | None = None
    unanswered: tuple[Resources, ...] = ()
    acked_exact: bool = True

    def surely_has(self) -> Resources:
        """What the node is known to hold (``acked`` may overstate it when not exact)."""
        return (self.acked or {}) if self.acked_exact else {}

    def known(self) -> dict[str, Any]:
        """Every resource the node has or is being sent, the newest copy of each name."""
        out: dict[str, Any] = dict(self.acked or {})
        for sent in self.unanswered:
            out.update(sent)
        return out


@dataclass(frozen=True)
class Plan:
    """What to send now. ``retained[type]``: resources kept beyond the target (old
    clusters still named, their endpoints); ``held``: types not to send at all yet;
    ``waiting_for``: per held type, the clusters it waits for (for logs and status)."""

    retained: dict[str, dict[str, Any]] = field(default_factory=dict)
    held: frozenset[str] = frozenset()
    waiting_for: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def staged(self, type_url: str, target: Resources) -> dict[str, Any] | None:
        """The resources to send for ``type_url`` now; None if held."""
        if type_url in self.held:
            return None
        return {**target, **self.retained.get(type_url, {})}


STEADY = Plan()


# -- what names what -------------------------------------------------------------------


def route_config_clusters(route_config: Any) -> set[str]:
    """Clusters a RouteConfiguration's routes send to (single or weighted)."""
    out: set[str] = set()
    for vhost in route_config.virtual_hosts:
        for route in vhost.routes:
            if not route.HasField("route"):
                continue
            action = route.route
            if action.HasField("cluster"):
                out.add(action.cluster)
            out.update(w.name for w in action.weighted_clusters.clusters)
    return out


def listener_clusters(listener: Any) -> set[str]:
    """Clusters a Listener names through an inline route configuration."""
    manager = http_connection_manager_of(listener)
    if manager is None or not manager.HasField("route_config"):
        return set()
    return route_config_clusters(manager.route_config)


_NAMED_MEMO_SIZE = 16384
_named_memo: dict[int, tuple[Any, frozenset[str]]] = {}
"""id(listener or route configuration) -> (the message, the clusters it names). Resources
are read-only and shared by the snapshots of all nodes: one walk per message, not per
stream and plan. The entry holds the message, so its id is not reused while remembered."""


def memo_clusters(message: Any, walk: Callable[[Any], set[str]]) -> frozenset[str]:
    """``walk(message)`` (the clusters a Listener or RouteConfiguration names), once per
    message object: snapshots share their messages and treat them as read-only."""
    hit = _named_memo.get(id(message))
    if hit is not None and hit[0] is message:
        return hit[1]
    if len(_named_memo) >= _NAMED_MEMO_SIZE:
        _named_memo.clear()
    clusters = frozenset(walk(message))
    _named_memo[id(message)] = (message, clusters)
    return clusters


def named_clusters(listeners: Iterable[Any], route_configs: Iterable[Any]) -> set[str]:
    """Every cluster the given listeners and route configurations name."""
    out: set[str] = set()
    for listener in listeners:
        out |= memo_clusters(listener, listener_clusters)
    for route_config in route_configs:
        out |= memo_clusters(route_config, route_config_clusters)
    return out


def load_assignment_name(cluster: Any) -> str | None:
    """The ClusterLoadAssignment an EDS cluster needs; None for other cluster types."""
    if cluster.type != _EDS:
        return None
    return str(cluster.eds_cluster_config.service_name or cluster.name)


def load_assignment_names(clusters: Iterable[Any]) -> set[str]:
    """The ClusterLoadAssignments the given clusters need."""
    return {n for n in map(load_assignment_name, clusters) if n is not None}


def only(resources: Resources, names: Iterable[str]) -> dict[str, Any]:
    """``resources`` restricted to ``names`` (what a client that subscribes to just those
    names keeps of a response)."""
    keep = set(names)
    return {name: message for name, message in resources.items() if name in keep}


def _applied_lists(view: TypeView | None) -> list[Iterable[Any]]:
    """The resource lists of a view that the node may have applied: acked + in flight."""
    if view is None:
        return []
    lists: list[Iterable[Any]] = [(view.acked or {}).values()]
    lists.extend(sent.values() for sent in view.unanswered)
    return lists


def in_use(views: Mapping[str, TypeView]) -> set[str]:
    """Clusters named by listeners and routes the node has applied or may be applying."""
    out: set[str] = set()
    for listeners in _applied_lists(views.get(LISTENER)):
        out |= named_clusters(listeners, ())
    for route_configs in _applied_lists(views.get(ROUTE)):
        out |= named_clusters((), route_configs)
    return out


# -- the plan --------------------------------------------------------------------------


def is_sequenced(views: Mapping[str, TypeView]) -> bool:
    """Sequencing applies to clients with a wildcard CDS subscription."""
    cds = views.get(CLUSTER)
    return cds is not None and cds.names is None


def plan(views: Mapping[str, TypeView], available_endpoints: Iterable[str] = ()) -> Plan:
    """What one stream may be sent now (see the module docstring).

    ``views``: the types the client subscribes to. ``available_endpoints``: names of every
    ClusterLoadAssignment in the snapshot (a route is not held for one that does not
    exist: waiting could never end).
    """
    if not is_sequenced(views):
        return STEADY
    cds = views[CLUSTER]
    eds = views.get(ENDPOINT)

    # make: keep the clusters (and endpoints) still named by what the node applied
    used = in_use(views)
    known_clusters = cds.known()
    kept_clusters = {
        name: known_clusters[name]
        for name in sorted(used)
        if name not in cds.target and name in known_clusters
    }
    retained: dict[str, dict[str, Any]] = {}
    if kept_clusters:
        retained[CLUSTER] = kept_clusters
    if eds is not None and eds.names:
        # only for the clusters kept beyond the target: a target cluster's endpoints are
        # the target's (even if that means none)
        needed = load_assignment_names(kept_clusters.values()) - {
            load_assignment_name(c) for c in cds.target.values()
        }
        known_cla = eds.known()
        kept_cla = {
            name: known_cla[name]
            for name in eds.names
            if name not in eds.target and name in needed and name in known_cla
        }
        if kept_cla:
            retained[ENDPOINT] = kept_cla

    # gate: listeners and routes wait for the clusters and endpoints they name
    endpoints_exist = set(available_endpoints)
    cluster_states = [cds.surely_has(), *cds.unanswered]
    cla_states = [eds.surely_has(), *eds.unanswered] if eds is not None else [{}]
    held: set[str] = set()
    waiting: dict[str, tuple[str, ...]] = {}
    for type_url in (LISTENER, ROUTE):
        view = views.get(type_url)
        if view is None:
            continue
        names = (
            named_clusters(view.target.values(), ())
            if type_url == LISTENER
            else named_clusters((), view.target.values())
        )
        missing = []
        for name in sorted(names):
            cluster = cds.target.get(name)
            if cluster is None:
                continue  # not in the snapshot: waiting would never end
            if any(name not in state for state in cluster_states):
                missing.append(name)
                continue
            cla = load_assignment_name(cluster)
            if (
                cla is not None
                and cla in endpoints_exist
                and any(cla not in state for state in cla_states)
            ):
                missing.append(name)
        if missing:
            held.add(type_url)
            waiting[type_url] = tuple(missing)
    if not retained and not held:
        return STEADY
    return Plan(retained=retained, held=frozenset(held), waiting_for=waiting)
