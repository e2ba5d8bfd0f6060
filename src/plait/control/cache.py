"""The snapshot cache: per-node xDS snapshots and what each client has seen of them.

Theory of operation. The cache holds the inputs of translation (the current config and
the registry's instances). When either changes (:meth:`SnapshotCache.update_inputs`, then
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
- responses go out in ``PUSH_ORDER`` (clusters and endpoints before listeners and routes).

Status of a type, against its desired version: SYNCED (acked), NACKED (that version was
NACKed), STALE (sent and not yet acked, or not yet sent). A node is NACKED if any type is,
else STALE if any type is, else SYNCED.

Pure: no sockets, no clock. The ADS shell calls :meth:`open_watch`, :meth:`on_request`,
:meth:`pending` and :meth:`close_watch`; each watch carries a ``wake`` callback that the
cache calls when a recompute gives it something to send.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf.message import Message

from plait.model.config import ConfigSet
from plait.xds.inputs import Instance, NodeInfo
from plait.xds.types import ALL_TYPES, CLUSTER, LISTENER, PUSH_ORDER

log = logging.getLogger("plait.control.cache")

SYNCED = "SYNCED"
STALE = "STALE"
NACKED = "NACKED"

WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})
"""Types for which an empty ``resource_names`` list means "everything"."""


class SnapshotLike(Protocol):
    def version(self, type_url: str) -> str: ...

    def subset(self, type_url: str, names: Iterable[str] | None) -> dict[str, Any]: ...


class TranslatorLike(Protocol):
    def for_node(self, node: NodeInfo) -> Any: ...


TranslatorFactory = Callable[[ConfigSet, Sequence[Instance]], TranslatorLike]


def _default_translator(config: ConfigSet, instances: Sequence[Instance]) -> TranslatorLike:
    from plait.xds.translate import Translator

    return Translator(config, instances)


def content_version(resources: dict[str, Message]) -> str:
    """A content hash of the named resources (used for named subscriptions)."""
    h = hashlib.sha256()
    for name in sorted(resources):
        h.update(name.encode())
        h.update(b"\0")
        h.update(resources[name].SerializeToString(deterministic=True))
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass
class TypeState:
    """One resource type on one stream. ``names`` None = wildcard subscription."""

    names: tuple[str, ...] | None = None
    sent_version: str | None = None
    sent_nonce: str | None = None
    acked_version: str | None = None
    nacked_version: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class PushResponse:
    """A DiscoveryResponse to send: the ADS shell packs ``resources`` into ``Any``."""

    type_url: str
    version: str
    nonce: str
    resources: list[Message]


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
        resources = self.snapshot.subset(type_url, state.names)
        return content_version(resources), resources

    def type_status(self, type_url: str) -> str | None:
        state = self.types[type_url]
        desired, _ = self.desired_version(type_url)
        if desired is None:
            return None
        if state.acked_version == desired:
            return SYNCED
        if state.nacked_version == desired:
            return NACKED
        return STALE

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
        translator_factory: TranslatorFactory = _default_translator,
    ) -> None:
        self._factory = translator_factory
        self.config = config if config is not None else ConfigSet()
        self.instances: tuple[Instance, ...] = tuple(instances)
        self._translator: TranslatorLike | None = None
        self._ids = itertools.count(1)
        self._live: dict[int, Watch] = {}
        self._latest: dict[str, Watch] = {}  # node id -> its most recent stream

    # -- inputs ------------------------------------------------------------------------

    def set_inputs(
        self, config: ConfigSet | None = None, instances: Sequence[Instance] | None = None
    ) -> list[Watch]:
        """:meth:`update_inputs` then :meth:`recompute`."""
        self.update_inputs(config, instances)
        return self.recompute()

    def update_inputs(
        self, config: ConfigSet | None = None, instances: Sequence[Instance] | None = None
    ) -> None:
        """Replace config and/or instances. Cheap: streams opened from now on see them;
        the streams already open see them at the next :meth:`recompute`."""
        if config is not None:
            self.config = config
        if instances is not None:
            self.instances = tuple(instances)
        self._translator = None

    def recompute(self) -> list[Watch]:
        """Recompute every connected node's snapshot from the current inputs (one
        translator for all). Wakes, and returns, the watches that now have something to
        send."""
        woken: list[Watch] = []
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
        except Exception as exc:  # keep serving the last good snapshot
            log.exception("translation failed for node %s", watch.node.node_id)
            watch.translate_error = f"{type(exc).__name__}: {exc}"

    # -- streams -----------------------------------------------------------------------

    def open_watch(self, node: NodeInfo, wake: Callable[[], None]) -> Watch:
        watch = Watch(stream_id=next(self._ids), node=node, wake=wake)
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
            if state is None:
                state = watch.types[type_url] = TypeState()
            if version_info:
                state.acked_version = version_info
        elif not nonce:
            pass  # a subscription change sent before our response reached the client
        elif nonce != state.sent_nonce:
            return False  # answers an older response of ours: stale
        elif error_detail is not None:
            state.nacked_version = state.sent_version
            state.error = error_detail
            state.acked_version = version_info or None
        else:
            state.acked_version = version_info or None
            state.nacked_version = None
            state.error = None
        if not names and type_url in WILDCARD_TYPES:
            state.names = None
        else:
            state.names = tuple(sorted(set(names)))
        return True

    def _has_pending(self, watch: Watch) -> bool:
        return any(self._wanted(watch, t) is not None for t in PUSH_ORDER)

    def _wanted(self, watch: Watch, type_url: str) -> tuple[str, dict[str, Message]] | None:
        state = watch.types.get(type_url)
        if state is None:
            return None
        desired, resources = watch.desired_version(type_url)
        if desired is None or desired in (
            state.sent_version,
            state.acked_version,
            state.nacked_version,
        ):
            return None
        return desired, resources

    def pending(self, watch: Watch) -> list[PushResponse]:
        """Responses to send now, in ``PUSH_ORDER``; each is recorded as sent."""
        out: list[PushResponse] = []
        for type_url in PUSH_ORDER:
            wanted = self._wanted(watch, type_url)
            if wanted is None:
                continue
            version, resources = wanted
            state = watch.types[type_url]
            nonce = str(next(watch._nonces))
            state.sent_version, state.sent_nonce = version, nonce
            out.append(
                PushResponse(
                    type_url=type_url,
                    version=version,
                    nonce=nonce,
                    resources=[resources[name] for name in sorted(resources)],
                )
            )
        return out

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
