"""Decode xDS resources into the proxy's runtime types, or refuse them field by field.

Rules of this module and its parts (listed below):

- It is pure: protos in, frozen :mod:`plait.proxy.runtime` values out. No I/O, no clock.
- The supported subset is the one docs/xds.md lists. Every message we read is first
  checked against the allow-list in :mod:`plait.proxy.xds_subset` (``msg.ListFields()``
  gives exactly the fields that are set), so anything set outside it is refused with
  :class:`UnsupportedConfig` naming the resource and the exact field path, e.g.
  ``Cluster 'x': lb_policy: RING_HASH is not supported (use ROUND_ROBIN or LEAST_REQUEST)``.
  Fields our protos do not even know (a newer control plane) are refused the same way.
- Defaults follow Envoy, so that Envoy and a plait proxy do the same thing with the same
  resources: an unset cluster ``connect_timeout`` is 5 s, an unset route ``timeout`` is
  15 s (0 switches it off), an unset ``retry_policy.num_retries`` is 1, an unset
  ``lb_policy`` is ``ROUND_ROBIN``, an unset cluster ``type`` is ``STATIC``.
- :func:`apply_response` is state of the world: a Listener, Cluster or Secret response
  replaces every resource of its type. A ClusterLoadAssignment or RouteConfiguration
  response *merges* (the xDS protocol lets those be changed-only, docs/xds.md): the
  resources it carries replace those names, the ones it does not carry are kept. A
  config holds route tables only for names its listeners reference and endpoints only
  for its EDS clusters; resources nobody asked for are dropped, and a CDS/LDS update
  that drops a cluster/listener drops what only it needed. The first bad resource
  refuses the whole response (the caller NACKs and keeps its config).

Mutual TLS and RBAC (docs/mtls.md): exactly the translator's shapes are accepted —
TLS 1.3 only, identities named over SDS (never inline keys), SAN matchers ``exact``
(upstream) or one ``prefix`` (downstream) on URI SANs, RBAC policies whose permissions
are ``any`` and whose principals are ``authenticated.principal_name.exact`` or
``authenticated {}``; everything else is refused naming the field.

Invariant (fuzzed in the tests): any input either decodes or raises
:class:`UnsupportedConfig`, never another exception.

Messages are parsed with the classes of :mod:`plait.proxy.xds_schema` (a private
descriptor pool: the proxy does not import the generated envoy modules, docs/internals.md
"Memory"). The decoders only read fields, so generated messages decode the same.

The decoders live in one module per resource type: :mod:`~plait.proxy.xds_decode_listener`
(Listener, the HTTP connection manager, RBAC), :mod:`~plait.proxy.xds_decode_route`
(RouteConfiguration), :mod:`~plait.proxy.xds_decode_cluster` (Cluster),
:mod:`~plait.proxy.xds_decode_endpoint` (ClusterLoadAssignment) and
:mod:`~plait.proxy.xds_decode_tls` (TLS contexts, Secret); this module holds the whole
responses (decode, apply, merge) and re-exports the ``decode_*`` functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from plait.proxy.runtime import ProxyConfig, UnsupportedConfig
from plait.proxy.xds_decode_cluster import decode_cluster
from plait.proxy.xds_decode_endpoint import decode_load_assignment
from plait.proxy.xds_decode_listener import decode_listener
from plait.proxy.xds_decode_route import decode_route_configuration
from plait.proxy.xds_decode_tls import decode_secret
from plait.proxy.xds_schema import cluster_pb2, endpoint_pb2, listener_pb2, route_pb2, secret_pb2
from plait.proxy.xds_subset import Ctx, Proto, unpack
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

__all__ = [
    "apply_decoded",
    "apply_response",
    "decode_cluster",
    "decode_listener",
    "decode_load_assignment",
    "decode_resources",
    "decode_route_configuration",
    "decode_secret",
    "eds_names",
    "held_names",
    "merge_raw",
    "raw_name",
    "rds_names",
]


# --- whole responses -----------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    type_name: str
    message: Any
    decode: Callable[[Proto], Any]
    key: Callable[[Any], str]


_KINDS: dict[str, _Kind] = {
    LISTENER: _Kind("Listener", listener_pb2.Listener, decode_listener, lambda v: v.name),
    ROUTE: _Kind(
        "RouteConfiguration",
        route_pb2.RouteConfiguration,
        decode_route_configuration,
        lambda v: v.name,
    ),
    CLUSTER: _Kind("Cluster", cluster_pb2.Cluster, decode_cluster, lambda v: v.name),
    ENDPOINT: _Kind(
        "ClusterLoadAssignment",
        endpoint_pb2.ClusterLoadAssignment,
        decode_load_assignment,
        lambda v: v[0],
    ),
    SECRET: _Kind("Secret", secret_pb2.Secret, decode_secret, lambda v: v.name),
}


def decode_resources(type_url: str, resources: Sequence[Proto]) -> dict[str, Any]:
    """Decode one response's resources (``google.protobuf.Any``) by name, all or none."""
    kind = _KINDS.get(type_url)
    if kind is None:
        name = type_url.rpartition("/")[2].rpartition(".")[2] or type_url
        raise UnsupportedConfig(name, "", "type_url", "this resource type is not supported")
    out: dict[str, Any] = {}
    for i, packed in enumerate(resources):
        ctx = Ctx(kind.type_name, "")
        if packed.type_url != type_url:
            raise ctx.error(f"resources[{i}]", f"{packed.type_url!r} in a {type_url} response")
        value = kind.decode(unpack(packed, kind.message, ctx, f"resources[{i}]"))
        name = kind.key(value)
        if name in out:
            raise Ctx(kind.type_name, name).error("name", "the response has it twice")
        out[name] = value
    return out


