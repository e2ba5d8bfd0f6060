"""Decode mutual TLS: the transport sockets' TLS contexts and the Secret (SDS) resource.

Part of :mod:`plait.proxy.xds_decode` (its rules apply). Exactly the translator's shapes
are accepted (docs/mtls.md): TLS 1.3 only, identities named over SDS (never inline keys),
SAN matchers ``exact`` (upstream, :func:`upstream_tls`) or one ``prefix`` on the trust
domain (downstream, :func:`downstream_tls`) on URI SANs; a Secret is a trust bundle of
PEM roots only. Everything else is refused naming the field.
"""

from __future__ import annotations

from typing import Any

from plait.model.names import SPIFFE_ID_RE
from plait.proxy.runtime import DownstreamTls, Secret, UpstreamTls
from plait.proxy.xds_schema import common_pb2, tls_pb2
from plait.proxy.xds_subset import Ctx, Proto, ads_source, at, check, enum_name, unpack

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
DEFAULT_IDENTITY = "default"
PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"

_TLS13 = common_pb2.TlsParameters.TLSv1_3
_URI_SAN = common_pb2.SubjectAltNameMatcher.URI


def _tls_context(socket: Proto, cls: Any, ctx: Ctx, path: str) -> Proto:
    check(socket, ctx, path)
    if socket.name != TLS_TRANSPORT_SOCKET:
        raise ctx.error(at(path, "name"), f"only {TLS_TRANSPORT_SOCKET} is supported")
    if not socket.HasField("typed_config"):
        raise ctx.error(at(path, "typed_config"), f"the {cls.DESCRIPTOR.name} is required")
    context = unpack(socket.typed_config, cls, ctx, at(path, "typed_config"))
    check(context, ctx, at(path, "typed_config"))
    if not context.HasField("common_tls_context"):
        raise ctx.error(at(path, "typed_config.common_tls_context"), "is required")
    return context


_San = tuple[str, str]  # ("exact" | "prefix", value)


def _common_tls_context(msg: Proto, ctx: Ctx, path: str) -> tuple[str, str, list[_San]]:
    """(certificate SDS name, validation SDS name, URI SAN matchers), checked."""
    check(msg, ctx, path)
    params_path = at(path, "tls_params")
    if not msg.HasField("tls_params"):
        raise ctx.error(params_path, "must pin TLSv1_3 (minimum and maximum)")
    check(msg.tls_params, ctx, params_path)
    for field in ("tls_minimum_protocol_version", "tls_maximum_protocol_version"):
        version = int(getattr(msg.tls_params, field))
        if version != _TLS13:
            name = enum_name(common_pb2.TlsParameters.TlsProtocol, version)
            raise ctx.error(
                at(params_path, field),
                f"{name} is not allowed: proxy-to-proxy links are TLS 1.3 only (TLSv1_3)",
            )
    certs = msg.tls_certificate_sds_secret_configs
    if len(certs) != 1:
        raise ctx.error(
            at(path, "tls_certificate_sds_secret_configs"), "name exactly one identity over SDS"
        )
    certificate = _sds_name(certs[0], ctx, at(path, "tls_certificate_sds_secret_configs[0]"))
    combined_path = at(path, "combined_validation_context")
    if not msg.HasField("combined_validation_context"):
        raise ctx.error(combined_path, "is required (the trust bundle and SAN matchers)")
    combined = msg.combined_validation_context
    check(combined, ctx, combined_path)
    if not combined.HasField("validation_context_sds_secret_config"):
        raise ctx.error(
            at(combined_path, "validation_context_sds_secret_config"),
            "is required: name the trust bundle Secret",
        )
    validation = _sds_name(
        combined.validation_context_sds_secret_config,
        ctx,
        at(combined_path, "validation_context_sds_secret_config"),
    )
    default_path = at(combined_path, "default_validation_context")
    default = combined.default_validation_context
    check(default, ctx, default_path)
    if default.HasField("trusted_ca"):
        raise ctx.error(
            at(default_path, "trusted_ca"), "the trusted roots come from the SDS trust bundle"
        )
    sans: list[_San] = []
    for i, matcher in enumerate(default.match_typed_subject_alt_names):
        where = at(default_path, f"match_typed_subject_alt_names[{i}]")
        check(matcher, ctx, where)
        if int(matcher.san_type) != _URI_SAN:
            name = enum_name(common_pb2.SubjectAltNameMatcher.SanType, int(matcher.san_type))
            raise ctx.error(at(where, "san_type"), f"{name} is not supported (use URI)")
        check(matcher.matcher, ctx, at(where, "matcher"))
        pattern = matcher.matcher.WhichOneof("match_pattern")
        value = str(getattr(matcher.matcher, pattern)) if pattern else ""
        if pattern not in ("exact", "prefix") or not value:
            raise ctx.error(at(where, "matcher"), "give a non-empty exact or prefix")
        sans.append((pattern, value))
    return certificate, validation, sans


