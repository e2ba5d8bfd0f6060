"""Changed-only EDS/RDS responses (docs/xds.md): they merge into what the proxy holds.

The decode core (:func:`apply_response`, :func:`merge_raw`) and the xDS client's
``_handle`` with a fake stream: the config, the raw resources kept for the last-known-good
file, and a restart from that file all keep every subscribed resource; a NACKed partial
response changes nothing; the proxy announces the client feature.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from plait.proxy.lkg import config_from_payload, make_payload, serialized
from plait.proxy.runtime import Endpoint, ProxyConfig
from plait.proxy.xds_client import XdsClient, make_node
from plait.proxy.xds_decode import (
    apply_response,
    held_names,
    merge_raw,
    raw_name,
)
from plait.xds import builders as b
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SOTW_PARTIAL


def eds_cluster(name: str) -> Any:
    return b.make_eds_cluster(name, connect_timeout=0.25, lb_policy="round_robin")


def cla(name: str, *ports: int) -> Any:
    return b.make_load_assignment(name, [("10.0.0.1", p) for p in ports or (1,)])


def listener(name: str, rds: str, port: int) -> Any:
    return b.make_http_listener(name, "127.0.0.1", port, direction="outbound", rds_name=rds)


def route_config(name: str, cluster: str) -> Any:
    route = b.make_route(b.make_route_match(prefix="/"), cluster=cluster)
    return b.make_route_configuration(name, [b.make_virtual_host(name, [name], [route])])


def packed(*messages: Any) -> list[Any]:
    return [b.pack(m) for m in messages]


def ports_of(cfg: ProxyConfig) -> dict[str, list[int]]:
    return {name: [e.port for e in eps] for name, eps in sorted(cfg.endpoints.items())}


def three_clusters() -> ProxyConfig:
    cfg = apply_response(
        ProxyConfig(),
        CLUSTER,
        packed(eds_cluster("a"), eds_cluster("b"), eds_cluster("c")),
        version="c1",
    )
    return apply_response(
        cfg, ENDPOINT, packed(cla("a", 1), cla("b", 2), cla("c", 3)), version="e1"
    )


# --- apply_response -------------------------------------------------------------------------


def test_an_eds_response_replaces_the_names_it_carries_and_keeps_the_others() -> None:
    cfg = apply_response(three_clusters(), ENDPOINT, packed(cla("b", 2, 22)), version="e2")
    assert ports_of(cfg) == {"a": [1], "b": [2, 22], "c": [3]}
    assert cfg.versions[ENDPOINT] == "e2"


def test_an_empty_eds_response_changes_no_endpoint_but_records_its_version() -> None:
    before = three_clusters()
    cfg = apply_response(before, ENDPOINT, [], version="e2")
    assert cfg.endpoints == before.endpoints
    assert cfg.versions[ENDPOINT] == "e2"


def test_endpoints_of_a_cluster_cds_dropped_are_gone_and_not_brought_back() -> None:
    cfg = apply_response(three_clusters(), CLUSTER, packed(eds_cluster("a"), eds_cluster("b")))
    assert sorted(cfg.endpoints) == ["a", "b"]  # CDS is complete: c went, with its endpoints
    cfg = apply_response(cfg, ENDPOINT, packed(cla("a", 11), cla("c", 33)), version="e3")
    assert ports_of(cfg) == {"a": [11], "b": [2]}  # c is not needed any more


def test_an_rds_response_merges_and_lds_still_drops_what_no_listener_names() -> None:
    cfg = apply_response(
        ProxyConfig(),
        LISTENER,
        packed(listener("l1", "r1", 15001), listener("l2", "r2", 15002)),
        version="l1",
    )
    cfg = apply_response(
        cfg, ROUTE, packed(route_config("r1", "x"), route_config("r2", "y")), version="r1"
    )
    cfg = apply_response(cfg, ROUTE, packed(route_config("r2", "z")), version="r2")
    assert sorted(cfg.route_tables) == ["r1", "r2"]
    assert cfg.route_tables["r1"].virtual_hosts[0].routes[0].clusters[0].cluster == "x"
    assert cfg.route_tables["r2"].virtual_hosts[0].routes[0].clusters[0].cluster == "z"
    cfg = apply_response(cfg, LISTENER, packed(listener("l2", "r2", 15002)), version="l2")
    assert sorted(cfg.route_tables) == ["r2"]  # LDS is complete: r1 is no longer named
    assert held_names(cfg, ROUTE) == frozenset({"r2"})


def test_listener_and_cluster_responses_still_replace_their_whole_type() -> None:
    cfg = apply_response(three_clusters(), CLUSTER, [], version="c2")
    assert cfg.clusters == {} and cfg.endpoints == {}
    with pytest.raises(ValueError, match="not merged"):
        held_names(cfg, CLUSTER)


# --- raw resources (the last-known-good file) ------------------------------------------------


def test_merge_raw_replaces_keeps_and_drops_by_name_and_reads_names_of_bytes_and_any() -> None:
    old_a, old_b = b.pack(cla("a", 1)), b.pack(cla("b", 2)).SerializeToString()
    assert raw_name(ENDPOINT, old_a) == "a"
    assert raw_name(ENDPOINT, old_b) == "b"  # as the LKG file gives them
    assert raw_name(ROUTE, b.pack(route_config("r1", "x"))) == "r1"
    assert raw_name(ENDPOINT, b"\xff\xff") == ""  # unreadable: dropped by the caller
    new_a, new_c = b.pack(cla("a", 11)), b.pack(cla("c", 3))
    merged = merge_raw(
        {"a": old_a, "b": old_b, "gone": old_b}, ["a", "c"], [new_a, new_c], {"a", "b", "c"}
    )
    assert merged == {"a": new_a, "b": old_b, "c": new_c}
    assert list(merged) == ["a", "b", "c"]


# --- the xDS client's _handle -----------------------------------------------------------------


class FakeCall:
    """The write side of an ADS stream (:class:`plait.proxy.ads_h2.AdsStream`): records
    the requests it is given, serialized, as DiscoveryRequests."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def write(self, data: bytes) -> None:
        self.sent.append(discovery_pb2.DiscoveryRequest.FromString(data))


