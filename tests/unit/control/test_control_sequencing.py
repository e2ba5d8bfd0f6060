"""Make-before-break across ACKs (plait.control.sequencing via the SnapshotCache).

Playbook style: a model proxy (mirroring plait.proxy.xds_client/xds_decode: it applies
responses in order, ACKs or NACKs them, and re-subscribes EDS/RDS by the names its applied
config needs) talks to a real SnapshotCache with the real translator. Events go in
(config changes, deliveries, ACKs, NACKs, reconnects); responses come out; after every
response the proxy applies, its config must be consistent: every cluster its applied
listeners and routes name is applied, and every such EDS cluster has its endpoints.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plait.control.cache import NACKED, STALE, SYNCED, PushResponse, SnapshotCache
from plait.control.sequencing import TypeView, plan
from plait.model.config import ConfigSet
from plait.model.resources import Route, Service
from plait.xds.builders import http_connection_manager_of
from plait.xds.inputs import InboundPort, Instance, NodeInfo
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

ORDERS = "outbound|orders"
V1, V2, V3 = (f"outbound|orders|version={v}" for v in ("v1", "v2", "v3"))
EDS_TYPE = 3

NODE = NodeInfo(
    "host-frontend",
    plait_proxy=True,
    outbound_port=15001,
    inbound=(InboundPort("frontend", "127.0.0.1", 15002, app_port=9001),),
)


def service(name: str, **spec: Any) -> Service:
    return Service.model_validate({"metadata": {"name": name}, "spec": spec})


def config(*backends: dict[str, int], timeout: str = "5s", connect: str = "1s") -> ConfigSet:
    """frontend and orders; with ``backends`` ({version: weight}), a Route for orders."""
    services = {
        "frontend": service("frontend"),
        "orders": service("orders", connectTimeout=connect),
    }
    routes = {}
    if backends:
        rules = [
            {
                "backends": [{"subset": {"version": v}, "weight": w} for v, w in sorted(b.items())],
                "timeout": timeout,
            }
            for b in backends
        ]
        if len(rules) > 1:  # the first rule for canaries only
            rules[0]["match"] = {"headers": [{"name": "x-canary", "exact": "1"}]}
        routes["orders-split"] = Route.model_validate(
            {"metadata": {"name": "orders-split"}, "spec": {"service": "orders", "rules": rules}}
        )
    return ConfigSet(services=services, routes=routes)


def instances(*extra_ports: int) -> list[Instance]:
    out = [
        Instance("frontend", "host-frontend", "127.0.0.1", 15002),
        Instance("orders", "host-o1", "127.0.0.1", 16001, labels={"version": "v1"}),
        Instance("orders", "host-o2", "127.0.0.1", 16002, labels={"version": "v2"}),
        Instance("orders", "host-o3", "127.0.0.1", 16003, labels={"version": "v3"}),
    ]
    out.extend(
        Instance("orders", f"host-x{p}", "127.0.0.1", p, labels={"version": "v2"})
        for p in extra_ports
    )
    return out


def name_of(type_url: str, message: Any) -> str:
    return str(message.cluster_name if type_url == ENDPOINT else message.name)


def route_clusters(route_config: Any) -> set[str]:
    out = set()
    for vhost in route_config.virtual_hosts:
        for r in vhost.routes:
            if r.route.cluster:
                out.add(r.route.cluster)
            out.update(w.name for w in r.route.weighted_clusters.clusters)
    return out


class ModelProxy:
    """A plait proxy's xDS client, in memory (see plait.proxy.xds_client)."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self.applied: dict[str, dict[str, Any]] = {
            t: {} for t in (SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE)
        }
        self.versions: dict[str, str] = {}
        self.log: list[str] = []  # "send CDS", "ACK RDS", ... for playbook assertions
        self.connect()

    # -- the stream ----------------------------------------------------------------------

    def connect(self) -> None:
        self.watch = self.cache.open_watch(NODE, lambda: None)
        self.inbox: deque[PushResponse] = deque()
        self.nonces: dict[str, str] = {}
        self.subscribed: dict[str, list[str]] = {}
        for t in (SECRET, CLUSTER, LISTENER):
            self.request(t)
        self.resubscribe()

    def reconnect(self) -> None:
        self.cache.close_watch(self.watch)
        self.connect()

    def names(self, type_url: str) -> list[str]:
        if type_url == ENDPOINT:
            return sorted(
                c.eds_cluster_config.service_name or c.name
                for c in self.applied[CLUSTER].values()
                if c.type == EDS_TYPE
            )
        if type_url == ROUTE:
            names = set()
            for listener in self.applied[LISTENER].values():
                hcm = http_connection_manager_of(listener)
                if hcm is not None and hcm.HasField("rds"):
                    names.add(hcm.rds.route_config_name)
            return sorted(names)
        return []

    def request(self, type_url: str, error: str | None = None) -> None:
        named = type_url in (ENDPOINT, ROUTE)
        names = self.names(type_url) if named else []
        self.cache.on_request(
            self.watch,
            type_url,
            self.versions.get(type_url, ""),
            self.nonces.get(type_url, ""),
            names,
            error,
        )
        if named:
            self.subscribed[type_url] = names
        self.pump()  # the ADS writer wakes on every request

    def resubscribe(self) -> None:
        for t in (ENDPOINT, ROUTE):
            names, previous = self.names(t), self.subscribed.get(t)
            if names != previous and (previous is not None or names):
                self.request(t)

    def pump(self) -> None:
        for p in self.cache.pending(self.watch):
            self.log.append(f"send {short(p.type_url)}")
            self.inbox.append(p)

    # -- applying ------------------------------------------------------------------------

    def deliver(self, nack: bool = False) -> PushResponse | None:
        if not self.inbox:
            return None
        p = self.inbox.popleft()
        self.nonces[p.type_url] = p.nonce
        if nack:
            self.log.append(f"NACK {short(p.type_url)}")
            self.request(p.type_url, error="refused")
            return p
        got = {name_of(p.type_url, r): r for r in p.resources}
        if p.type_url in (ENDPOINT, ROUTE):
            keep = set(self.names(p.type_url))
            got = {k: v for k, v in got.items() if k in keep}
        self.applied[p.type_url] = got
        if p.type_url == CLUSTER:
            keep = set(self.names(ENDPOINT))
            self.applied[ENDPOINT] = {k: v for k, v in self.applied[ENDPOINT].items() if k in keep}
        if p.type_url == LISTENER:
            keep = set(self.names(ROUTE))
            self.applied[ROUTE] = {k: v for k, v in self.applied[ROUTE].items() if k in keep}
        self.versions[p.type_url] = p.version
        self.check_consistent()
        self.log.append(f"ACK {short(p.type_url)}")
        self.request(p.type_url)
        self.resubscribe()
        return p

    def drain(self, limit: int = 100) -> None:
        for _ in range(limit):
            if self.deliver() is None:
                return
        raise AssertionError("the sequence does not settle")

    # -- what the proxy has ----------------------------------------------------------------

    def used_clusters(self) -> set[str]:
        used: set[str] = set()
        for listener in self.applied[LISTENER].values():
            hcm = http_connection_manager_of(listener)
            if hcm is not None and hcm.HasField("route_config"):
                used |= route_clusters(hcm.route_config)
        for rc in self.applied[ROUTE].values():
            used |= route_clusters(rc)
        return used

    def check_consistent(self) -> None:
        used = self.used_clusters()
        clusters = self.applied[CLUSTER]
        assert used <= set(clusters), f"routes name unknown clusters {used - set(clusters)}"
        for name in used:
            if clusters[name].type == EDS_TYPE:
                assert name in self.applied[ENDPOINT], f"no endpoints for {name}"

    def route_targets(self) -> set[str]:
        return set().union(*(route_clusters(rc) for rc in self.applied[ROUTE].values()))