def _sds_name(msg: Proto, ctx: Ctx, path: str) -> str:
    check(msg, ctx, path)
    if not msg.name:
        raise ctx.error(at(path, "name"), "a secret name is required")
    if msg.HasField("sds_config"):
        ads_source(msg.sds_config, ctx, at(path, "sds_config"))
    return str(msg.name)


def downstream_tls(socket: Proto, ctx: Ctx, path: str, service: str | None) -> DownstreamTls:
    context = _tls_context(socket, tls_pb2.DownstreamTlsContext, ctx, path)
    path = at(path, "typed_config")
    if not (
        context.HasField("require_client_certificate") and context.require_client_certificate.value
    ):
        raise ctx.error(
            at(path, "require_client_certificate"),
            "must be true: inbound mTLS needs a client certificate",
        )
    common_path = at(path, "common_tls_context")
    certificate, validation, sans = _common_tls_context(
        context.common_tls_context, ctx, common_path
    )
    cert_path = at(common_path, "tls_certificate_sds_secret_configs[0].name")
    identity = SPIFFE_ID_RE.match(certificate)
    if identity is None or identity.group(3) != service:
        raise ctx.error(cert_path, f"must be the SPIFFE id spiffe://<td>/svc/{service}")
    expected = f"spiffe://{identity.group(1)}/"
    san_path = at(common_path, "combined_validation_context.default_validation_context")
    if sans != [("prefix", expected)]:
        raise ctx.error(
            at(san_path, "match_typed_subject_alt_names"),
            f"give one URI SAN matcher, prefix {expected!r} (the trust domain)",
        )
    return DownstreamTls(
        certificate_secret=certificate,
        validation_secret=validation,
        require_client_certificate=True,
        peer_san_prefix=expected,
    )


def upstream_tls(socket: Proto, ctx: Ctx, path: str) -> UpstreamTls:
    context = _tls_context(socket, tls_pb2.UpstreamTlsContext, ctx, path)
    common_path = at(path, "typed_config.common_tls_context")
    certificate, validation, sans = _common_tls_context(
        context.common_tls_context, ctx, common_path
    )
    if certificate != DEFAULT_IDENTITY:
        raise ctx.error(
            at(common_path, "tls_certificate_sds_secret_configs[0].name"),
            f"must be {DEFAULT_IDENTITY!r}: the calling local service's identity",
        )
    san_path = at(
        common_path,
        "combined_validation_context.default_validation_context.match_typed_subject_alt_names",
    )
    if not sans or any(kind != "exact" for kind, _ in sans):
        raise ctx.error(san_path, "give the destination's SPIFFE id(s) as exact URI SANs")
    return UpstreamTls(
        certificate_secret=certificate,
        validation_secret=validation,
        server_sans=tuple(value for _, value in sans),
    )


def decode_secret(msg: Proto) -> Secret:
    ctx = Ctx("Secret", str(msg.name))
    check(msg, ctx, "")
    if not msg.name:
        raise ctx.error("name", "a secret needs a name")
    if not msg.HasField("validation_context"):
        raise ctx.error("validation_context", "plait sends trust bundles only: it is required")
    check(msg.validation_context, ctx, "validation_context")
    if msg.validation_context.match_typed_subject_alt_names:
        raise ctx.error(
            "validation_context.match_typed_subject_alt_names",
            "SAN matchers belong in the TLS context, not the trust bundle",
        )
    path = "validation_context.trusted_ca"
    if not msg.validation_context.HasField("trusted_ca"):
        raise ctx.error(path, "is required (PEM roots as inline_bytes)")
    check(msg.validation_context.trusted_ca, ctx, path)
    pem = bytes(msg.validation_context.trusted_ca.inline_bytes)
    if PEM_CERTIFICATE not in pem:
        raise ctx.error(at(path, "inline_bytes"), "must hold PEM certificates")
    return Secret(name=ctx.name, trusted_ca=pem)
