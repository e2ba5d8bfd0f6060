"""Changed-only EDS/RDS pushes to clients that announce ``plait.xds.sotw_partial``.

A fake translator serves a "world" the test edits (type -> name -> message), as in
test_control_cache.py. The rules (docs/xds.md, "Changed-only pushes"): a push carries the
subscribed resources whose digest differs from what the stream knows the client holds,
plus names it never got; ``version_info`` is the version of the whole state; whenever
what the client holds is not known exactly the push is complete; other clients always get
complete pushes. The property test at the end plays a client that merges responses
against random changes, subscriptions, NACKs and reconnects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import test_control_cache
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plait.control.ads import parse_node
from plait.control.cache import SYNCED, PushResponse, SnapshotCache, Watch, content_version
from plait.model.config import ConfigSet
from plait.model.load import load_text
from plait.proxy.xds_client import make_node
from plait.xds.inputs import InboundPort, Instance, NodeInfo
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SOTW_PARTIAL

World = dict[str, dict[str, Any]]
NAMES = ("a", "b", "c")
cla = test_control_cache.cla


def cluster(name: str) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    c.eds_cluster_config.eds_config.ads.SetInParent()
    return c


def routes(name: str, domain: str) -> route_pb2.RouteConfiguration:
    rc = route_pb2.RouteConfiguration(name=name)
    rc.virtual_hosts.add(name=domain, domains=[domain])
    return rc


def world() -> World:
    return {
        CLUSTER: {n: cluster(n) for n in NAMES},
        ENDPOINT: {n: cla(n, i + 1) for i, n in enumerate(NAMES)},
        LISTENER: {"outbound": listener_pb2.Listener(name="outbound")},
        ROUTE: {"r1": routes("r1", "one"), "r2": routes("r2", "two")},
    }


class Harness(test_control_cache.Harness):
    """test_control_cache's harness on this module's world; streams announce the feature
    unless ``partial=False``."""

    def __init__(self) -> None:
        super().__init__(world())

    def connect(self, node_id: str = "host-a", *, partial: bool = True) -> Watch:
        features = frozenset({SOTW_PARTIAL}) if partial else frozenset()
        node = NodeInfo(node_id, plait_proxy=True, client_features=features)
        return self.cache.open_watch(node, lambda: None)

    def ack(self, w: Watch, sent: PushResponse, names: Sequence[str]) -> None:
        self.request(w, sent.type_url, names, sent.version, sent.nonce)

    def one(self, w: Watch) -> PushResponse:
        (push,) = self.cache.pending(w)
        return push

    def synced_eds(self, w: Watch, names: Sequence[str] = NAMES) -> PushResponse:
        """Subscribe EDS to ``names``, take the (complete) first push, ACK it."""
        self.request(w, ENDPOINT, names)
        first = self.one(w)
        self.ack(w, first, names)
        return first


def names_of(push: PushResponse) -> list[str]:
    return [r.cluster_name if push.type_url == ENDPOINT else r.name for r in push.resources]


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_an_endpoint_change_sends_only_its_assignment_with_the_whole_state_version(
    h: Harness,
) -> None:
    w = h.connect()
    first = h.synced_eds(w)
    assert names_of(first) == ["a", "b", "c"] and not first.partial  # first push: complete
    h.world[ENDPOINT]["b"] = cla("b", 2, 22)
    assert h.push() == [w]
    push = h.one(w)
    assert names_of(push) == ["b"] and push.partial
    assert push.resources[0] is h.world[ENDPOINT]["b"]
    assert push.version == content_version(h.world[ENDPOINT])  # the whole state's version
    assert w.status() != SYNCED
    h.ack(w, push, NAMES)
    assert w.status() == SYNCED
    assert w.types[ENDPOINT].acked_resources == h.world[ENDPOINT]  # the whole state held
    row = h.cache.status_rows()[0]
    assert row["types"][ENDPOINT] == {
        "sent": push.version,
        "acked": push.version,
        "error": None,
        "status": SYNCED,
    }


def test_clients_without_the_feature_get_every_subscribed_resource(h: Harness) -> None:
    w = h.connect(partial=False)
    h.synced_eds(w)
    h.world[ENDPOINT]["b"] = cla("b", 2, 22)
    h.push()
    push = h.one(w)
    assert names_of(push) == ["a", "b", "c"] and not push.partial


def test_a_route_change_sends_only_the_changed_route_configuration(h: Harness) -> None:
    w = h.connect()
    h.request(w, ROUTE, ["r1", "r2"])
    first = h.one(w)
    assert names_of(first) == ["r1", "r2"]
    h.ack(w, first, ["r1", "r2"])
    h.world[ROUTE]["r2"] = routes("r2", "deux")
    h.push()
    push = h.one(w)
    assert names_of(push) == ["r2"] and push.partial
    h.ack(w, push, ["r1", "r2"])
    assert w.status() == SYNCED


def test_clusters_and_listeners_are_always_complete(h: Harness) -> None:
    w = h.connect()
    h.request(w, CLUSTER)
    h.ack(w, h.one(w), ())
    h.world[CLUSTER]["b"] = cluster("b")
    h.world[CLUSTER]["b"].connect_timeout.seconds = 9
    h.push()
    push = h.one(w)
    assert push.type_url == CLUSTER and names_of(push) == ["a", "b", "c"]


def test_newly_subscribed_names_are_sent_even_if_unchanged(h: Harness) -> None:
    w = h.connect()
    h.synced_eds(w, ["a", "b"])
    h.request(w, ENDPOINT, ["a", "b", "c"])  # a new subscription, nothing changed
    push = h.one(w)
    assert names_of(push) == ["c"]
    h.ack(w, push, NAMES)
    assert w.status() == SYNCED
    # dropped, then subscribed again: the client dropped it, so it is sent again
    h.request(w, ENDPOINT, ["a", "b"], push.version, push.nonce)
    smaller = h.one(w)
    assert names_of(smaller) == [] and smaller.partial  # the version of {a, b}, nothing new
    h.ack(w, smaller, ["a", "b"])
    h.request(w, ENDPOINT, NAMES, smaller.version, smaller.nonce)
    assert names_of(h.one(w)) == ["c"]


def test_a_cluster_cds_dropped_gets_its_assignment_again_when_it_comes_back(h: Harness) -> None:
    w = h.connect()
    h.request(w, CLUSTER)
    cds = h.one(w)
    h.ack(w, cds, ())
    h.synced_eds(w)
    del h.world[CLUSTER]["c"], h.world[ENDPOINT]["c"]
    h.push()
    pushes = {p.type_url: p for p in h.cache.pending(w)}
    assert names_of(pushes[CLUSTER]) == ["a", "b"]
    assert names_of(pushes[ENDPOINT]) == []  # a and b are unchanged, c is gone
    h.ack(w, pushes[CLUSTER], ())  # the proxy drops c's endpoints with cluster c
    h.ack(w, pushes[ENDPOINT], ["a", "b"])  # and subscribes to a and b only
    h.world[CLUSTER]["c"], h.world[ENDPOINT]["c"] = cluster("c"), cla("c", 3)
    h.push()
    cds = h.one(w)
    assert cds.type_url == CLUSTER
    h.ack(w, cds, ())
    h.request(w, ENDPOINT, NAMES, pushes[ENDPOINT].version, pushes[ENDPOINT].nonce)
    assert names_of(h.one(w)) == ["c"]  # unchanged, but the client no longer has it


def test_after_a_nack_the_next_push_is_complete(h: Harness) -> None:
    w = h.connect()
    first = h.synced_eds(w)
    h.world[ENDPOINT]["a"] = cla("a", 9)
    h.push()
    bad = h.one(w)
    assert names_of(bad) == ["a"]
    h.request(w, ENDPOINT, NAMES, first.version, bad.nonce, "ClusterLoadAssignment 'a': no")
    h.world[ENDPOINT]["a"] = cla("a", 10)
    h.push()
    after = h.one(w)
    assert names_of(after) == ["a", "b", "c"] and not after.partial
    h.ack(w, after, NAMES)
    h.world[ENDPOINT]["c"] = cla("c", 30)
    h.push()
    assert names_of(h.one(w)) == ["c"]  # ACKed again: changed-only again


def test_a_push_while_another_is_in_flight_is_complete(h: Harness) -> None:
    w = h.connect()
    h.synced_eds(w)
    h.world[ENDPOINT]["a"] = cla("a", 9)
    h.push()
    assert names_of(h.one(w)) == ["a"]
    h.world[ENDPOINT]["b"] = cla("b", 9)
    h.push()
    second = h.one(w)  # the first may still be NACKed: send everything
    assert names_of(second) == ["a", "b", "c"]


def test_names_dropped_while_a_changed_only_push_was_in_flight_are_sent_again(
    h: Harness,
) -> None:
    w = h.connect()
    first = h.synced_eds(w)
    h.world[ENDPOINT]["a"] = cla("a", 9)
    h.push()
    inflight = h.one(w)
    assert names_of(inflight) == ["a"]
    # before it arrives, cluster c goes and comes back at the proxy: it drops c's
    # endpoints and says so twice, with the nonce of the response before (stale)
    assert not h.request(w, ENDPOINT, ["a", "b"], first.version, first.nonce)
    assert not h.request(w, ENDPOINT, NAMES, first.version, first.nonce)
    h.ack(w, inflight, NAMES)  # it merges {a} into {a, b}: c is missing
    assert w.status() != SYNCED
    again = h.one(w)
    assert names_of(again) == ["c"]
    h.ack(w, again, NAMES)
    assert w.status() == SYNCED


def test_a_reconnect_with_the_current_version_gets_nothing_then_changed_only(
    h: Harness,
) -> None:
    w = h.connect()
    first = h.synced_eds(w)
    h.cache.close_watch(w)
    w2 = h.connect()
    h.request(w2, ENDPOINT, NAMES, first.version, first.nonce)  # what it had on w
    assert h.cache.pending(w2) == []
    assert w2.status() == SYNCED
    h.world[ENDPOINT]["b"] = cla("b", 7)
    h.push()
    assert names_of(h.one(w2)) == ["b"]


def test_a_reconnect_with_an_old_version_gets_everything(h: Harness) -> None:
    w = h.connect()
    first = h.synced_eds(w)
    h.world[ENDPOINT]["b"] = cla("b", 7)
    h.push()
    h.ack(w, h.one(w), NAMES)
    h.cache.close_watch(w)
    w2 = h.connect()
    h.request(w2, ENDPOINT, NAMES, first.version, "")  # e.g. an older replica's client
    push = h.one(w2)
    assert names_of(push) == ["a", "b", "c"]


def test_a_restarted_control_plane_sends_everything_once(h: Harness) -> None:
    w = h.connect()
    first = h.synced_eds(w)
    fresh = Harness()  # no previous stream of this node: nothing known of what it holds
    w2 = fresh.connect()
    fresh.request(w2, ENDPOINT, NAMES, first.version, "")
    push = fresh.one(w2)
    assert names_of(push) == ["a", "b", "c"]
    fresh.ack(w2, push, NAMES)
    fresh.world[ENDPOINT]["a"] = cla("a", 5)
    fresh.push()
    assert names_of(fresh.one(w2)) == ["a"]


def test_the_node_feature_travels_from_the_proxy_to_the_cache() -> None:
    node = parse_node(make_node("host-a", {"plait_proxy": True}))
    assert node.plait_proxy and SOTW_PARTIAL in node.client_features
    assert Watch(1, node, lambda: None).partial_ok
    envoy = base_pb2.Node(id="envoy-1")
    envoy.client_features.append("envoy.lb.does_not_support_overprovisioning")
    other = parse_node(envoy)
    assert other.client_features == frozenset({"envoy.lb.does_not_support_overprovisioning"})
    assert not Watch(2, other, lambda: None).partial_ok


# --- property: merging changed-only pushes gives what a complete push gives ---------------

POOL = ("a", "b", "c")

Step = tuple[str, Any]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("change"), st.tuples(st.sampled_from(POOL), st.integers(1, 2))),
        st.tuples(st.just("subscribe"), st.frozensets(st.sampled_from(POOL))),
        st.tuples(st.just("push"), st.none()),
        st.tuples(st.just("ack"), st.none()),
        st.tuples(st.just("nack"), st.none()),
        st.tuples(st.just("reconnect"), st.none()),
    ),
    max_size=30,
)


class MergingClient:
    """A plait proxy's EDS, as the cache sees it: responses merge into what it holds,
    names it does not subscribe to are dropped, a NACK changes nothing."""

    def __init__(self, h: Harness, partial: bool) -> None:
        self.h = h
        self.partial = partial
        self.names: frozenset[str] = frozenset(POOL)
        self.held: dict[str, bytes] = {}
        self.version = ""
        self.nonce = ""
        self.inflight: list[PushResponse] = []
        self.w = h.connect(partial=partial)
        self.send()

    def send(self, error: str | None = None) -> None:
        self.h.request(self.w, ENDPOINT, sorted(self.names), self.version, self.nonce, error)

    def subscribe(self, names: frozenset[str]) -> None:
        self.names = names
        self.held = {n: m for n, m in self.held.items() if n in names}
        self.send()

    def take(self) -> None:
        self.inflight.extend(self.h.cache.pending(self.w))

    def answer(self, ok: bool) -> None:
        if not self.inflight:
            return
        push = self.inflight.pop(0)
        self.nonce = push.nonce
        if not ok:
            self.send("refused")
            return
        got = {r.cluster_name: r.SerializeToString(deterministic=True) for r in push.resources}
        if self.partial:
            self.held = {**self.held, **got}
        else:
            self.held = got
        self.held = {n: m for n, m in self.held.items() if n in self.names}
        self.version = push.version
        self.send()

    def reconnect(self) -> None:
        self.h.cache.close_watch(self.w)
        self.inflight.clear()
        self.nonce = ""
        self.w = self.h.connect(partial=self.partial)
        self.send()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=steps, partial=st.booleans())
def test_merging_changed_only_pushes_ends_with_what_a_complete_push_gives(
    script: list[Step], partial: bool
) -> None:
    h = Harness()
    h.world = {ENDPOINT: {n: cla(n, 1) for n in POOL}}
    client = MergingClient(h, partial)
    for kind, arg in script:
        if kind == "change":
            name, port = arg
            h.world[ENDPOINT][name] = cla(name, port)
            h.push()
        elif kind == "subscribe":
            client.subscribe(arg)
        elif kind == "push":
            client.take()
        elif kind in ("ack", "nack"):
            client.answer(kind == "ack")
        else:
            client.reconnect()
    state = client.w.types[ENDPOINT]
    if (
        client.names
        and state.nacked_version is not None
        and state.nacked_version == state.sent_version
    ):
        # a NACKed version is not sent again until the input changes: change one name
        name = sorted(client.names)[0]
        h.world[ENDPOINT][name] = cla(name, 99)
        h.push()
    for _ in range(20):  # the network settles: every response arrives and is ACKed
        client.take()
        if not client.inflight:
            break
        while client.inflight:
            client.answer(True)
    assert client.inflight == []
    want = {
        n: h.world[ENDPOINT][n].SerializeToString(deterministic=True)
        for n in client.names
        if n in h.world[ENDPOINT]
    }
    assert client.held == want
    if client.names:
        assert client.w.status() == SYNCED
        assert client.version == content_version(
            {n: h.world[ENDPOINT][n] for n in sorted(client.names)}
        )
    assert h.cache.pending(client.w) == []


# --- the sequencing fast path (Watch.steady) changes nothing --------------------------------

MESH = """\
apiVersion: plait/v1
kind: Service
metadata: {name: orders}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: plait/v1
kind: Service
metadata: {name: users}
spec:
  ports: [{name: http, port: 80}]
