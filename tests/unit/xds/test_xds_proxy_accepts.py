"""Cross-check with the other side of the contract: a plait proxy's decoder accepts every
snapshot translation makes for it (no NACK), whatever the config and registry."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from xds_strategies import PROPERTY_SETTINGS, configs, inbound_ports, instances, trust_bundles

from plait.model.config import ConfigSet
from plait.proxy import xds_decode
from plait.xds.builders import pack
from plait.xds.inputs import Instance, NodeInfo
from plait.xds.translate import translate
from plait.xds.types import PUSH_ORDER

proxies = st.builds(
    NodeInfo,
    node_id=st.just("n1"),
    plait_proxy=st.just(True),
    outbound_port=st.integers(1, 65535),
    inbound=st.lists(inbound_ports, max_size=3).map(tuple),
)


@PROPERTY_SETTINGS
@given(
    config=configs(),
    registry=instances,
    node=proxies,
    bundle=trust_bundles,
    trust_domain=st.sampled_from(["plait.local", "example.org"]),
)
def test_a_plait_proxy_decodes_every_translated_resource(
    config: ConfigSet, registry: list[Instance], node: NodeInfo, bundle: bytes, trust_domain: str
) -> None:
    """Every resource, mTLS and RBAC included (docs/mtls.md): no NACK, and the decoded
    TLS settings are what the config asked for."""
    snapshot = translate(config, registry, node, trust_domain=trust_domain, trust_bundle=bundle)
    cfg = xds_decode.ProxyConfig()
    for type_url in PUSH_ORDER:
        resources = [pack(m) for m in snapshot.items(type_url).values()]
        decoded = xds_decode.decode_resources(type_url, resources)
        assert set(decoded) == set(snapshot.names(type_url))
        cfg = xds_decode.apply_response(cfg, type_url, resources)
    assert set(cfg.secrets) == ({"trust-bundle"} if bundle else set())
    for name, cluster in cfg.clusters.items():
        service = config.services.get(name.split("|")[1])
        wants_tls = name.startswith("outbound|") and service is not None
        wants_tls = wants_tls and service is not None and service.spec.mtls != "plaintext"
        assert (cluster.tls is not None) == wants_tls, name
    for listener in cfg.listeners.values():
        if listener.direction == "inbound" and listener.service in config.services:
            assert listener.tls_mode == config.services[listener.service].spec.mtls
            assert bool(listener.rbac) == (config.policy_for(listener.service) is not None)