def response(type_url: str, version: str, nonce: str, *messages: Any) -> Any:
    return discovery_pb2.DiscoveryResponse(
        type_url=type_url, version_info=version, nonce=nonce, resources=packed(*messages)
    )


class Proxy:
    """An XdsClient fed responses by hand; what on_config and on_ack saw."""

    def __init__(self, **kwargs: Any) -> None:
        self.configs: list[ProxyConfig] = []
        self.acks: list[dict[str, list[Any]]] = []
        self.refuse = False
        self.client = XdsClient(
            "127.0.0.1:1",
            "node-1",
            {"plait_proxy": True},
            on_config=self._on_config,
            on_ack=lambda cfg, resources: self.acks.append(resources),
            **kwargs,
        )
        self.call = FakeCall()

    def _on_config(self, cfg: ProxyConfig) -> None:
        if self.refuse:
            raise RuntimeError("cannot apply")
        self.configs.append(cfg)

    def feed(self, resp: Any) -> Any:
        asyncio.run(self.client._handle(self.call, resp))
        return next(r for r in reversed(self.call.sent) if r.type_url == resp.type_url)


def lkg_config(proxy: Proxy) -> ProxyConfig:
    """What a restart from the last-known-good file written at the last ACK would serve."""
    resources = {t: serialized(r) for t, r in proxy.acks[-1].items()}
    payload = make_payload("node-1", 0.0, proxy.client.acked, resources, None)
    return config_from_payload(payload, "lkg.dat")[0]


def test_the_proxy_announces_changed_only_support_in_its_node() -> None:
    node = make_node("node-1", {"plait_proxy": True})
    assert SOTW_PARTIAL in node.client_features
    assert SOTW_PARTIAL == "plait.xds.sotw_partial"  # the documented name (docs/xds.md)


def test_a_partial_eds_response_keeps_the_other_endpoints_in_config_and_lkg() -> None:
    p = Proxy()
    p.feed(response(CLUSTER, "c1", "1", eds_cluster("a"), eds_cluster("b")))
    p.feed(response(ENDPOINT, "e1", "2", cla("a", 1), cla("b", 2)))
    ack = p.feed(response(ENDPOINT, "e2", "3", cla("a", 1, 11)))  # only a changed
    assert (ack.version_info, ack.response_nonce, ack.HasField("error_detail")) == (
        "e2",
        "3",
        False,
    )
    assert ports_of(p.client.config) == {"a": [1, 11], "b": [2]}
    assert sorted(raw_name(ENDPOINT, r) for r in p.acks[-1][ENDPOINT]) == ["a", "b"]
    restarted = lkg_config(p)
    assert ports_of(restarted) == {"a": [1, 11], "b": [2]}
    assert restarted.versions[ENDPOINT] == "e2"


def test_a_nacked_partial_response_changes_nothing() -> None:
    p = Proxy()
    p.feed(response(CLUSTER, "c1", "1", eds_cluster("a"), eds_cluster("b")))
    p.feed(response(ENDPOINT, "e1", "2", cla("a", 1), cla("b", 2)))
    before, acks = p.client.config, len(p.acks)
    bad = cla("a", 5)
    bad.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address = ""
    nack = p.feed(response(ENDPOINT, "e2", "3", bad))
    assert nack.HasField("error_detail") and nack.version_info == "e1"
    p.refuse = True  # and one the data plane cannot apply
    nack = p.feed(response(ENDPOINT, "e3", "4", cla("b", 9)))
    assert nack.HasField("error_detail") and nack.version_info == "e1"
    assert p.client.config is before and len(p.acks) == acks
    p.refuse = False
    p.feed(response(ENDPOINT, "e4", "5", cla("b", 22)))  # the raw copy was not touched either
    assert ports_of(lkg_config(p)) == {"a": [1], "b": [22]}


def test_a_partial_response_merges_into_resources_booted_from_the_lkg_file() -> None:
    first = Proxy()
    first.feed(response(CLUSTER, "c1", "1", eds_cluster("a"), eds_cluster("b")))
    first.feed(response(ENDPOINT, "e1", "2", cla("a", 1), cla("b", 2)))
    stored = {t: serialized(r) for t, r in first.acks[-1].items()}  # bytes, as load_lkg gives
    booted = lkg_config(first)
    p = Proxy(initial_config=booted, initial_resources=stored)
    p.feed(response(ENDPOINT, "e2", "1", cla("b", 2, 22)))
    assert ports_of(p.client.config) == {"a": [1], "b": [2, 22]}
    assert ports_of(lkg_config(p)) == {"a": [1], "b": [2, 22]}
    assert p.client.config.endpoints["a"] == (Endpoint("10.0.0.1", 1, True),)
