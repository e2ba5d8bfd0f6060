"""The snapshot cache: per-node xDS snapshots and what each client has seen of them.

Theory of operation. The cache holds the inputs of translation (the current config, the
registry's instances, and the trust domain and CA trust bundle). When any changes
(:meth:`SnapshotCache.update_inputs`, then
:meth:`SnapshotCache.recompute`, or both at once with ``set_inputs``) it builds one
:class:`~plait.xds.translate.Translator` and asks it for a snapshot per connected node; a
stream that opens later gets its snapshot from the same translator.
Each ADS stream is a :class:`~plait.control.watch.Watch`: per resource type, the client's
subscription and the protocol state (sent, acked, NACKed), its desired version, and its
status (SYNCED/STALE/NACKED) — see :mod:`plait.control.watch`.

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
  When that is not known exactly (:meth:`Watch.held <plait.control.watch.Watch.held>`)
  the push carries every subscribed resource, as for other clients.

A recompute can also run in steps (:meth:`SnapshotCache.recompute_steps`, a generator
that refreshes ``RECOMPUTE_BATCH`` watches per step), so that the control plane can yield
to its event loop between batches: with 1,000 connected proxies a whole recompute takes
about a second. Each step translates with the translator of the *current* inputs (inputs
replaced mid-way reach the rest of the run), walks a snapshot of the watches taken when
the run starts (a stream opened meanwhile got its snapshot from the newest inputs when it
opened) and skips the ones closed since. :meth:`SnapshotCache.recompute` runs all steps at
once.

Pure: no sockets, no clock. The ADS shell calls :meth:`open_watch`, :meth:`on_request`,
:meth:`pending` and :meth:`close_watch`; each watch carries a ``wake`` callback that the
cache calls when a recompute gives it something to send.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from google.protobuf.message import Message

from plait.control import sequencing
from plait.control.watch import (
    HISTORY,
    NACKED,
    STALE,
    SYNCED,
    PushResponse,
    SnapshotLike,
    TypeState,
    Watch,
    changed,
    content_version,
)
from plait.model.config import ConfigSet
from plait.xds.inputs import Instance, NodeInfo
from plait.xds.names import DEFAULT_TRUST_DOMAIN
from plait.xds.snapshot import resource_digest
from plait.xds.types import (
    ALL_TYPES,
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PARTIAL_TYPES,
    PUSH_ORDER,
    SECRET,
)

__all__ = [
    "DIGEST_MEMO",
    "HISTORY",
    "NACKED",
    "RECOMPUTE_BATCH",
    "STALE",
    "SYNCED",
    "WILDCARD_TYPES",
    "PushResponse",
    "SnapshotCache",
    "SnapshotLike",
    "TranslatorFactory",
    "TranslatorLike",
    "TypeState",
    "Watch",
    "changed",
    "content_version",
]

log = logging.getLogger("plait.control.cache")

WILDCARD_TYPES = frozenset({SECRET, LISTENER, CLUSTER})
"""Types for which an empty ``resource_names`` list means "everything"."""

DIGEST_MEMO = 256
"""Resource sets whose digests are remembered (a bound, not a tuning)."""

RECOMPUTE_BATCH = 16
"""Watches refreshed per step of :meth:`SnapshotCache.recompute_steps` (between two steps
the control plane lets its event loop run: API calls, new streams, ACKs). A refresh costs
about 1 ms at 500 services and 10,000 instances, and an API request needs two or three
turns of the loop, so 16 keeps a turn near 15 ms; yielding itself costs microseconds."""


class TranslatorLike(Protocol):
    def for_node(self, node: NodeInfo) -> Any: ...


TranslatorFactory = Callable[[ConfigSet, Sequence[Instance]], TranslatorLike]
"""Makes a translator from config and instances (a test double, say); the default one,
:class:`~plait.xds.translate.Translator`, also gets the cache's trust domain and bundle."""


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
        for step in self.recompute_steps(max(1, len(self._live))):
            woken.extend(step)
        return woken

    def recompute_steps(self, batch: int = RECOMPUTE_BATCH) -> Iterator[list[Watch]]:
        """:meth:`recompute` in steps: each step refreshes (up to) ``batch`` of the watches
        live when the run started, skipping those closed since, wakes those that now have
        something to send, and yields them. Each refresh uses the newest inputs (see
        module docstring); the caller must run another recompute after inputs changed
        during a run, for the watches refreshed before the change."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        # let the previous snapshots go (the memo checks identity, so entries made from
        # here on, by pending() between steps or by a run started later, stay correct)
        self._digest_memo.clear()
        watches = list(self._live.values())
        for start in range(0, len(watches), batch):
            woken: list[Watch] = []
            for watch in watches[start : start + batch]:
                if not watch.connected or self._live.get(watch.stream_id) is not watch:
                    continue  # closed during the run
                self._refresh(watch)
                if self._has_pending(watch):
                    woken.append(watch)
                    watch.wake()
            yield woken

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
            state.applied(version_info, nack=True)
        else:
            state.applied(version_info)
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

    def _has_pending(self, watch: Watch) -> bool:
        return any(watch.wanted(t) is not None for t in PUSH_ORDER)

    def pending(self, watch: Watch) -> list[PushResponse]:
        """Responses to send now, in ``PUSH_ORDER``; each is recorded as sent.

        Sequencing is planned once, from the state before this batch: a type it holds
        back goes out on a later call, after the ACKs it waits for."""
        if not self.serving:
            return []  # syncing: the client keeps what it has
        out: list[PushResponse] = []
        # (every change of the snapshot or of the protocol state invalidates the plan)
        wanted_now = {t: watch.wanted(t) for t in PUSH_ORDER}
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
