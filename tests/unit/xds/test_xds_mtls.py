"""mTLS and authorization in translation: exactly the shapes of docs/mtls.md."""

from __future__ import annotations

from typing import Any

from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf import text_format
from xds_fixtures import ALLOWED, hcm_of, service, set_field_paths

from plait.model.config import ConfigSet
from plait.model.resources import Policy, Route, Service
from plait.xds.inputs import InboundPort, Instance, NodeInfo
from plait.xds.snapshot import Snapshot
from plait.xds.translate import Translator, translate
from plait.xds.types import CLUSTER, LISTENER, PUSH_ORDER, ROUTE, SECRET

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
TD = "example.org"


def policy(svc: str, **spec: Any) -> Policy:
    return Policy.model_validate(
        {"metadata": {"name": f"p-{svc}"}, "spec": {"service": svc, **spec}}
    )


def mesh(*resources: Service | Route | Policy) -> ConfigSet:
    return ConfigSet(
        services={r.name: r for r in resources if isinstance(r, Service)},
        routes={r.name: r for r in resources if isinstance(r, Route)},
        policies={r.name: r for r in resources if isinstance(r, Policy)},
    )


def shop() -> ConfigSet:
    return mesh(
        service("web"),
        service("orders", mtls="strict"),
        service("cart", mtls="permissive"),
        policy("orders", allow=["web", "spiffe://other.org/svc/x"], deny=["batch"]),
        policy("cart", mode="audit"),
    )


def node(*services: str, outbound_port: int = 0) -> NodeInfo:
    return NodeInfo(
        "n1",
        plait_proxy=True,
        outbound_port=15001,
        inbound=tuple(
            InboundPort(s, "127.0.0.1", 16000 + i, app_port=9000 + i, outbound_port=outbound_port)
            for i, s in enumerate(services)
        ),
    )


def snap(cfg: ConfigSet, n: NodeInfo, bundle: bytes = PEM) -> Snapshot:
    snapshot = translate(cfg, [Instance("orders", "x", "10.0.0.1", 1)], n, trust_domain=TD,
                         trust_bundle=bundle)  # fmt: skip
    if bundle:
        assert snapshot.consistency_errors() == []
    return snapshot


def unpack(any_msg: Any, cls: Any) -> Any:
    msg = cls()
    assert any_msg.Unpack(msg)
    return msg


def test_the_trust_bundle_is_one_secret_for_every_plait_proxy() -> None:
    snapshot = snap(shop(), node("web"))
    assert snapshot.names(SECRET) == ["trust-bundle"]
    secret = snapshot.items(SECRET)["trust-bundle"]
    assert secret.validation_context.trusted_ca.inline_bytes == PEM
    assert PUSH_ORDER[0] == SECRET


def test_an_empty_bundle_sends_no_secret_but_keeps_tls_and_says_so() -> None:
    snapshot = snap(shop(), node("orders"), bundle=b"")
    assert snapshot.names(SECRET) == []
    assert snapshot.items(CLUSTER)["outbound|orders"].HasField("transport_socket")
    assert "secret 'trust-bundle' is not in SDS" in snapshot.consistency_errors()[0]


def test_upstream_tls_on_strict_and_permissive_destinations_only() -> None:
    clusters = snap(shop(), node("web")).items(CLUSTER)
    assert not clusters["outbound|web"].HasField("transport_socket")
    socket = clusters["outbound|orders"].transport_socket
    assert socket.name == "envoy.transport_sockets.tls"
    context = unpack(socket.typed_config, tls_pb2.UpstreamTlsContext)
    expected = text_format.Parse(
        f"""
        common_tls_context {{
          tls_params {{ tls_minimum_protocol_version: TLSv1_3
                        tls_maximum_protocol_version: TLSv1_3 }}
          tls_certificate_sds_secret_configs {{ name: "default" sds_config {{ ads {{}} }} }}
          combined_validation_context {{
            default_validation_context {{
              match_typed_subject_alt_names {{
                san_type: URI matcher {{ exact: "spiffe://{TD}/svc/orders" }} }}
            }}
            validation_context_sds_secret_config {{
              name: "trust-bundle" sds_config {{ ads {{}} }} }}
          }}
        }}""",
        tls_pb2.UpstreamTlsContext(),
    )
    assert context == expected
    assert clusters["outbound|cart"].HasField("transport_socket")
    assert not clusters["inbound|web"].HasField("transport_socket")


