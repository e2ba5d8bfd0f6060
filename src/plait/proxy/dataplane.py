"""The data plane's live state: bound listeners, the applied config, clusters.

:class:`DataPlane` binds the listening sockets (before any config exists, so their real
ports can be reported to the control plane), and :meth:`DataPlane.apply` swaps in each
accepted :class:`~plait.proxy.runtime.ProxyConfig` as one :class:`Snapshot`: a Router
per listener (attached by listener name: ``outbound``, ``inbound|<svc>``) and a
:class:`ClusterState` per cluster. The swap is a single attribute assignment, so a
request sees either the old config or the new one, never a mix; a request in flight
keeps the cluster objects it already holds.

Cluster state outlives configs: a cluster that stays keeps its balancer (with the
endpoints' in-flight counters) and its connection pool (with idle keep-alive
connections); endpoints that leave have their idle connections closed.

The request path reads, per request, ``snapshot`` once, the listener's Router and the
chosen cluster: two dict lookups beyond the Router itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from plait.proxy.deadlines import Deadlines
from plait.proxy.http1 import Http1Server
from plait.proxy.inbound import InboundAcceptor
from plait.proxy.lb import DEFAULT_PANIC_THRESHOLD, Balancer, make_balancer
from plait.proxy.observe import Observer
from plait.proxy.peer_identity import trust_domain_of
from plait.proxy.proxy_status import hop_name
from plait.proxy.router import Router
from plait.proxy.runtime import (
    Cluster,
    Direction,
    Endpoint,
    ProxyConfig,
    RbacFilter,
    Route,
    TlsMode,
)
from plait.proxy.tls import TRUST_BUNDLE, LocalIdentity, TlsContexts
from plait.proxy.upstream import UpstreamPool
from plait.proxy.via import via_entry
from plait.proxy.write_behind import WriteBehind

log = logging.getLogger("plait.proxy.dataplane")


def uuid4_hex() -> str:
    """A random (version 4) UUID as 32 hex digits; ``uuid.uuid4().hex`` at a third the cost."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    return b.hex()


# Request ids need uniqueness, not secrecy: a PRNG seeded from the OS (again in every
# forked child) gives version-4-shaped UUIDs without a getrandom syscall per request.
_ids = random.Random(os.urandom(32))
_getrandbits = _ids.getrandbits
_UUID_MASK = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID_BITS = (0x4 << 76) | (0x2 << 62)


def fast_request_id() -> str:
    """A version 4 UUID as 32 hex digits, from a seeded PRNG (no syscall)."""
    return "%032x" % ((_getrandbits(128) & _UUID_MASK) | _UUID_BITS)


_BATCH = 64  # request ids made per draw from the PRNG
_BATCH_DIGITS: Final = 32 * _BATCH
_BATCH_FORMAT: Final = b"%%0%dx" % _BATCH_DIGITS
_BATCH_MASK: Final = sum(_UUID_MASK << (128 * i) for i in range(_BATCH))
_BATCH_BITS: Final = sum(_UUID_BITS << (128 * i) for i in range(_BATCH))


class _IdBatch:
    """Request ids as ASCII bytes, made :data:`_BATCH` at a time: one draw of random
    bits, version and variant set by one mask for all, one formatting; a request then
    takes a slice. Each slice is what :func:`fast_request_id` gives for 128 of those
    bits (its 32 digits of the batch's, zero-padded, number)."""

    __slots__ = ("digits", "left")

    def __init__(self) -> None:
        self.digits = b""
        self.left = 0  # digits not handed out yet, from the start of ``digits``

    def take(self) -> bytes:
        left = self.left
        if left == 0:
            bits = (_getrandbits(128 * _BATCH) & _BATCH_MASK) | _BATCH_BITS
            self.digits = _BATCH_FORMAT % bits
            left = _BATCH_DIGITS
        self.left = left - 32
        return self.digits[left - 32 : left]


_id_batch: Final = _IdBatch()


def _after_fork() -> None:
    """A forked worker draws its own ids: new seed, and none of the parent's batch."""
    _ids.seed(os.urandom(32))
    _id_batch.left = 0


os.register_at_fork(after_in_child=_after_fork)


def _fast_request_id_bytes() -> bytes:
    """:func:`fast_request_id` as ASCII bytes (what exchanges use), from a batch."""
    return _id_batch.take()


