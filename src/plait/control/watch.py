"""Per-stream xDS state: what one ADS stream of one node holds, and what to send it.

A :class:`Watch` is one ADS stream (the :class:`~plait.control.cache.SnapshotCache` opens,
updates and closes them); per resource type a :class:`TypeState` records the client's
subscription and the protocol state:

    sent     version and nonce of the last response sent on this stream
    acked    the version the client says it has (an ACK, or ``version_info`` on its first
             request of a stream, after a reconnect)
    nacked   the version the client refused, with its error detail

The *desired* version of a type is the snapshot's version for it (wildcard) or a content
hash of just the named resources (RDS/EDS, or a client naming its listeners). What is
*staged* to send is the desired resources, plus what make-before-break sequencing
(:mod:`plait.control.sequencing`) retains, unless it holds the type back;
:meth:`Watch.steady` is the fast path that skips the plan when nothing can be held back.

Changed-only pushes (docs/xds.md): to a client that announces
:data:`~plait.xds.types.SOTW_PARTIAL`, an EDS or RDS response carries only what
:func:`changed` finds against what the client holds (:meth:`Watch.held`). What the client
holds is known exactly only after it ACKed our latest response of the type on this stream
(or, after a reconnect, reports the version it had ACKed on the previous stream): then
``acked_resources`` and ``acked_digests`` are the whole state of that response. Otherwise
— first push, an old or unknown version, a response still in flight, after a NACK — the
push carries every subscribed resource, as for other clients.

Status of a type, against its desired (final) version: SYNCED (acked), NACKED (that
version, or the intermediate step sequencing sent towards it, was NACKed), STALE (sent
and not yet acked, held back by sequencing, or not yet sent). A node is NACKED if any type is,
else STALE if any type is, else SYNCED.

Pure: no sockets, no clock.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf.message import Message

from plait.control import sequencing
from plait.xds.inputs import NodeInfo
from plait.xds.snapshot import content_version as snapshot_content_version
from plait.xds.snapshot import resource_digest
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, PARTIAL_TYPES, ROUTE, SOTW_PARTIAL

SYNCED = "SYNCED"
STALE = "STALE"
NACKED = "NACKED"

HISTORY = 8
"""Versions sent per type (and stream) whose resources are remembered, to know what a
client that ACKs (or keeps, after a NACK) one of them has applied."""


def changed(
    resources: dict[str, Message],
    digests: dict[str, bytes],
    held: dict[str, Message],
    held_digests: dict[str, bytes],
) -> dict[str, Message]:
    """The part of ``resources`` a client holding ``held`` (with ``held_digests``) lacks:
    names it does not hold, and names whose digest differs (a changed-only push)."""
    return {
        name: message
        for name, message in resources.items()
        if name not in held or held_digests.get(name) != digests[name]
    }


_MEMO_SIZE = 4096
_needed_memo: dict[tuple[int, int], tuple[frozenset[str], Any, frozenset[str]]] = {}


def _needed_load_assignments(
    named: frozenset[str], clusters: Mapping[str, Message], hints: Mapping[str, bytes] | None
) -> set[str]:
    """The ClusterLoadAssignments the EDS clusters among ``named`` need (names not in
    ``clusters`` skipped). For the clusters in the snapshot's digest ``hints`` (the same
    name and digest, so the same message content, on every node sharing them) it is
    worked out once per (names, hints) pair."""
    shared: frozenset[str] = frozenset()
    rest: Iterable[str] = named
    if hints:
        key = (id(named), id(hints))
        hit = _needed_memo.get(key)
        if hit is None or hit[0] is not named or hit[1] is not hints:
            if len(_needed_memo) >= _MEMO_SIZE:
                _needed_memo.clear()
            found = (
                sequencing.load_assignment_name(clusters[name])
                for name in named
                if name in hints and name in clusters
            )
            hit = (named, hints, frozenset(n for n in found if n is not None))
            _needed_memo[key] = hit
        shared = hit[2]
        rest = named - hints.keys()
    out = set(shared)
    for name in rest:
        cluster = clusters.get(name)
        cla = None if cluster is None else sequencing.load_assignment_name(cluster)
        if cla is not None:
            out.add(cla)
    return out


class SnapshotLike(Protocol):
    def version(self, type_url: str) -> str: ...

    def subset(self, type_url: str, names: Iterable[str] | None) -> dict[str, Any]: ...


def content_version(resources: dict[str, Message]) -> str:
    """A content hash of the named resources (used for named subscriptions): the same
    scheme as :meth:`Snapshot.version <plait.xds.snapshot.Snapshot.version>`."""
    return snapshot_content_version(
        (name, resource_digest(message)) for name, message in resources.items()
    )


@dataclass
class TypeState:
    """One resource type on one stream. ``names`` None = wildcard subscription."""

    names: tuple[str, ...] | None = None
    sent_version: str | None = None
    sent_nonce: str | None = None
    acked_version: str | None = None
    nacked_version: str | None = None
    error: str | None = None
    # for sequencing: the resources the client has applied (None: unknown), those sent
    # and not yet answered (oldest first), and recent versions sent, to resolve an ACK
    acked_resources: dict[str, Message] | None = None
    acked_exact: bool = True  # False: the client may hold only part of acked_resources
    unanswered: list[dict[str, Message]] = field(default_factory=list)
    history: dict[str, dict[str, Message]] = field(default_factory=dict)
    # for changed-only pushes (SOTW_PARTIAL clients, PARTIAL_TYPES): digests of the whole
    # state of our latest push, and of acked_resources when the client ACKed that push
    # (None: not known exactly; the next push is complete)
    sent_digests: dict[str, bytes] | None = None
    acked_digests: dict[str, bytes] | None = None
    sent_partial: dict[str, Message] | None = None  # what a changed-only push carried

    def remember(self, version: str, resources: dict[str, Message]) -> None:
        self.history.pop(version, None)
        self.history[version] = resources
        while len(self.history) > HISTORY:
            del self.history[next(iter(self.history))]

    def applied(self, version_info: str, *, nack: bool = False) -> None:
        """An ACK or NACK with our latest nonce: the client now has ``version_info``.

        A NACK never applies our response, even when the version the client keeps is the
        one we sent (a re-send of a version to a client that lacked some of its names)."""
        if nack:
            self.acked_digests = None  # conservative: the next push is complete
        if not nack and self.unanswered and version_info and version_info == self.sent_version:
            resources = self.unanswered[-1]  # the answer to our latest
            carried = self.sent_partial
            if carried is not None:  # changed-only: merged into what the client held
                base = self.acked_resources or {}
                if not all(name in base or name in carried for name in resources):
                    resources = {n: m for n, m in resources.items() if n in base or n in carried}
            self.acked_resources = resources
            self.acked_exact = True
            self.acked_digests = self.sent_digests
        elif version_info != self.acked_version:
            self.acked_resources = self.history.get(version_info) if version_info else None
            self.acked_exact = False
            self.acked_digests = None
        elif self.unanswered:
            self.acked_digests = None  # our latest was not applied: be conservative
        self.unanswered.clear()
        self.acked_version = version_info or None


@dataclass(frozen=True)
class PushResponse:
    """A DiscoveryResponse to send: the ADS shell packs ``resources`` into ``Any``."""

    type_url: str
    version: str
    nonce: str
    resources: list[Message]
    partial: bool = False
    """Changed-only: ``resources`` are the changed part of the state ``version`` names."""


@dataclass(eq=False)
class Watch:
    """One ADS stream of one node."""

    stream_id: int
    node: NodeInfo
    wake: Callable[[], None]
    connected: bool = True
    snapshot: SnapshotLike | None = None
    translate_error: str | None = None
    types: dict[str, TypeState] = field(default_factory=dict)
    _nonces: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    inherited: dict[str, TypeState] = field(default_factory=dict)
    """The node's previous stream, by type: what the node may have applied there."""
    _plan: sequencing.Plan | None = field(default=None, repr=False)

    @property
    def partial_ok(self) -> bool:
        """Whether the client takes changed-only responses (docs/xds.md)."""
        return SOTW_PARTIAL in self.node.client_features

    def held(self, type_url: str) -> tuple[dict[str, Message], dict[str, bytes]] | None:
        """(resources, digests) the client is known to hold exactly, for a changed-only
        push of ``type_url``; None when a push must carry every subscribed resource."""
        state = self.types.get(type_url)
        if (
            state is None
            or type_url not in PARTIAL_TYPES
            or not self.partial_ok
            or state.names is None  # wildcard: only a complete response can drop a name
            or state.unanswered  # a response in flight may yet be NACKed
            or state.nacked_version is not None  # conservative: complete until an ACK
            or not state.acked_exact
            or state.acked_resources is None
            or state.acked_digests is None
        ):
            return None
        return state.acked_resources, state.acked_digests

    def invalidate(self) -> None:
        """The snapshot or the protocol state changed: plan again when next asked."""
        self._plan = None

    def settled(self) -> bool:
        """Whether the client holds the desired clusters, listeners and routes, exactly
        and with nothing in flight: then sequencing has nothing to retain or hold (what
        its listeners and routes name is in the snapshot's clusters, which it has), and
        :meth:`plan` skips the work (for a change of endpoints only, the usual case)."""
        for type_url in (CLUSTER, LISTENER, ROUTE):
            state = self.types.get(type_url)
            if state is None:
                if type_url in self.inherited and type_url != CLUSTER:
                    return False  # what it applied on its previous stream still counts
                continue
            if state.unanswered or not state.acked_exact or state.acked_version is None:
                return False
            desired, _ = self.desired_version(type_url)
            if desired is not None and not self.holds(type_url, desired):
                return False
        return True

    def steady(self) -> bool:
        """Whether :func:`sequencing.plan` would surely give ``STEADY``, known cheaply.

        When the client holds the snapshot's clusters exactly (the desired wildcard CDS
        version ACKed here, nothing in flight), sequencing retains nothing (every cluster
        it knows is in the snapshot) and holds a listener or route only for a cluster
        whose ClusterLoadAssignment the client may lack: checked here by name, without
        the plan's walks over every cluster (a route change to 1,000 proxies)."""
        if self.settled():
            return True
        cds = self.types.get(CLUSTER)
        if (
            cds is None
            or cds.names is not None
            or cds.unanswered
            or not cds.acked_exact
            or cds.acked_resources is None
            or self.snapshot is None
        ):
            return False
        desired, clusters = self.desired_version(CLUSTER)
        if desired is None or cds.acked_version != desired:
            return False
        eds = self.types.get(ENDPOINT)
        cla_states: list[Any] = [{}]
        if eds is not None:
            surely = (eds.acked_resources or {}) if eds.acked_exact else {}
            cla_states = [surely, *eds.unanswered]
        endpoints = self.snapshot.subset(ENDPOINT, None).keys()
        hints = getattr(self.snapshot, "digests", {}).get(CLUSTER)
        for type_url in (LISTENER, ROUTE):
            if type_url not in self.types:
                continue  # one only inherited has no target: it holds nothing
            walk = (
                sequencing.listener_clusters
                if type_url == LISTENER
                else sequencing.route_config_clusters
            )
            for message in self.desired_version(type_url)[1].values():
                needed = _needed_load_assignments(
                    sequencing.memo_clusters(message, walk), clusters, hints
                )
                needed &= endpoints
                if any(not needed <= state.keys() for state in cla_states):
                    return False
        return True

    def plan(self) -> sequencing.Plan:
        """Make-before-break plan for this stream (see :mod:`plait.control.sequencing`)."""
        if self._plan is None and self.steady():
            self._plan = sequencing.STEADY
        if self._plan is None:
            views = {
                type_url: sequencing.TypeView(
                    target=self.desired_version(type_url)[1],
                    names=state.names,
                    acked=state.acked_resources,
                    unanswered=tuple(state.unanswered),
                    acked_exact=state.acked_exact,
                )
                for type_url, state in self.types.items()
            }
            for type_url in (LISTENER, ROUTE):
                # after a reconnect, until the client subscribes again on this stream, the
                # listeners and routes it kept still name clusters: do not drop those
                old = self.inherited.get(type_url)
                if type_url not in views and old is not None:
                    views[type_url] = sequencing.TypeView(
                        target={},
                        names=(),
                        acked=old.acked_resources,
                        unanswered=tuple(old.unanswered),
                    )
            available = self.snapshot.subset(ENDPOINT, None) if self.snapshot else {}
            self._plan = sequencing.plan(views, available)
        return self._plan

    def staged(self, type_url: str) -> tuple[str, dict[str, Message]] | None:
        """(version, resources) to send for ``type_url`` now: the desired ones, plus what
        sequencing retains; None if nothing is subscribed or sequencing holds it back."""
        desired, resources = self.desired_version(type_url)
        if desired is None:
            return None
        plan = self.plan()
        if type_url in plan.held:
            return None
        retained = plan.retained.get(type_url)
        if not retained:
            return desired, resources
        staged = {**resources, **retained}
        if self.types[type_url].names is None:  # the same scheme as Snapshot.version
            version = snapshot_content_version(
                (name, resource_digest(message)) for name, message in staged.items()
            )
        else:
            version = content_version(staged)
        return version, staged

    def wanted(self, type_url: str) -> tuple[str, dict[str, Message]] | None:
        """(version, resources) due on this stream for ``type_url`` now: :meth:`staged`,
        unless the client holds it, it is on its way, or it is the version NACKed."""
        state = self.types.get(type_url)
        if state is None:
            return None
        staged = self.staged(type_url)
        if staged is None:
            return None
        desired, resources = staged
        if self.holds(type_url, desired, resources):
            return None
        if desired == state.sent_version and state.unanswered:
            return None  # on its way
        if desired == state.nacked_version:
            return None
        return desired, resources

    def desired_version(self, type_url: str) -> tuple[str | None, dict[str, Message]]:
        """(version, resources) this stream should have for ``type_url``; None if nothing."""
        state = self.types.get(type_url)
        if state is None or self.snapshot is None:
            return None, {}
        if state.names is None:
            resources = self.snapshot.subset(type_url, None)
            return self.snapshot.version(type_url), resources
        if not state.names:
            return None, {}
        subset_version = getattr(self.snapshot, "subset_version", None)
        if subset_version is not None:  # memoized, shared by the streams of all nodes
            version, resources = subset_version(type_url, state.names)
            return version, resources
        resources = self.snapshot.subset(type_url, state.names)
        return content_version(resources), resources

    def type_status(self, type_url: str) -> str | None:
        state = self.types[type_url]
        desired, _ = self.desired_version(type_url)
        if desired is None:
            return None
        if self.holds(type_url, desired):
            return SYNCED
        if state.nacked_version is not None:
            staged = self.staged(type_url)
            if state.nacked_version in (desired, staged[0] if staged else None):
                return NACKED
        return STALE

    def holds(self, type_url: str, version: str, names: Iterable[str] | None = None) -> bool:
        """Whether the client has ``version`` of ``type_url`` (and, when known, each of
        the resources of it that it now subscribes to: a client keeps only the names it
        subscribes to, so an ACKed version may lack a name it subscribes to later)."""
        state = self.types[type_url]
        if state.acked_version != version:
            return False
        if state.names is None:
            return True
        if not state.acked_exact:
            return False  # send it again, to know
        if state.acked_resources is None:
            return True
        if names is None:
            names = self.desired_version(type_url)[1]
        return all(name in state.acked_resources for name in names)

    def status(self) -> str:
        statuses = {self.type_status(t) for t in self.types}
        if NACKED in statuses:
            return NACKED
        if STALE in statuses:
            return STALE
        return SYNCED
