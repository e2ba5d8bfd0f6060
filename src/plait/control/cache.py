"""The snapshot cache: per-node xDS snapshots and what each client has seen of them.

Theory of operation. The cache holds the inputs of translation (the current config, the
registry's instances, and the trust domain and CA trust bundle). When any changes
(:meth:`SnapshotCache.update_inputs`, then
:meth:`SnapshotCache.recompute`, or both at once with ``set_inputs``) it builds one
:class:`~plait.xds.translate.Translator` and asks it for a snapshot per connected node; a
stream that opens later gets its snapshot from the same translator.
Each ADS stream is a :class:`Watch`; per resource type it records the client's
subscription and the protocol state:

    sent     version and nonce of the last response sent on this stream
    acked    the version the client says it has (an ACK, or ``version_info`` on its first
             request of a stream, after a reconnect)
    nacked   the version the client refused, with its error detail

The *desired* version of a type is the snapshot's version for it (wildcard) or a content
hash of just the named resources (RDS/EDS, or a client naming its listeners).

Rules (after go-control-plane's ``simple.go``):
- reply iff the desired version differs from both what the client has acked and what was
  last sent on this stream, and is not the version it NACKed: a NACKed version is not
  re-sent until the snapshot for that type changes;
- a request carrying a nonce other than the last one sent is stale and ignored;
- responses go out in ``PUSH_ORDER`` (the trust bundle, then clusters and endpoints,
  before listeners and routes), and, for clients with a wildcard CDS subscription,
  make-before-break across ACKs (:mod:`plait.control.sequencing`): listeners and routes
  that name a cluster are held until the client has ACKed that cluster and its
  endpoints, and clusters its applied listeners and routes still name are kept in CDS
  (and their endpoints in EDS) until it has ACKed listeners and routes that no longer
  name them;
- SDS, CDS and LDS are wildcard types (an empty name list means everything);
- changed-only pushes (docs/xds.md): to a client that announces
  :data:`~plait.xds.types.SOTW_PARTIAL`, an EDS or RDS response carries only the
  subscribed resources whose digest differs from what this stream knows the client holds
  (plus names it never got); ``version_info`` is still the version of the whole state.
  What the client holds is known exactly only after it ACKed our latest response of the
  type on this stream (or, after a reconnect, reports the version it had ACKed on the
  previous stream): then ``acked_resources`` and ``acked_digests`` are the whole state of
  that response. Otherwise — first push, an old or unknown version, a response still in
  flight, after a NACK — the push carries every subscribed resource, as for other clients.

Status of a type, against its desired (final) version: SYNCED (acked), NACKED (that
version, or the intermediate step sequencing sent towards it, was NACKed), STALE (sent
and not yet acked, held back by sequencing, or not yet sent). A node is NACKED if any type is,
else STALE if any type is, else SYNCED.

Pure: no sockets, no clock. The ADS shell calls :meth:`open_watch`, :meth:`on_request`,
:meth:`pending` and :meth:`close_watch`; each watch carries a ``wake`` callback that the
cache calls when a recompute gives it something to send.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf.message import Message

from plait.control import sequencing
from plait.model.config import ConfigSet
from plait.xds.inputs import Instance, NodeInfo
from plait.xds.names import DEFAULT_TRUST_DOMAIN
from plait.xds.snapshot import content_version as snapshot_content_version
from plait.xds.snapshot import resource_digest
from plait.xds.types import (
    ALL_TYPES,
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PARTIAL_TYPES,
    PUSH_ORDER,
    ROUTE,
    SECRET,
    SOTW_PARTIAL,
)

log = logging.getLogger("plait.control.cache")

SYNCED = "SYNCED"
STALE = "STALE"
NACKED = "NACKED"

WILDCARD_TYPES = frozenset({SECRET, LISTENER, CLUSTER})
"""Types for which an empty ``resource_names`` list means "everything"."""

HISTORY = 8
"""Versions sent per type (and stream) whose resources are remembered, to know what a
client that ACKs (or keeps, after a NACK) one of them has applied."""


DIGEST_MEMO = 256
"""Resource sets whose digests are remembered (a bound, not a tuning)."""


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


class TranslatorLike(Protocol):
    def for_node(self, node: NodeInfo) -> Any: ...


TranslatorFactory = Callable[[ConfigSet, Sequence[Instance]], TranslatorLike]
"""Makes a translator from config and instances (a test double, say); the default one,
:class:`~plait.xds.translate.Translator`, also gets the cache's trust domain and bundle."""


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