def apply_response(
    current: ProxyConfig, type_url: str, resources: Sequence[Proto], *, version: str | None = None
) -> ProxyConfig:
    """A new config with ``resources`` applied: for Listener, Cluster and Secret they
    replace every resource of the type; for ClusterLoadAssignment and
    RouteConfiguration (:data:`~plait.xds.types.PARTIAL_TYPES`) they replace the names
    they carry and the other names still needed are kept (see the module docstring).

    Raises :class:`UnsupportedConfig` for the first resource outside the subset; the
    caller NACKs and keeps ``current``. ``version`` (the response's ``version_info``) is
    recorded in ``versions``.
    """
    return apply_decoded(current, type_url, decode_resources(type_url, resources), version)


def apply_decoded(
    current: ProxyConfig, type_url: str, decoded: dict[str, Any], version: str | None = None
) -> ProxyConfig:
    """:func:`apply_response` for what :func:`decode_resources` gave."""
    versions = dict(current.versions)
    if version is not None:
        versions[type_url] = version
    cfg = replace(current, versions=versions)
    if type_url == LISTENER:
        cfg = replace(cfg, listeners=decoded)
        keep = set(rds_names(cfg))
        return replace(cfg, route_tables={k: v for k, v in cfg.route_tables.items() if k in keep})
    if type_url == ROUTE:
        keep = set(rds_names(cfg))
        merged = {**cfg.route_tables, **decoded}
        return replace(cfg, route_tables={k: v for k, v in merged.items() if k in keep})
    if type_url == SECRET:
        return replace(cfg, secrets=decoded)
    if type_url == CLUSTER:
        cfg = replace(cfg, clusters=decoded)
        keep = set(eds_names(cfg))
        return replace(cfg, endpoints={k: v for k, v in cfg.endpoints.items() if k in keep})
    keep = set(eds_names(cfg))
    endpoints = {**cfg.endpoints, **{k: v[1] for k, v in decoded.items()}}
    return replace(cfg, endpoints={k: v for k, v in endpoints.items() if k in keep})


def held_names(cfg: ProxyConfig, type_url: str) -> frozenset[str]:
    """The names of ``type_url`` resources ``cfg`` holds (for the merged types)."""
    if type_url == ENDPOINT:
        return frozenset(cfg.endpoints)
    if type_url == ROUTE:
        return frozenset(cfg.route_tables)
    raise ValueError(f"{type_url} responses are not merged")


def merge_raw(
    held: Mapping[str, Any],
    names: Sequence[str],
    resources: Sequence[Any],
    keep: AbstractSet[str],
) -> dict[str, Any]:
    """The raw resources (``Any``, or their bytes) a proxy holds after it applied a
    merged response: ``held`` by name, the response's ``resources`` (named ``names``, as
    :func:`decode_resources` gave them, in order) replacing theirs, only names in
    ``keep`` (:func:`held_names` of the config after the response), sorted by name.
    Kept for the last-known-good file, which must hold every resource in the config."""
    merged = {**held, **dict(zip(names, resources, strict=True))}
    return {name: merged[name] for name in sorted(merged) if name in keep}


def raw_name(type_url: str, raw: Any) -> str:
    """The name of one raw resource (an ``Any`` or its serialized bytes) of ``type_url``,
    parsed, not validated; "" if it cannot be parsed (it is then dropped)."""
    kind = _KINDS.get(type_url)
    if kind is None:
        return ""
    try:
        packed = any_pb2.Any.FromString(raw) if isinstance(raw, bytes) else raw
        message = kind.message.FromString(packed.value)
    except DecodeError:
        return ""
    name = message.cluster_name if type_url == ENDPOINT else message.name
    return str(name)


def eds_names(cfg: ProxyConfig) -> list[str]:
    """The EDS clusters whose ClusterLoadAssignments to subscribe to, sorted."""
    return sorted(name for name, c in cfg.clusters.items() if c.discovery == "eds")


def rds_names(cfg: ProxyConfig) -> list[str]:
    """The RouteConfigurations the listeners name (RDS), sorted."""
    return sorted(
        {lst.route_config_name for lst in cfg.listeners.values() if lst.route_config_name}
    )
