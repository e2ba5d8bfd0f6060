"""The proxy decodes exactly docs/mtls.md's shapes, and refuses anything else naming the
field: TLS versions, inline keys, SAN matchers, RBAC permissions and principals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import regex_pb2

from plait.proxy.runtime import (
    DownstreamTls,
    ProxyConfig,
    RbacFilter,
    Secret,
    UnsupportedConfig,
    UpstreamTls,
)
from plait.proxy.xds_decode import apply_response, decode_cluster, decode_listener, decode_secret
from plait.xds import builders as b
from plait.xds.types import SECRET

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
TD = "plait.local"


def upstream_cluster() -> Any:
    tls = b.make_upstream_tls("default", "trust-bundle", f"spiffe://{TD}/svc/orders")
    return b.make_eds_cluster("outbound|orders", connect_timeout=1, transport_socket=tls)


def inbound_listener(mode: b.TlsMode = "strict", filters: list[Any] | None = None) -> Any:
    route = b.make_route(b.make_route_match(), cluster="inbound|orders", timeout=0)
    routes = b.make_route_configuration(
        "inbound|orders", [b.make_virtual_host("v", ["*"], [route])]
    )
    tls = b.make_downstream_tls(f"spiffe://{TD}/svc/orders", "trust-bundle", f"spiffe://{TD}/")
    return b.make_http_listener(
        "inbound|orders",
        "127.0.0.1",
        15006,
        direction="inbound",
        route_config=routes,
        http_filters=filters or [],
        tls_mode=mode,
        downstream_tls=tls if mode != "plaintext" else None,
    )


def refusal(call: Callable[[], object]) -> UnsupportedConfig:
    with pytest.raises(UnsupportedConfig) as info:
        call()
    return info.value


def test_secret_decodes_and_fills_proxy_config() -> None:
    secret = b.make_trust_bundle_secret("trust-bundle", PEM)
    assert decode_secret(secret) == Secret("trust-bundle", PEM)
    cfg = apply_response(ProxyConfig(), SECRET, [b.pack(secret)], version="v1")
    assert cfg.secrets == {"trust-bundle": Secret("trust-bundle", PEM)}
    assert apply_response(cfg, SECRET, []).secrets == {}


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda s: s.tls_certificate.private_key.SetInParent(), "tls_certificate", "host"),
        (lambda s: s.ClearField("validation_context"), "validation_context", "required"),
        (
            lambda s: setattr(s.validation_context.trusted_ca, "filename", "/etc/ca.pem"),
            "validation_context.trusted_ca.filename",
            "inline_bytes",
        ),
        (
            lambda s: setattr(s.validation_context.trusted_ca, "inline_bytes", b"junk"),
            "validation_context.trusted_ca.inline_bytes",
            "PEM",
        ),
    ],
)
def test_secret_refusals(mutate: Callable[[Any], None], field: str, words: str) -> None:
    secret = b.make_trust_bundle_secret("trust-bundle", PEM)
    mutate(secret)
    err = refusal(lambda: decode_secret(secret))
    assert (err.type_name, err.field_path) == ("Secret", field)
    assert words in err.message


def test_upstream_tls_decodes() -> None:
    cluster = decode_cluster(upstream_cluster())
    assert cluster.tls == UpstreamTls("default", "trust-bundle", (f"spiffe://{TD}/svc/orders",))


def _upstream_common(m: Any) -> Any:
    context = tls_pb2.UpstreamTlsContext()
    m.transport_socket.typed_config.Unpack(context)
    return context


def _with_upstream(change: Callable[[Any], None]) -> Callable[[Any], None]:
    def mutate(m: Any) -> None:
        context = _upstream_common(m)
        change(context.common_tls_context)
        m.transport_socket.typed_config.CopyFrom(b.pack(context))

    return mutate


SAN = "combined_validation_context.default_validation_context.match_typed_subject_alt_names[0]"
TC = "transport_socket.typed_config.common_tls_context"


def _regex_san(c: Any) -> None:
    matcher = (
        c.combined_validation_context.default_validation_context.match_typed_subject_alt_names[0]
    )
    matcher.matcher.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=".*"))


def _dns_san(c: Any) -> None:
    matcher = (
        c.combined_validation_context.default_validation_context.match_typed_subject_alt_names[0]
    )
    matcher.san_type = common_pb2.SubjectAltNameMatcher.DNS


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (
            _with_upstream(lambda c: setattr(c.tls_params, "tls_minimum_protocol_version", 3)),
            f"{TC}.tls_params.tls_minimum_protocol_version",
            "TLSv1_2 is not allowed",
        ),
        (
            _with_upstream(lambda c: c.ClearField("tls_params")),
            f"{TC}.tls_params",
            "TLSv1_3",
        ),
        (
            _with_upstream(lambda c: c.tls_certificates.add().private_key.inline_bytes.__len__()),
            f"{TC}.tls_certificates",
            "private keys",
        ),
        (_with_upstream(_regex_san), f"{TC}.{SAN}.matcher.safe_regex", "regular expressions"),
        (_with_upstream(_dns_san), f"{TC}.{SAN}.san_type", "DNS is not supported"),
        (
            _with_upstream(
                lambda c: setattr(c.tls_certificate_sds_secret_configs[0], "name", "mine")
            ),
            f"{TC}.tls_certificate_sds_secret_configs[0].name",
            "'default'",
        ),
        (
            lambda m: setattr(m.transport_socket, "name", "envoy.transport_sockets.alts"),
            "transport_socket.name",
            "only envoy.transport_sockets.tls",
        ),
        (
            _with_upstream(lambda c: c.alpn_protocols.append("h2")),
            f"{TC}.alpn_protocols",
            "not supported",
        ),
    ],
)
def test_upstream_tls_refusals(mutate: Callable[[Any], None], field: str, words: str) -> None:
    cluster = upstream_cluster()
    mutate(cluster)
    err = refusal(lambda: decode_cluster(cluster))
    assert (err.type_name, err.field_path) == ("Cluster", field)
    assert words in err.message


def test_tls_on_a_static_cluster_is_refused() -> None:
    cluster = b.make_static_cluster("inbound|x", [("127.0.0.1", 1)], connect_timeout=1)
    cluster.transport_socket.CopyFrom(upstream_cluster().transport_socket)
    assert refusal(lambda: decode_cluster(cluster)).field_path == "transport_socket"


@pytest.mark.parametrize("mode", ["plaintext", "strict", "permissive"])
def test_inbound_modes_decode(mode: b.TlsMode) -> None:
    listener = decode_listener(inbound_listener(mode))
    assert listener.tls_mode == mode
    assert listener.service == "orders"
    if mode == "plaintext":
        assert listener.tls is None
    else:
        assert listener.tls == DownstreamTls(
            f"spiffe://{TD}/svc/orders", "trust-bundle", True, f"spiffe://{TD}/"
        )


def test_rbac_filters_decode_in_order() -> None:
    filters = [
        b.make_rbac_filter("deny", "DENY", [f"spiffe://{TD}/svc/batch"]),
        b.make_rbac_filter("allow", "ALLOW", [], shadow=True),
    ]
    listener = decode_listener(inbound_listener("permissive", filters))
    assert listener.rbac == (
        RbacFilter("deny", "DENY", frozenset({f"spiffe://{TD}/svc/batch"})),
        RbacFilter("allow", "ALLOW", frozenset(), authenticated_any=True, shadow=True),
    )


HCM = "filter_chains[0].filters[0].typed_config"
DTC = "filter_chains[0].transport_socket.typed_config"


def _rbac(change: Callable[[Any], None]) -> Any:
    rules = rbac_pb2.RBAC(
        action=rbac_pb2.RBAC.ALLOW,
        policies={
            "allow": rbac_pb2.Policy(
                permissions=[rbac_pb2.Permission(any=True)],
                principals=[rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated())],
            )
        },
    )
    config = http_rbac_pb2.RBAC(rules=rules)
    change(config)
    return b.make_router_filter().__class__(name=b.RBAC_FILTER, typed_config=b.pack(config))


def _downstream(change: Callable[[Any], None]) -> Any:
    listener = inbound_listener("strict")
    socket = listener.filter_chains[0].transport_socket
    context = tls_pb2.DownstreamTlsContext()
    socket.typed_config.Unpack(context)
    change(context)
    socket.typed_config.CopyFrom(b.pack(context))
    return listener


P0 = "rules.policies['allow']"


@pytest.mark.parametrize(
    ("listener", "field", "words"),
    [
        (
            inbound_listener(
                "strict",
                [_rbac(lambda c: c.rules.policies["allow"].permissions[0].ClearField("any"))],
            ),
            f"{HCM}.http_filters[0].typed_config.{P0}.permissions[0].any",
            "caller's identity",
        ),
        (
            inbound_listener(
                "strict",
                [_rbac(lambda c: c.rules.policies["allow"].permissions.add(destination_port=80))],
            ),
            f"{HCM}.http_filters[0].typed_config.{P0}.permissions[1].destination_port",
            "not supported",
        ),
        (
            inbound_listener(
                "strict", [_rbac(lambda c: c.rules.policies["allow"].principals.add(any=True))]
            ),
            f"{HCM}.http_filters[0].typed_config.{P0}.principals[1].any",
            "not supported",
        ),
        (
            inbound_listener(
                "strict",
                [
                    _rbac(
                        lambda c: (
                            c.rules.policies["allow"]
                            .principals[0]
                            .authenticated.principal_name.SetInParent()
                            or setattr(
                                c.rules.policies["allow"]
                                .principals[0]
                                .authenticated.principal_name,
                                "prefix",
                                "spiffe://",
                            )
                        )
                    )
                ],
            ),
            f"{HCM}.http_filters[0].typed_config.{P0}.principals[0].authenticated.principal_name.exact",
            "exact match",
        ),
        (
            inbound_listener(
                "strict", [_rbac(lambda c: setattr(c.rules, "action", rbac_pb2.RBAC.LOG))]
            ),
            f"{HCM}.http_filters[0].typed_config.rules.action",
            "LOG is not supported",
        ),
        (
            inbound_listener("strict", [_rbac(lambda c: c.shadow_rules.CopyFrom(c.rules))]),
            f"{HCM}.http_filters[0].typed_config.rules",
            "exactly one of rules or shadow_rules",
        ),
        (
            inbound_listener("strict", [b.make_router_filter(), _rbac(lambda c: None)]),
            f"{HCM}.http_filters[1]",
            "must be the last filter",
        ),
        (
            _downstream(lambda c: c.require_client_certificate.Clear()),
            f"{DTC}.require_client_certificate",
            "must be true",
        ),
        (
            _downstream(
                lambda c: setattr(
                    c.common_tls_context.tls_params, "tls_maximum_protocol_version", 3
                )
            ),
            f"{DTC}.common_tls_context.tls_params.tls_maximum_protocol_version",
            "TLS 1.3 only",
        ),
        (
            _downstream(
                lambda c: setattr(
                    c.common_tls_context.tls_certificate_sds_secret_configs[0],
                    "name",
                    "spiffe://plait.local/svc/other",
                )
            ),
            f"{DTC}.common_tls_context.tls_certificate_sds_secret_configs[0].name",
            "svc/orders",
        ),
        (
            _downstream(
                lambda c: setattr(
                    c.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names[
                        0
                    ].matcher,
                    "prefix",
                    "spiffe://",
                )
            ),
            f"{DTC}.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names",
            "trust domain",
        ),
        (
            _downstream(lambda c: c.session_ticket_keys.SetInParent()),
            f"{DTC}.session_ticket_keys",
            "not supported",
        ),
    ],
)
def test_inbound_refusals(listener: Any, field: str, words: str) -> None:
    err = refusal(lambda: decode_listener(listener))
    assert (err.type_name, err.resource, err.field_path) == ("Listener", "inbound|orders", field)
    assert words in err.message


def test_chain_shape_refusals() -> None:
    permissive = inbound_listener("permissive")
    permissive.filter_chains[1].filter_chain_match.transport_protocol = "tls"
    assert "needs the TLS context" in refusal(lambda: decode_listener(permissive)).message
    two_raw = inbound_listener("permissive")
    two_raw.filter_chains[0].ClearField("transport_socket")
    two_raw.filter_chains[0].filter_chain_match.transport_protocol = "raw_buffer"
    assert "give one chain" in refusal(lambda: decode_listener(two_raw)).message
    different = inbound_listener("permissive")
    other = inbound_listener("plaintext", [b.make_rbac_filter("allow", "ALLOW")])
    different.filter_chains[1].filters[0].CopyFrom(other.filter_chains[0].filters[0])
    assert "same HTTP connection manager" in refusal(lambda: decode_listener(different)).message
    inspector_on_plain = inbound_listener("plaintext")
    inspector_on_plain.listener_filters.extend(inbound_listener("permissive").listener_filters)
    err = refusal(lambda: decode_listener(inspector_on_plain))
    assert err.field_path == "listener_filters[0]"
    outbound_rbac = b.make_http_listener(
        "outbound", "127.0.0.1", 1, direction="outbound", rds_name="outbound",
        http_filters=[b.make_rbac_filter("allow", "ALLOW")],
    )  # fmt: skip
    assert "inbound listeners" in refusal(lambda: decode_listener(outbound_rbac)).message


def test_outbound_service_listener_names_its_caller() -> None:
    listener = b.make_http_listener(
        "outbound|web", "127.0.0.1", 1, direction="outbound", rds_name="outbound"
    )
    decoded = decode_listener(listener)
    assert (decoded.service, decoded.direction, decoded.tls_mode) == (
        "web",
        "outbound",
        "plaintext",
    )