class SnapshotCache:
    """Snapshots per connected node, and per-stream protocol state. See module docstring."""

    def __init__(
        self,
        config: ConfigSet | None = None,
        instances: Sequence[Instance] = (),
        translator_factory: TranslatorFactory | None = None,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        trust_bundle: bytes = b"",
    ) -> None:
        self._factory = translator_factory or self._default_translator
        self.config = config if config is not None else ConfigSet()
        self.instances: tuple[Instance, ...] = tuple(instances)
        self.trust_domain = trust_domain
        self.trust_bundle = bytes(trust_bundle)
        self._translator: TranslatorLike | None = None
        self._ids = itertools.count(1)
        self._live: dict[int, Watch] = {}
        # id(resources) -> (resources, their digests), for the current snapshots only:
        # streams that share a resource set share one digest map
        self._digest_memo: dict[int, tuple[dict[str, Message], dict[str, bytes]]] = {}
        self._latest: dict[str, Watch] = {}  # node id -> its most recent stream
        # sync-before-serve (docs/resilience.md): while False, no stream gets a response
        # (the control plane sets it once its registry has synced after a restart)
        self.serving = True

    # -- inputs ------------------------------------------------------------------------

    def set_inputs(
        self, config: ConfigSet | None = None, instances: Sequence[Instance] | None = None
    ) -> list[Watch]:
        """:meth:`update_inputs` then :meth:`recompute`."""
        self.update_inputs(config, instances)
        return self.recompute()

    def update_inputs(
        self,
        config: ConfigSet | None = None,
        instances: Sequence[Instance] | None = None,
        *,
        trust_bundle: bytes | None = None,
    ) -> None:
        """Replace config, instances and/or the trust bundle. Cheap: streams opened from
        now on see them; the streams already open see them at the next :meth:`recompute`."""
        if config is not None:
            self.config = config
        if instances is not None:
            self.instances = tuple(instances)
        if trust_bundle is not None:
            self.trust_bundle = bytes(trust_bundle)
        self._translator = None

    def _default_translator(
        self, config: ConfigSet, instances: Sequence[Instance]
    ) -> TranslatorLike:
        from plait.xds.translate import Translator

        return Translator(
            config, instances, trust_domain=self.trust_domain, trust_bundle=self.trust_bundle
        )

    def recompute(self) -> list[Watch]:
        """Recompute every connected node's snapshot from the current inputs (one
        translator for all). Wakes, and returns, the watches that now have something to
        send."""
        woken: list[Watch] = []
        self._digest_memo.clear()  # let the previous snapshots go
        for watch in list(self._live.values()):
            self._refresh(watch)
            if self._has_pending(watch):
                woken.append(watch)
                watch.wake()
        return woken

    def _translate(self) -> TranslatorLike:
        if self._translator is None:
            self._translator = self._factory(self.config, self.instances)
        return self._translator

    def _refresh(self, watch: Watch) -> None:
        try:
            watch.snapshot = self._translate().for_node(watch.node)
            watch.translate_error = None
            watch.invalidate()
        except Exception as exc:  # keep serving the last good snapshot
            log.exception("translation failed for node %s", watch.node.node_id)
            watch.translate_error = f"{type(exc).__name__}: {exc}"

    # -- streams -----------------------------------------------------------------------

    def open_watch(self, node: NodeInfo, wake: Callable[[], None]) -> Watch:
        watch = Watch(stream_id=next(self._ids), node=node, wake=wake)
        previous = self._latest.get(node.node_id)
        if previous is not None:  # what the node applied, should it reconnect with it
            watch.inherited = dict(previous.types)
        self._refresh(watch)
        self._live[watch.stream_id] = watch
        self._latest[node.node_id] = watch
        return watch

    def close_watch(self, watch: Watch) -> None:
        watch.connected = False
        self._live.pop(watch.stream_id, None)

    def live_watches(self) -> list[Watch]:
        return list(self._live.values())

    def on_request(
        self,
        watch: Watch,
        type_url: str,
        version_info: str,
        nonce: str,
        names: Sequence[str],
        error_detail: str | None = None,
    ) -> bool:
        """Record a DiscoveryRequest. False if ignored (stale nonce, or a type not served)."""
        if type_url not in ALL_TYPES:
            return False
        state = watch.types.get(type_url)
        if state is None or state.sent_nonce is None:
            # Nothing sent for this type on this stream yet: a subscription. (A nonce here
            # can only be left over from an earlier stream; it answers nothing of ours.)
            first = state is None
            if state is None:
                state = watch.types[type_url] = TypeState()
            # a later request of the same version keeps what we know: the client has
            # dropped the names it stopped asking for since
            if version_info and (first or version_info != state.acked_version):
                state.acked_version = version_info
                state.acked_digests = None
                old = watch.inherited.get(type_url)
                if old is not None and old.acked_version == version_info:
                    state.acked_resources = old.acked_resources
                    state.acked_exact = old.acked_exact
                    state.acked_digests = old.acked_digests
                elif old is not None:
                    state.acked_resources = old.history.get(version_info)
                    state.acked_exact = False
        elif not nonce:
            pass  # a subscription change sent before our response reached the client
        elif nonce != state.sent_nonce:
            if state.acked_resources is not None and watch.partial_ok:
                # stale, but the client did drop the names it no longer asks for: our
                # changed-only response in flight will not bring them back
                state.acked_resources = sequencing.only(state.acked_resources, names)
                watch.invalidate()
            return False  # answers an older response of ours: stale
        elif error_detail is not None:
            state.nacked_version = state.sent_version
            state.error = error_detail
            self._applied(state, version_info, nack=True)
        else:
            self._applied(state, version_info)
            state.nacked_version = None
            state.error = None
        if not names and type_url in WILDCARD_TYPES:
            state.names = None
        else:
            state.names = tuple(sorted(set(names)))
        if state.acked_version is not None and state.acked_resources is None:
            desired, resources = watch.desired_version(type_url)
            if desired == state.acked_version:  # e.g. a reconnect after a restart
                state.acked_resources = resources
                state.acked_exact = False
        if state.names is None:
            state.acked_exact = True  # a wildcard client keeps all of a version
        elif state.acked_resources is not None:
            # a client keeps only what it subscribes to (a plait proxy drops the endpoints
            # of clusters it no longer has, even from a response it ACKs); a version it
            # reports is only known to be whole when it ACKed it here, with these names
            state.acked_resources = sequencing.only(state.acked_resources, state.names)
        eds = watch.types.get(ENDPOINT)
        if (
            type_url == CLUSTER
            and state.acked_resources is not None
            and eds is not None
            and eds.acked_resources is not None
        ):  # and when CDS drops a cluster, its endpoints go with it
            eds.acked_resources = sequencing.only(
                eds.acked_resources,
                sequencing.load_assignment_names(state.acked_resources.values()),
            )
        watch.invalidate()
        return True

    @staticmethod
    def _applied(state: TypeState, version_info: str, *, nack: bool = False) -> None:
        """An ACK or NACK with our latest nonce: the client now has ``version_info``.

        A NACK never applies our response, even when the version the client keeps is the
        one we sent (a re-send of a version to a client that lacked some of its names)."""
        if nack:
            state.acked_digests = None  # conservative: the next push is complete
        if not nack and state.unanswered and version_info and version_info == state.sent_version:
            resources = state.unanswered[-1]  # the answer to our latest
            carried = state.sent_partial
            if carried is not None:  # changed-only: merged into what the client held
                base = state.acked_resources or {}
                if not all(name in base or name in carried for name in resources):
                    resources = {n: m for n, m in resources.items() if n in base or n in carried}
            state.acked_resources = resources
            state.acked_exact = True
            state.acked_digests = state.sent_digests
        elif version_info != state.acked_version:
            state.acked_resources = state.history.get(version_info) if version_info else None
            state.acked_exact = False
            state.acked_digests = None
        elif state.unanswered:
            state.acked_digests = None  # our latest was not applied: be conservative
        state.unanswered.clear()
        state.acked_version = version_info or None

    def _has_pending(self, watch: Watch) -> bool:
        return any(self._wanted(watch, t) is not None for t in PUSH_ORDER)

    def _wanted(self, watch: Watch, type_url: str) -> tuple[str, dict[str, Message]] | None:
        state = watch.types.get(type_url)
        if state is None:
            return None
        staged = watch.staged(type_url)
        if staged is None:
            return None
        desired, resources = staged
        if watch.holds(type_url, desired, resources):
            return None
        if desired == state.sent_version and state.unanswered:
            return None  # on its way
        if desired == state.nacked_version:
            return None
        return desired, resources

    def pending(self, watch: Watch) -> list[PushResponse]:
        """Responses to send now, in ``PUSH_ORDER``; each is recorded as sent.

        Sequencing is planned once, from the state before this batch: a type it holds
        back goes out on a later call, after the ACKs it waits for."""
        if not self.serving:
            return []  # syncing: the client keeps what it has
        out: list[PushResponse] = []
        # (every change of the snapshot or of the protocol state invalidates the plan)
        wanted_now = {t: self._wanted(watch, t) for t in PUSH_ORDER}
        for type_url in PUSH_ORDER:
            wanted = wanted_now[type_url]
            if wanted is None:
                continue
            version, resources = wanted
            state = watch.types[type_url]
            send = resources
            digests = None
            if type_url in PARTIAL_TYPES and watch.partial_ok:
                digests = self._digests(watch, type_url, resources)
                held = watch.held(type_url)
                if held is not None:
                    send = changed(resources, digests, *held)
            nonce = str(next(watch._nonces))
            state.sent_version, state.sent_nonce = version, nonce
            state.sent_digests = digests
            state.sent_partial = send if send is not resources else None
            state.unanswered.append(resources)  # the whole state, as the client has it
            state.remember(version, resources)
            out.append(
                PushResponse(
                    type_url=type_url,
                    version=version,
                    nonce=nonce,
                    resources=[send[name] for name in sorted(send)],
                    partial=len(send) != len(resources),
                )
            )
        watch.invalidate()
        return out

    def _digests(
        self, watch: Watch, type_url: str, resources: dict[str, Message]
    ) -> dict[str, bytes]:
        """:func:`resource_digest` of each of ``resources``, from the snapshot's digest
        hints where the message is the snapshot's own; memoized per resource set."""
        hit = self._digest_memo.get(id(resources))
        if hit is not None and hit[0] is resources:
            return hit[1]
        snapshot = watch.snapshot
        items: Any = getattr(snapshot, "items", None)
        own = items(type_url) if items is not None else {}
        hints = getattr(snapshot, "digests", {}).get(type_url, {})
        digests: dict[str, bytes] = {}
        for name, message in resources.items():
            known = hints.get(name) if own.get(name) is message else None
            digests[name] = known if known is not None else resource_digest(message)
        if len(self._digest_memo) >= DIGEST_MEMO:
            self._digest_memo.clear()
        self._digest_memo[id(resources)] = (resources, digests)
        return digests

    # -- status ------------------------------------------------------------------------

    def status_rows(self) -> list[dict[str, Any]]:
        """Rows for ``GET /v1/proxy-status``, one per node id (its most recent stream)."""
        connected = {w.node.node_id for w in self._live.values()}
        rows = []
        for node_id in sorted(self._latest):
            watch = self._latest[node_id]
            types = {
                type_url: {
                    "sent": state.sent_version,
                    "acked": state.acked_version,
                    "error": state.error,
                    "status": watch.type_status(type_url),
                }
                for type_url, state in sorted(watch.types.items())
            }
            row: dict[str, Any] = {
                "node_id": node_id,
                "connected": node_id in connected,
                "plait_proxy": watch.node.plait_proxy,
                "status": watch.status(),
                "types": types,
            }
            if watch.translate_error:
                row["translate_error"] = watch.translate_error
            rows.append(row)
        return rows

    def forget(self, node_id: str) -> None:
        """Drop a disconnected node's status row."""
        watch = self._latest.get(node_id)
        if watch is not None and not watch.connected:
            del self._latest[node_id]