@dataclass(eq=False)
class ListenerSlot:
    """A bound listening socket, known by its xDS listener name."""

    name: str
    direction: Direction
    service: str | None  # inbound: the local service it fronts
    hop: str  # Proxy-Status hop name: "<node>/<direction>"
    source: str  # the access log / metrics source service for requests it takes
    address: str = ""
    port: int = 0
    server: asyncio.Server | InboundAcceptor | None = field(default=None, repr=False)
    # mTLS (docs/mtls.md), set from the applied config: how an inbound listener accepts
    tls_mode: TlsMode = "plaintext"
    peer_trust_domain: str | None = None
    # outbound: the local service whose identity mTLS requests from this listener use
    identity: str | None = None


class ClusterState:
    """One cluster's config, balancer and connection pool."""

    __slots__ = ("balancer", "config", "name", "pool", "service")

    def __init__(self, config: Cluster, balancer: Balancer, pool: UpstreamPool) -> None:
        self.name = config.name
        self.config = config
        self.balancer = balancer
        self.pool = pool
        parts = config.name.split("|")
        self.service = parts[1] if len(parts) > 1 else config.name


# Snapshot.targets' entries: (memo, listener name, route, cluster, head before, after)
Target = tuple[object, str, Route, ClusterState, bytes, bytes]


@dataclass(frozen=True)
class Snapshot:
    """One applied config and what the request path needs from it."""

    config: ProxyConfig
    routers: dict[str, Router]
    clusters: dict[str, ClusterState]
    rbac: dict[str, tuple[RbacFilter, ...]] = field(default_factory=dict)  # by listener
    # Per remembered request head (http1_whole), by id (the entry keeps the head alive):
    # (head, listener, route, cluster, upstream head before and after the new request
    # id). Filled by Dispatch.start; a new config is a new Snapshot, so never stale.
    # Typed field by field, so that the compiled request path reads them natively.
    targets: dict[int, Target] = field(default_factory=dict)


def cluster_endpoints(config: ProxyConfig, cluster: Cluster) -> Sequence[Endpoint]:
    if cluster.discovery == "static":
        return cluster.endpoints
    return config.endpoints.get(cluster.name, ())