def short(type_url: str) -> str:
    return {SECRET: "SDS", CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS"}[type_url]


def settled_proxy(cfg: ConfigSet) -> tuple[SnapshotCache, ModelProxy]:
    cache = SnapshotCache(cfg, instances())
    proxy = ModelProxy(cache)
    proxy.drain()
    assert proxy.watch.status() == SYNCED
    return cache, proxy


def after(proxy: ModelProxy, mark: int) -> list[str]:
    """What the server sent since ``mark`` (the empty trust bundle left out)."""
    return [e for e in proxy.log[mark:] if e.startswith(("send", "NACK")) and "SDS" not in e]


# -- playbooks -------------------------------------------------------------------------


def test_fresh_stream_routes_wait_for_clusters_and_endpoints() -> None:
    cache = SnapshotCache(config({"v1": 90, "v2": 10}), instances())
    proxy = ModelProxy(cache)
    assert after(proxy, 0) == ["send CDS"]  # listeners name clusters not applied yet: held
    proxy.drain()
    assert after(proxy, 0) == ["send CDS", "send LDS", "send EDS", "send RDS"]
    assert proxy.watch.status() == SYNCED
    assert proxy.route_targets() == {ORDERS, V1, V2, "outbound|frontend", ORDERS}


def test_adding_a_subset_sends_cluster_then_endpoints_then_routes() -> None:
    cache, proxy = settled_proxy(config({"v2": 100}))
    mark = len(proxy.log)
    cache.set_inputs(config({"v1": 90, "v2": 10}))
    proxy.pump()
    assert after(proxy, mark) == ["send CDS"]  # RDS is held until V1 is applied
    assert proxy.watch.status() == STALE
    assert V1 in {c.name for c in proxy.inbox[0].resources}
    proxy.deliver()  # CDS ACK, then the EDS subscription for V1
    assert after(proxy, mark) == ["send CDS", "send EDS"]
    proxy.deliver()  # EDS ACK: now the routes
    assert after(proxy, mark)[-1] == "send RDS"
    proxy.drain()
    assert proxy.route_targets() >= {V1, V2}
    assert proxy.watch.status() == SYNCED


def test_removing_a_subset_sends_routes_first_and_clusters_after_their_ack() -> None:
    cache, proxy = settled_proxy(config({"v1": 90, "v2": 10}))
    cds_before = proxy.versions[CLUSTER]
    mark = len(proxy.log)
    cache.set_inputs(config({"v2": 100}))
    proxy.pump()
    assert after(proxy, mark) == ["send RDS"]  # CDS keeps V1 while routes name it
    assert proxy.watch.types[CLUSTER].sent_version == cds_before
    proxy.deliver()  # RDS ACK: V1 is no longer named: the final CDS, and EDS without V1
    assert after(proxy, mark) == ["send RDS", "send CDS", "send EDS"]
    assert V1 not in {c.name for c in proxy.inbox[0].resources}
    assert V1 not in {c.cluster_name for c in proxy.inbox[1].resources}
    proxy.drain()
    assert V1 not in proxy.applied[CLUSTER] and V1 not in proxy.applied[ENDPOINT]
    assert proxy.watch.status() == SYNCED
    assert proxy.versions[CLUSTER] == cache.status_rows()[0]["types"][CLUSTER]["acked"]


def test_swapping_subsets_is_make_then_routes_then_break() -> None:
    cache, proxy = settled_proxy(config({"v1": 100}))
    mark = len(proxy.log)
    cache.set_inputs(config({"v2": 100}))
    proxy.pump()
    (make,) = proxy.inbox
    assert make.type_url == CLUSTER
    assert {V1, V2} <= {c.name for c in make.resources}  # union of old and new
    proxy.drain()
    assert after(proxy, mark) == ["send CDS", "send EDS", "send RDS", "send CDS", "send EDS"]
    assert V1 not in proxy.applied[CLUSTER] and V1 not in proxy.applied[ENDPOINT]
    assert proxy.route_targets() == {V2, "outbound|frontend", ORDERS}
    assert proxy.watch.status() == SYNCED


def test_a_nack_mid_sequence_holds_surfaces_and_the_next_change_restarts() -> None:
    cache, proxy = settled_proxy(config({"v1": 100}))
    cache.set_inputs(config({"v2": 100}))
    proxy.pump()
    proxy.deliver(nack=True)  # the "make" CDS is refused
    assert proxy.inbox == deque()  # nothing else: routes stay held, nothing re-sent
    assert proxy.watch.status() == NACKED
    assert cache.status_rows()[0]["types"][CLUSTER]["status"] == NACKED
    assert proxy.route_targets() == {V1, "outbound|frontend", ORDERS}  # kept what it had
    cache.set_inputs(config({"v2": 100}))  # no change for this node: still held
    assert proxy.watch.status() == NACKED and not cache.pending(proxy.watch)
    cache.set_inputs(config({"v2": 100}, connect="2s"))  # the input changes
    proxy.pump()
    assert [p.type_url for p in proxy.inbox] == [CLUSTER]
    proxy.drain()
    assert proxy.route_targets() == {V2, "outbound|frontend", ORDERS}
    assert proxy.watch.status() == SYNCED


def test_a_nacked_route_keeps_the_clusters_it_names() -> None:
    cache, proxy = settled_proxy(config({"v1": 100}))
    cache.set_inputs(config({"v2": 100}))
    proxy.pump()
    proxy.deliver()  # make CDS
    proxy.deliver()  # EDS
    assert proxy.inbox[0].type_url == ROUTE
    proxy.deliver(nack=True)
    proxy.drain()
    assert V1 in proxy.applied[CLUSTER] and proxy.route_targets() == {
        V1,
        "outbound|frontend",
        ORDERS,
    }
    assert proxy.watch.status() == NACKED


def test_a_reconnect_at_the_current_versions_sends_nothing() -> None:
    cache, proxy = settled_proxy(config({"v1": 90, "v2": 10}))
    mark = len(proxy.log)
    proxy.reconnect()
    assert after(proxy, mark) == []
    assert proxy.watch.status() == SYNCED
    # and sequencing knows what the node has: a removal still goes routes first
    cache.set_inputs(config({"v2": 100}))
    proxy.pump()
    assert after(proxy, mark) == ["send RDS"]


def test_clients_naming_their_clusters_are_not_sequenced() -> None:
    views = {
        CLUSTER: TypeView(target={}, names=("a",)),
        ROUTE: TypeView(target={}, names=("r",)),
    }
    result = plan(views)
    assert not result.held and not result.retained


# -- the property ------------------------------------------------------------------------

VARIANTS: list[ConfigSet] = [
    config(),
    config({"v1": 100}),
    config({"v2": 100}),
    config({"v1": 90, "v2": 10}),
    config({"v3": 100}),
    config({"v2": 100}, {"v1": 100}),
    config({"v1": 50, "v3": 50}, timeout="2s"),
    config({"v2": 100}, connect="3s"),
]

events = st.lists(
    st.one_of(
        st.tuples(st.just("config"), st.integers(0, len(VARIANTS) - 1), st.integers(0, 2)),
        st.tuples(st.just("deliver"), st.booleans(), st.integers(0, 3)),
        st.tuples(st.just("reconnect"), st.just(False), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=st.integers(0, len(VARIANTS) - 1), script=events)
def test_applied_routes_always_name_applied_clusters_with_endpoints(
    start: int, script: list[tuple[str, Any, int]]
) -> None:
    cache = SnapshotCache(VARIANTS[start], instances())
    proxy = ModelProxy(cache)
    for kind, arg, n in script:
        if kind == "config":
            cache.set_inputs(VARIANTS[arg], instances(*range(17000, 17000 + n)))
            proxy.pump()
        elif kind == "deliver":
            # deliver n+1 responses; NACK the first one if told to (and only rarely)
            for i in range(n + 1):
                proxy.deliver(nack=arg and i == 0 and n == 3)
        else:
            proxy.reconnect()  # responses in flight are lost; the config is kept
    # liveness: a fresh stream (NACK state gone) settles at the final target
    proxy.reconnect()
    proxy.drain()
    assert proxy.watch.status() == SYNCED, cache.status_rows()
    snapshot = proxy.watch.snapshot
    assert snapshot is not None
    assert set(proxy.applied[CLUSTER]) == set(snapshot.subset(CLUSTER, None))
    assert set(proxy.applied[ROUTE]) == set(snapshot.subset(ROUTE, ["outbound"]))
    assert set(proxy.applied[ENDPOINT]) == set(proxy.names(ENDPOINT))