"""
SPLIT = """\
---
apiVersion: plait/v1
kind: Route
metadata: {name: orders}
spec:
  service: orders
  rules:
    - backends:
        - subset: {version: v1}
          weight: W1
        - subset: {version: v2}
          weight: W2
"""


def mesh(split: tuple[int, int] | None) -> ConfigSet:
    text = MESH
    if split is not None:
        text += SPLIT.replace("W1", str(split[0])).replace("W2", str(split[1]))
    return load_text(text, "mesh.yaml")


def endpoints(extra: int) -> list[Instance]:
    out = [
        Instance("orders", "host-b", "127.0.0.1", 16001, {"version": "v1"}),
        Instance("orders", "host-b", "127.0.0.1", 16002, {"version": "v2"}),
        Instance("users", "host-b", "127.0.0.1", 16003, {"version": "v1"}),
    ]
    out += [Instance("users", "host-c", "127.0.0.1", 17000 + i) for i in range(extra)]
    return out


def play(fast: bool, partial: bool, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """A plait proxy through subset add, endpoint, weight and subset removal changes,
    ACKing every response and subscribing EDS/RDS to what CDS/LDS name; every push."""
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(Watch, "steady", lambda self: False)
        cache = SnapshotCache(mesh(None), endpoints(0))
        features = frozenset({SOTW_PARTIAL}) if partial else frozenset()
        node = NodeInfo(
            "host-a",
            plait_proxy=True,
            outbound_port=15001,
            inbound=(InboundPort("users", "127.0.0.1", 15002, 9001),),
            client_features=features,
        )
        w = cache.open_watch(node, lambda: None)
        log: list[tuple[Any, ...]] = []

        def drain() -> None:
            for _ in range(20):
                pushes = cache.pending(w)
                if not pushes:
                    return
                log.append(("batch", len(pushes)))  # what is held shows in the batches
                for p in pushes:
                    log.append((p.type_url, p.version, tuple(sorted(map(str, p.resources)))))
                    names = w.types[p.type_url].names or []
                    cache.on_request(w, p.type_url, p.version, p.nonce, list(names))
                    if p.type_url == CLUSTER:
                        eds = sorted(c.name for c in p.resources if c.type == c.EDS)
                        cache.on_request(w, ENDPOINT, "", "", eds)
                    if p.type_url == LISTENER:
                        cache.on_request(w, ROUTE, "", "", ["outbound"])
            raise AssertionError("never settled")

        cache.on_request(w, CLUSTER, "", "", [])
        cache.on_request(w, LISTENER, "", "", [])
        drain()
        for cfg, instances in (
            (mesh((90, 10)), None),
            (None, endpoints(1)),
            (mesh((80, 20)), None),
            (None, endpoints(2)),
            (mesh(None), None),
            (None, endpoints(3)),
        ):
            cache.set_inputs(cfg, instances)
            drain()
            assert w.status() == SYNCED
        return log


@pytest.mark.parametrize("partial", [False, True])
def test_the_sequencing_fast_path_sends_exactly_what_the_full_plan_sends(
    partial: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = play(True, partial, monkeypatch)
    assert fast == play(False, partial, monkeypatch)
    assert len({entry[0] for entry in fast}) == 5  # CDS, EDS, LDS and RDS all moved
