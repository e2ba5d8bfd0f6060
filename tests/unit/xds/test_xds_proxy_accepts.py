"""Cross-check with the other side of the contract: a plait proxy's decoder accepts every
snapshot translation makes for it (no NACK), whatever the config and registry."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from xds_strategies import PROPERTY_SETTINGS, configs, inbound_ports, instances

from plait.model.config import ConfigSet
from plait.xds.builders import pack
from plait.xds.inputs import Instance, NodeInfo
from plait.xds.translate import translate
from plait.xds.types import PUSH_ORDER

xds_decode = pytest.importorskip("plait.proxy.xds_decode")

proxies = st.builds(
    NodeInfo,
    node_id=st.just("n1"),
    plait_proxy=st.just(True),
    outbound_port=st.integers(1, 65535),
    inbound=st.lists(inbound_ports, max_size=3).map(tuple),
)


@PROPERTY_SETTINGS
@given(config=configs(), registry=instances, node=proxies)
def test_a_plait_proxy_decodes_every_translated_resource(
    config: ConfigSet, registry: list[Instance], node: NodeInfo
) -> None:
    snapshot = translate(config, registry, node)
    for type_url in PUSH_ORDER:
        resources = [pack(m) for m in snapshot.items(type_url).values()]
        decoded = xds_decode.decode_resources(type_url, resources)
        assert set(decoded) == set(snapshot.names(type_url))