def test_inbound_chains_follow_the_mode() -> None:
    listeners = snap(shop(), node("web", "orders", "cart")).items(LISTENER)
    plain = listeners["inbound|web"]
    assert len(plain.filter_chains) == 1 and not plain.listener_filters
    assert not plain.filter_chains[0].HasField("transport_socket")
    assert not plain.filter_chains[0].HasField("filter_chain_match")

    strict = listeners["inbound|orders"]
    (chain,) = strict.filter_chains
    assert chain.filter_chain_match.transport_protocol == "tls"
    context = unpack(chain.transport_socket.typed_config, tls_pb2.DownstreamTlsContext)
    assert context.require_client_certificate.value is True
    common = context.common_tls_context
    assert [c.name for c in common.tls_certificate_sds_secret_configs] == [
        f"spiffe://{TD}/svc/orders"
    ]
    (san,) = (
        common.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    )
    assert san.san_type == common_pb2.SubjectAltNameMatcher.URI
    assert san.matcher.prefix == f"spiffe://{TD}/"
    assert common.combined_validation_context.validation_context_sds_secret_config.name == (
        "trust-bundle"
    )

    permissive = listeners["inbound|cart"]
    assert [f.name for f in permissive.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    tls_chain, raw_chain = permissive.filter_chains
    assert tls_chain.filter_chain_match.transport_protocol == "tls"
    assert raw_chain.filter_chain_match.transport_protocol == "raw_buffer"
    assert not raw_chain.HasField("transport_socket")
    assert tls_chain.filters == raw_chain.filters


def rbac_filters(listener: Any) -> list[Any]:
    filters = list(hcm_of(listener).http_filters)
    assert filters[-1].name == "envoy.filters.http.router"
    return [unpack(f.typed_config, http_rbac_pb2.RBAC) for f in filters[:-1]]


def test_rbac_deny_then_allow_with_spiffe_ids() -> None:
    listeners = snap(shop(), node("web", "orders", "cart")).items(LISTENER)
    assert rbac_filters(listeners["inbound|web"]) == []  # no Policy: no RBAC
    deny, allow = rbac_filters(listeners["inbound|orders"])
    assert deny.rules.action == rbac_pb2.RBAC.DENY
    (deny_policy,) = deny.rules.policies.values()
    assert [p.authenticated.principal_name.exact for p in deny_policy.principals] == [
        f"spiffe://{TD}/svc/batch"
    ]
    assert [p.any for p in deny_policy.permissions] == [True]
    assert allow.rules.action == rbac_pb2.RBAC.ALLOW
    assert [
        p.authenticated.principal_name.exact for p in allow.rules.policies["allow"].principals
    ] == [
        f"spiffe://{TD}/svc/web",
        "spiffe://other.org/svc/x",
    ]


def test_audit_mode_uses_shadow_rules_and_empty_allow_means_any_peer() -> None:
    listeners = snap(shop(), node("cart")).items(LISTENER)
    (allow,) = rbac_filters(listeners["inbound|cart"])
    assert not allow.HasField("rules")
    (principal,) = allow.shadow_rules.policies["allow"].principals
    assert principal.HasField("authenticated")
    assert not principal.authenticated.HasField("principal_name")


def test_outbound_listener_per_local_service_only_with_a_port() -> None:
    assert snap(shop(), node("web")).names(LISTENER) == ["inbound|web", "outbound"]
    snapshot = snap(shop(), node("web", "orders", outbound_port=15100))
    assert snapshot.names(LISTENER) == [
        "inbound|orders",
        "inbound|web",
        "outbound",
        "outbound|orders",
        "outbound|web",
    ]
    listener = snapshot.items(LISTENER)["outbound|web"]
    assert listener.address.socket_address.port_value == 15100
    assert hcm_of(listener).rds.route_config_name == "outbound"


def test_proxyless_clients_get_plaintext_and_no_strict_services() -> None:
    snapshot = Translator(shop(), [], trust_domain=TD, trust_bundle=PEM).for_node(NodeInfo("g"))
    assert snapshot.consistency_errors() == []
    assert snapshot.names(SECRET) == []
    assert snapshot.names(ROUTE) == ["grpc|cart", "grpc|web"]
    assert "orders" not in snapshot.names(LISTENER)
    for cluster in snapshot.items(CLUSTER).values():
        assert not cluster.HasField("transport_socket")


def test_every_mtls_field_is_in_the_supported_subset() -> None:
    snapshot = snap(shop(), node("web", "orders", "cart", outbound_port=1))
    for type_url in PUSH_ORDER:
        for name, message in snapshot.items(type_url).items():
            unsupported = set(set_field_paths(message)) - ALLOWED[type_url]
            assert not unsupported, f"{name}: {sorted(unsupported)}"


def test_old_call_signatures_still_work() -> None:
    snapshot = Translator(shop(), []).for_node(node("orders"))
    assert snapshot.names(SECRET) == []
    context = unpack(
        snapshot.items(CLUSTER)["outbound|orders"].transport_socket.typed_config,
        tls_pb2.UpstreamTlsContext,
    )
    sans = context.common_tls_context.combined_validation_context.default_validation_context
    assert sans.match_typed_subject_alt_names[0].matcher.exact == "spiffe://plait.local/svc/orders"
