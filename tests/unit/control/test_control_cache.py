"""Snapshot cache: when to reply, ACK/NACK bookkeeping, SYNCED/STALE/NACKED.

A fake translator serves a "world" the test edits (type -> name -> message), so each
test says exactly which resources changed; one test runs the real translator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

from plait.control.cache import NACKED, STALE, SYNCED, PushResponse, SnapshotCache, Watch
from plait.model.config import ConfigSet
from plait.model.resources import Service
from plait.xds.inputs import InboundPort, Instance, NodeInfo
from plait.xds.snapshot import Snapshot
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

World = dict[str, dict[str, Any]]


def cluster(name: str, timeout_s: int = 1) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name)
    c.connect_timeout.seconds = timeout_s
    return c


def cla(name: str, *ports: int) -> endpoint_pb2.ClusterLoadAssignment:
    a = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    group = a.endpoints.add()
    for port in ports:
        sa = group.lb_endpoints.add().endpoint.address.socket_address
        sa.address, sa.port_value = "127.0.0.1", port
    return a


def world() -> World:
    return {
        CLUSTER: {
            "outbound|orders": cluster("outbound|orders"),
            "outbound|users": cluster("outbound|users"),
        },
        ENDPOINT: {
            "outbound|orders": cla("outbound|orders", 1),
            "outbound|users": cla("outbound|users", 2),
        },
        LISTENER: {"outbound": listener_pb2.Listener(name="outbound")},
        ROUTE: {"outbound": route_pb2.RouteConfiguration(name="outbound")},
    }


class FakeTranslator:
    def __init__(self, w: World, fail: bool = False) -> None:
        self.w = {t: dict(items) for t, items in w.items()}
        self.fail = fail

    def for_node(self, node: NodeInfo) -> Snapshot:
        if self.fail:
            raise RuntimeError("translator bug")
        return Snapshot(resources=self.w)


class Harness:
    def __init__(self, w: World | None = None) -> None:
        self.world = w if w is not None else world()
        self.fail = False
        self.calls = 0
        self.cache = SnapshotCache(ConfigSet(), [], translator_factory=self._factory)
        self.wakes: list[str] = []

    def _factory(self, cfg: ConfigSet, instances: Sequence[Instance]) -> FakeTranslator:
        self.calls += 1
        return FakeTranslator(self.world, self.fail)

    def connect(self, node_id: str = "host-a") -> Watch:
        return self.cache.open_watch(
            NodeInfo(node_id, plait_proxy=True), lambda: self.wakes.append(node_id)
        )

    def push(self) -> list[Watch]:
        """The world changed: recompute."""
        return self.cache.set_inputs(config=ConfigSet())

    def request(
        self,
        w: Watch,
        type_url: str,
        names: Sequence[str] = (),
        version: str = "",
        nonce: str = "",
        error: str | None = None,
    ) -> bool:
        return self.cache.on_request(w, type_url, version, nonce, list(names), error)

    def ack(self, w: Watch, sent: PushResponse, names: Sequence[str] = ()) -> None:
        self.request(w, sent.type_url, names, sent.version, sent.nonce)

    def nack(self, w: Watch, sent: PushResponse, error: str, names: Sequence[str] = ()) -> None:
        prior = w.types[sent.type_url].acked_version or ""
        self.request(w, sent.type_url, names, prior, sent.nonce, error)


def by_type(pushes: list[PushResponse]) -> dict[str, PushResponse]:
    return {p.type_url: p for p in pushes}


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_first_requests_are_answered_clusters_before_listeners(h: Harness) -> None:
    w = h.connect()
    h.request(w, LISTENER)  # even when LDS is asked for first
    h.request(w, CLUSTER)
    pushes = h.cache.pending(w)
    assert [p.type_url for p in pushes] == [CLUSTER, LISTENER]
    assert [c.name for c in pushes[0].resources] == ["outbound|orders", "outbound|users"]
    assert len({p.nonce for p in pushes}) == 2
    assert w.status() == STALE
    assert h.cache.pending(w) == []  # sent, in flight: not sent again


def test_ack_makes_synced_and_unchanged_types_are_not_resent(h: Harness) -> None:
    w = h.connect()
    h.request(w, CLUSTER)
    h.request(w, LISTENER)
    for sent in h.cache.pending(w):
        h.ack(w, sent)
    assert w.status() == SYNCED
    assert h.push() == []  # nothing changed: nobody is woken
    assert h.wakes == []
    assert h.cache.pending(w) == []
    assert w.status() == SYNCED


def test_only_the_changed_type_is_pushed(h: Harness) -> None:
    w = h.connect()
    h.request(w, CLUSTER)
    h.request(w, LISTENER)
    first = by_type(h.cache.pending(w))
    for sent in first.values():
        h.ack(w, sent)
    h.world[LISTENER]["inbound|orders"] = listener_pb2.Listener(name="inbound|orders")
    assert h.push() == [w]
    assert h.wakes == ["host-a"]
    assert w.status() == STALE  # a newer snapshot not yet sent
    again = h.cache.pending(w)
    assert [p.type_url for p in again] == [LISTENER]
    assert again[0].version != first[LISTENER].version
    h.ack(w, again[0])
    assert w.status() == SYNCED


def test_nack_is_recorded_and_the_version_is_not_resent(h: Harness) -> None:
    w = h.connect()
    h.request(w, CLUSTER)
    (cds,) = h.cache.pending(w)
    h.ack(w, cds)
    h.world[CLUSTER]["outbound|orders"] = cluster("outbound|orders", timeout_s=5)
    h.push()
    (bad,) = h.cache.pending(w)
    h.nack(w, bad, "Cluster 'outbound|orders': lb_policy: MAGLEV is not supported")
    assert w.status() == NACKED
    state = w.types[CLUSTER]
    assert (state.sent_version, state.acked_version) == (bad.version, cds.version)
    assert state.error == "Cluster 'outbound|orders': lb_policy: MAGLEV is not supported"
    row = h.cache.status_rows()[0]
    assert row["status"] == NACKED
    assert row["types"][CLUSTER]["error"] == state.error
    # Not re-sent: not right away, not on a recompute that changes nothing for it.
    assert h.cache.pending(w) == []
    h.wakes.clear()
    assert h.push() == []
    assert h.cache.pending(w) == []
    # The input changes: a new version goes out; its ACK clears the error.
    h.world[CLUSTER]["outbound|orders"] = cluster("outbound|orders", timeout_s=2)
    assert h.push() == [w]
    (fixed,) = h.cache.pending(w)
    assert fixed.version not in (bad.version, cds.version)
    assert w.status() == STALE
    h.ack(w, fixed)
    assert w.status() == SYNCED
    assert w.types[CLUSTER].error is None


def test_reverting_to_what_the_client_kept_after_a_nack_is_synced(h: Harness) -> None:
    w = h.connect()
    h.request(w, CLUSTER)
    (good,) = h.cache.pending(w)
    h.ack(w, good)
    original = h.world[CLUSTER]["outbound|orders"]
    h.world[CLUSTER]["outbound|orders"] = cluster("outbound|orders", timeout_s=9)
    h.push()
    (bad,) = h.cache.pending(w)
    h.nack(w, bad, "nope")
    h.world[CLUSTER]["outbound|orders"] = original
    h.push()
    assert h.cache.pending(w) == []  # the client still has `good`
    assert w.status() == SYNCED


def test_a_stale_nonce_is_ignored(h: Harness) -> None:
    w = h.connect()
    h.request(w, CLUSTER)
    (one,) = h.cache.pending(w)
    h.world[CLUSTER]["outbound|new"] = cluster("outbound|new")
    h.push()
    (two,) = h.cache.pending(w)
    # The client ACKs the first response after the second one went out: ignored.
    assert h.request(w, CLUSTER, version=one.version, nonce=one.nonce) is False
    assert w.types[CLUSTER].acked_version is None
    assert h.request(w, CLUSTER, version=two.version, nonce=two.nonce) is True
    assert w.status() == SYNCED


def test_named_subscriptions_get_only_their_names(h: Harness) -> None:
    w = h.connect()
    h.request(w, ENDPOINT, names=["outbound|orders"])
    (eds,) = h.cache.pending(w)
    assert [a.cluster_name for a in eds.resources] == ["outbound|orders"]
    h.ack(w, eds, names=["outbound|orders"])
    # A change to a resource the client did not ask for is not pushed.
    h.world[ENDPOINT]["outbound|users"] = cla("outbound|users", 2, 3)
    assert h.push() == []
    assert h.cache.pending(w) == []
    # A change to one it asked for is.
    h.world[ENDPOINT]["outbound|orders"] = cla("outbound|orders", 1, 7)
    assert h.push() == [w]
    (eds2,) = h.cache.pending(w)
    assert len(eds2.resources[0].endpoints[0].lb_endpoints) == 2
    h.ack(w, eds2, names=["outbound|orders"])
    # Asking for one more name (with the ACK) sends the new subset.
    h.request(w, ENDPOINT, ["outbound|orders", "outbound|users"], eds2.version, eds2.nonce)
    (eds3,) = h.cache.pending(w)
    assert sorted(a.cluster_name for a in eds3.resources) == ["outbound|orders", "outbound|users"]


def test_empty_names_mean_nothing_for_rds_and_eds_but_everything_for_lds_and_cds(
    h: Harness,
) -> None:
    w = h.connect()
    h.request(w, ROUTE, names=[])
    h.request(w, ENDPOINT, names=[])
    assert h.cache.pending(w) == []
    h.request(w, CLUSTER, names=[])
    (cds,) = h.cache.pending(w)
    assert len(cds.resources) == 2
    h.request(w, LISTENER, names=["outbound"])  # a named LDS subscription (gRPC clients)
    (lds,) = h.cache.pending(w)
    assert [lis.name for lis in lds.resources] == ["outbound"]


def test_reconnect_with_the_current_version_sends_nothing(h: Harness) -> None:
    w = h.connect()
    h.request(w, CLUSTER)
    (cds,) = h.cache.pending(w)
    h.ack(w, cds)
    h.cache.close_watch(w)
    row = h.cache.status_rows()[0]
    assert (row["node_id"], row["connected"], row["status"]) == ("host-a", False, SYNCED)
    w2 = h.connect()
    h.request(w2, CLUSTER, version=cds.version)  # first request of the new stream
    assert h.cache.pending(w2) == []
    assert h.cache.status_rows()[0]["connected"] is True
    assert w2.status() == SYNCED
    # A client that lost its state (empty version) gets everything again.
    w3 = h.connect("host-b")
    h.request(w3, CLUSTER)
    assert len(h.cache.pending(w3)) == 1


def test_disconnected_rows_stay_and_are_not_recomputed(h: Harness) -> None:
    a, b = h.connect("a"), h.connect("b")
    h.cache.close_watch(b)
    h.world[CLUSTER]["x"] = cluster("x")
    h.request(a, CLUSTER)
    assert h.push() == [a]
    rows = {r["node_id"]: r for r in h.cache.status_rows()}
    assert rows["a"]["connected"] is True and rows["b"]["connected"] is False
    h.cache.forget("b")
    assert [r["node_id"] for r in h.cache.status_rows()] == ["a"]


def test_one_translator_per_change(h: Harness) -> None:
    watches = [h.connect(f"n{i}") for i in range(5)]
    for w in watches:
        h.request(w, CLUSTER)
    calls = h.calls
    h.world[CLUSTER]["x"] = cluster("x")
    assert len(h.push()) == 5
    assert h.calls == calls + 1


def test_a_translation_failure_keeps_the_last_snapshot(h: Harness) -> None:
    w = h.connect()
    h.request(w, CLUSTER)
    (cds,) = h.cache.pending(w)
    h.fail = True
    h.world[CLUSTER]["x"] = cluster("x")
    assert h.push() == []
    assert h.cache.pending(w) == []
    assert "translator bug" in (h.cache.status_rows()[0]["translate_error"] or "")
    h.fail = False
    h.push()
    assert "translate_error" not in h.cache.status_rows()[0]
    (cds2,) = h.cache.pending(w)
    assert cds2.version != cds.version


def test_unknown_types_are_ignored(h: Harness) -> None:
    w = h.connect()
    scoped = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
    assert h.request(w, scoped, names=["x"]) is False
    assert h.cache.pending(w) == []
    assert w.types == {}


PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_secrets_are_a_wildcard_type_pushed_first_and_follow_the_bundle() -> None:
    orders = Service.model_validate({"metadata": {"name": "orders"}, "spec": {"mtls": "strict"}})
    cache = SnapshotCache(
        ConfigSet(services={"orders": orders}), [], trust_domain="example.org", trust_bundle=PEM
    )
    w = cache.open_watch(NodeInfo("host-a", plait_proxy=True), lambda: None)
    for t in (CLUSTER, LISTENER, SECRET):
        assert cache.on_request(w, t, "", "", []) is True
    pushes = cache.pending(w)
    assert [p.type_url for p in pushes] == [SECRET, CLUSTER, LISTENER]
    (bundle,) = pushes[0].resources
    assert bundle.name == "trust-bundle"
    assert bundle.validation_context.trusted_ca.inline_bytes == PEM
    (tls_cluster,) = pushes[1].resources
    assert tls_cluster.HasField("transport_socket")
    for p in pushes:
        cache.on_request(w, p.type_url, p.version, p.nonce, [])
    assert w.status() == SYNCED
    # a rotated bundle changes SDS only
    cache.update_inputs(trust_bundle=PEM + PEM)
    assert cache.recompute() == [w]
    (sds,) = cache.pending(w)
    assert sds.type_url == SECRET
    assert sds.resources[0].validation_context.trusted_ca.inline_bytes == PEM + PEM


def test_a_plain_xds_client_gets_no_secrets() -> None:
    cache = SnapshotCache(ConfigSet(), [], trust_bundle=PEM)
    w = cache.open_watch(NodeInfo("grpc-1"), lambda: None)
    cache.on_request(w, SECRET, "", "", [])
    (sds,) = cache.pending(w)
    assert sds.resources == []


def test_with_the_real_translator() -> None:
    orders = Service.model_validate({"metadata": {"name": "orders"}})
    cache = SnapshotCache(ConfigSet(services={"orders": orders}), [])
    node = NodeInfo(
        "host-a",
        plait_proxy=True,
        outbound_port=15001,
        inbound=(InboundPort("orders", "127.0.0.1", 15002, app_port=9001),),
    )
    w = cache.open_watch(node, lambda: None)
    for t in (CLUSTER, LISTENER):
        cache.on_request(w, t, "", "", [])
    names = {CLUSTER: [], LISTENER: [], ENDPOINT: ["outbound|orders"], ROUTE: ["outbound"]}
    cache.on_request(w, ENDPOINT, "", "", names[ENDPOINT])
    cache.on_request(w, ROUTE, "", "", names[ROUTE])
    # make-before-break: the listeners and routes that name clusters wait for the ACKs
    # of those clusters and their endpoints (plait.control.sequencing)
    first = cache.pending(w)
    assert [p.type_url for p in first] == [CLUSTER, ENDPOINT]
    assert w.status() == STALE
    for p in first:
        cache.on_request(w, p.type_url, p.version, p.nonce, names[p.type_url])
    then = cache.pending(w)
    assert [p.type_url for p in then] == [LISTENER, ROUTE]
    for p in then:
        cache.on_request(w, p.type_url, p.version, p.nonce, names[p.type_url])
    assert w.status() == SYNCED
    eds_before = first[1].version
    # A new healthy instance changes EDS only.
    inst = Instance("orders", "host-b", "127.0.0.1", 16002)
    assert cache.set_inputs(instances=[inst]) == [w]
    (eds,) = cache.pending(w)
    assert eds.type_url == ENDPOINT and eds.version != eds_before


def test_a_nonce_from_an_earlier_stream_is_a_subscription(h: Harness) -> None:
    w = h.connect()
    assert h.request(w, CLUSTER, nonce="17") is True  # nothing sent on this stream yet
    (cds,) = h.cache.pending(w)
    assert cds.nonce != "17"


def test_a_subscription_change_without_a_nonce_is_taken(h: Harness) -> None:
    w = h.connect()
    h.request(w, ENDPOINT, names=["outbound|orders"])
    assert len(h.cache.pending(w)) == 1
    # The client widens its subscription before it has seen our first response.
    assert h.request(w, ENDPOINT, names=["outbound|orders", "outbound|users"]) is True
    (second,) = h.cache.pending(w)
    assert len(second.resources) == 2
    assert w.types[ENDPOINT].acked_version is None


def test_a_change_in_a_service_nobody_calls_pushes_nothing_to_a_scoped_watch() -> None:
    """Scoping (docs/xds.md): a proxy whose service calls only ``orders`` is neither woken
    nor sent anything when ``users`` gets an endpoint; a proxy that calls everything is."""

    def svc(name: str, calls: list[str] | None) -> Service:
        return Service.model_validate({"metadata": {"name": name}, "spec": {"calls": calls}})

    config = ConfigSet(
        services={
            "web": svc("web", ["orders"]),
            "orders": svc("orders", None),
            "users": svc("users", []),
        }
    )
    orders_inst = Instance("orders", "host-o", "127.0.0.1", 16001)
    cache = SnapshotCache(config, [orders_inst])

    def synced_watch(service: str) -> tuple[Watch, list[int]]:
        node = NodeInfo(
            f"host-{service}",
            plait_proxy=True,
            outbound_port=15001,
            inbound=(InboundPort(service, "127.0.0.1", 15002, app_port=9001),),
        )
        wakes: list[int] = []
        w = cache.open_watch(node, lambda: wakes.append(1))
        for t in (CLUSTER, LISTENER):
            cache.on_request(w, t, "", "", [])
        eds_names = sorted(n for n in w.snapshot.subset(CLUSTER, None) if n.startswith("out"))
        names = {CLUSTER: [], LISTENER: [], ENDPOINT: eds_names, ROUTE: ["outbound"]}
        cache.on_request(w, ENDPOINT, "", "", names[ENDPOINT])
        cache.on_request(w, ROUTE, "", "", names[ROUTE])
        for _ in range(3):
            for p in cache.pending(w):
                cache.on_request(w, p.type_url, p.version, p.nonce, names[p.type_url])
        assert w.status() == SYNCED
        return w, wakes

    web, web_wakes = synced_watch("web")
    assert w_clusters(web) == ["inbound|web", "outbound|orders"]
    orders, orders_wakes = synced_watch("orders")
    assert "outbound|users" in w_clusters(orders)

    users_inst = Instance("users", "host-u", "127.0.0.1", 16002)
    woken = cache.set_inputs(instances=[orders_inst, users_inst])
    assert woken == [orders] and orders_wakes and not web_wakes
    assert cache.pending(web) == []
    assert [p.type_url for p in cache.pending(orders)] == [ENDPOINT]
    assert web.status() == SYNCED

    # and a change to what web calls reaches it
    moved = Instance("orders", "host-o", "127.0.0.1", 16003)
    assert set(cache.set_inputs(instances=[moved, users_inst])) == {web, orders}
    assert [p.type_url for p in cache.pending(web)] == [ENDPOINT]


def w_clusters(w: Watch) -> list[str]:
    assert w.snapshot is not None
    return sorted(w.snapshot.subset(CLUSTER, None))