class DataPlane(Observer):
    """Listeners, routers, clusters and the connections they serve."""

    def __init__(
        self,
        node_id: str,
        *,
        local_services: Sequence[str] = (),
        metrics: Any = None,
        access_log: Any = None,
        rng: random.Random | None = None,
        request_id: Callable[[], str] = fast_request_id,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        max_idle_per_endpoint: int = 64,
        upstream_idle_timeout: float = 60.0,
        downstream_idle_timeout: float = 300.0,
        request_head_timeout: float = 30.0,
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        reuse_port: bool = False,
        hold_writes: bool = True,
    ) -> None:
        self.node_id = node_id
        # a worker of ``plait proxy --workers N``: listeners on a fixed port join the
        # port's SO_REUSEPORT group, shared with the other workers (plait.proxy.workers)
        self.reuse_port = reuse_port
        self.panic_threshold = panic_threshold  # percent healthy (plait.proxy.lb)
        self.local_services = tuple(local_services)
        self._init_observer(node_id, metrics, access_log)
        self.rng = rng or random.Random()
        self.new_request_id = request_id
        # what exchanges call: the id as ASCII bytes (the default made without a str)
        self.new_request_id_bytes: Callable[[], bytes] = (
            _fast_request_id_bytes
            if request_id is fast_request_id
            else lambda: request_id().encode("ascii")
        )
        self.clock = clock
        self.wall_clock = wall_clock
        self.via_text = via_entry(node_id)
        self.via = self.via_text.encode("ascii")
        self.listeners: dict[str, ListenerSlot] = {}
        self.connections: set[Http1Server] = set()
        self.snapshot: Snapshot | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by bind
        # per-request timeouts (route, per try): one loop timer for all, set by bind
        self.timers: Deadlines = None  # type: ignore[assignment]
        # writes to clients held to the loop iteration's end (plait.proxy.write_behind),
        # set by bind when hold_writes; None: every write goes out at once
        self.hold_writes = hold_writes
        self.write_behind: WriteBehind | None = None
        self._clusters: dict[str, ClusterState] = {}
        self._max_idle = max_idle_per_endpoint
        self._idle_timeout = upstream_idle_timeout
        self.downstream_idle_timeout = downstream_idle_timeout
        self.request_head_timeout = request_head_timeout
        self._sweeper: asyncio.Task[None] | None = None
        self.tls = TlsContexts()

    # -- listeners -----------------------------------------------------------------------

    async def bind(
        self,
        name: str,
        address: str,
        port: int,
        direction: Direction,
        service: str | None = None,
        *,
        listen: bool = True,
    ) -> tuple[str, int]:
        """Listen on ``address:port`` (0 = any free port) as listener ``name``.

        Returns the bound address. Requests are answered 503 until a config names it.
        ``listen=False``: bind only, so the kernel gives this socket no connections
        until :meth:`start_serving` (a replaced worker, until it has a config: the other
        workers of its ``SO_REUSEPORT`` group take them meanwhile).
        """
        self.loop = asyncio.get_running_loop()
        if self.timers is None or self.timers.loop is not self.loop:
            self.timers = Deadlines(self.loop)
        behind = self.write_behind
        if self.hold_writes and (behind is None or behind.loop is not self.loop):
            self.write_behind = behind = WriteBehind(self.loop)
            for state in self._clusters.values():  # a config applied before this bind
                state.pool.write_behind = behind
        if name in self.listeners:
            raise ValueError(f"listener {name!r} is already bound")
        identity = None
        if direction == "outbound":
            # outbound|<svc> speaks for <svc>; the shared listener only for a lone service
            only = self.local_services[0] if len(self.local_services) == 1 else None
            identity = service or only
            source = identity or "unknown"
        else:
            source = "unknown"
        slot = ListenerSlot(name, direction, service, hop_name(self.node_id, direction), source)
        slot.identity = identity
        server: asyncio.Server | InboundAcceptor
        if direction == "inbound":  # its TLS mode comes with the config: decided per accept
            server = await InboundAcceptor.bind(self, slot, address, port, listen=listen)
        else:
            server = await self.loop.create_server(
                lambda: Http1Server(self, slot),
                address,
                port,
                reuse_address=True,
                reuse_port=bool(self.reuse_port and port),
                backlog=1024,
                start_serving=listen,
            )
        sockname = server.sockets[0].getsockname()
        slot.address, slot.port = sockname[0], sockname[1]
        slot.server = server
        self.listeners[name] = slot
        if self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep(), name="dataplane-sweep")
        return slot.address, slot.port

    async def start_serving(self) -> None:
        """Listen on every listener bound with ``listen=False``."""
        for slot in self.listeners.values():
            server = slot.server
            if server is not None and not server.is_serving():
                await server.start_serving()

    async def _sweep(self) -> None:
        """Downstream timeouts: idle keep-alive connections and slow request heads."""
        idle, head = self.downstream_idle_timeout, self.request_head_timeout
        interval = min(5.0, max(0.02, min(idle, head) / 4))
        while True:
            await asyncio.sleep(interval)
            now = self.clock()
            for conn in list(self.connections):
                conn.sweep(now, idle, head)

    # -- config --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once a config with listeners is applied."""
        snap = self.snapshot
        return snap is not None and bool(snap.config.listeners)

    def apply(self, config: ProxyConfig) -> None:
        """Make ``config`` the one requests use, keeping cluster state that carries over."""
        routers: dict[str, Router] = {}
        rbac: dict[str, tuple[RbacFilter, ...]] = {}
        secret = config.secrets.get(TRUST_BUNDLE)
        self.tls.set_sds_bundle(secret.trusted_ca if secret is not None else None)
        for name, slot in self.listeners.items():
            listener = config.listeners.get(name)
            if listener is None:
                continue
            if slot.direction == "inbound":
                slot.tls_mode = listener.tls_mode
                prefix = listener.tls.peer_san_prefix if listener.tls is not None else None
                slot.peer_trust_domain = trust_domain_of(prefix or "") or self._own_domain()
                if listener.rbac:
                    rbac[name] = listener.rbac
            table = listener.route_table
            if table is None and listener.route_config_name is not None:
                table = config.route_tables.get(listener.route_config_name)
            if table is not None:
                routers[name] = Router(table)
        for name in config.listeners:
            if name not in self.listeners:
                log.warning("listener %r from the control plane has no bound socket", name)

        clusters: dict[str, ClusterState] = {}
        old = self._clusters
        for name, cluster in config.clusters.items():
            endpoints = cluster_endpoints(config, cluster)
            state = old.get(name)
            if state is None:
                pool = UpstreamPool(
                    name,
                    max_idle=self._max_idle,
                    idle_timeout=self._idle_timeout,
                    clock=self.clock,
                    on_connect=self._count_connect,
                )
                pool.write_behind = self.write_behind
                balancer = make_balancer(
                    cluster.lb_policy, endpoints, self.rng, panic_threshold=self.panic_threshold
                )
                state = ClusterState(cluster, balancer, pool)
            else:
                if state.config.lb_policy != cluster.lb_policy:
                    state.balancer = make_balancer(
                        cluster.lb_policy,
                        endpoints,
                        self.rng,
                        previous=state.balancer,
                        panic_threshold=self.panic_threshold,
                    )
                else:
                    state.balancer.update(endpoints)
                state.config = cluster
            state.pool.retain((e.address, e.port) for e in endpoints)
            clusters[name] = state
        for name, state in old.items():
            if name not in clusters:
                state.pool.close()
        self._clusters = clusters
        self.snapshot = Snapshot(config, routers, clusters, rbac)

    def _own_domain(self) -> str | None:
        for ident in self.tls.identities.values():
            return trust_domain_of(ident.spiffe_id)
        return None

    # -- identities and TLS --------------------------------------------------------------

    def set_identity(self, ident: LocalIdentity) -> None:
        """A local service's new certificate: the next accepts and connects use it."""
        self.tls.set_identity(ident)
        for slot in self.listeners.values():
            if slot.direction == "inbound" and slot.peer_trust_domain is None:
                slot.peer_trust_domain = trust_domain_of(ident.spiffe_id)

    def tls_event(self, slot: ListenerSlot, result: str, reason: str = "") -> None:
        """An inbound TLS connection: ok, rejected (peer checks), failed (handshake)."""
        if self.metrics is not None:
            self.metrics.inc(
                "plait_tls_handshakes_total",
                {"listener": slot.name, "result": result},
                help="Inbound TLS connections by listener and result (ok, rejected: the "
                "peer failed the identity checks, failed: the handshake failed, "
                "no_identity: no certificate yet).",
            )
        if result != "ok":
            log.info("%s: TLS connection %s: %s", slot.name, result, reason)

    def rbac_denied(self, slot: ListenerSlot, peer: str | None, shadow: bool) -> None:
        if self.metrics is not None:
            self.metrics.inc(
                "plait_rbac_denied_total",
                {
                    "listener": slot.name,
                    "destination": slot.service or "unknown",
                    "peer": peer or "plaintext",
                    "mode": "audit" if shadow else "enforce",
                },
                help="Requests an RBAC policy denied (mode enforce) or would have denied "
                "(mode audit, let through), by listener and peer identity.",
            )

    def _count_connect(self, cluster: str, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.upstream_connect(cluster, ok)

    def clusters_view(self) -> dict[str, Any]:
        """Per cluster: policy, endpoints with health and load, connection pool."""
        out: dict[str, Any] = {}
        for name, state in sorted(self._clusters.items()):
            out[name] = {
                "lb_policy": state.config.lb_policy,
                "discovery": state.config.discovery,
                "connect_timeout": state.config.connect_timeout,
                "panic": state.balancer.panic,
                "endpoints": state.balancer.snapshot(),
                "pool": state.pool.snapshot(),
            }
        return out

    def config_dump(self) -> dict[str, Any]:
        """The applied ProxyConfig as plain data (derived lookup tables left out)."""
        snap = self.snapshot
        if snap is None:
            return {}
        data = dataclasses.asdict(snap.config)
        tables = list(data.get("route_tables", {}).values())
        tables += [
            lst["route_table"] for lst in data.get("listeners", {}).values() if lst["route_table"]
        ]
        for table in tables:
            table.pop("by_domain", None)
            table.pop("wildcard", None)
        return data

    # -- shutdown ------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        for slot in self.listeners.values():
            if slot.server is not None:
                slot.server.close()

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` s), close all."""
        self.stop_accepting()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            conn.drain()
        deadline = self.loop.time() + grace if self.loop is not None else 0.0
        while self.connections and self.loop is not None and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.tunnel is not None:
                conn.tunnel.abort()
            conn.transport.abort()
        for state in self._clusters.values():
            state.pool.close()
