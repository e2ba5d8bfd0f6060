"""The proxy's own view of its xDS config: plain frozen values the data plane reads.

`plait.proxy.xds_decode` turns xDS protos into these (or refuses them with a
:class:`UnsupportedConfig` naming the resource and field); the data plane never touches a
proto. Everything the request path needs is precomputed here at apply time (lowercased
domains, total weights), so a request does no config parsing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["inbound", "outbound"]
LbPolicy = Literal["least_request", "round_robin"]


class UnsupportedConfig(ValueError):
    """An xDS resource uses something outside plait's subset, or is invalid.

    ``str()`` is the NACK error detail: ``"<type> <name>: <field path>: <what is wrong>"``.
    """

    def __init__(self, type_name: str, resource: str, field_path: str, message: str) -> None:
        self.type_name = type_name
        self.resource = resource
        self.field_path = field_path
        self.message = message
        super().__init__(f"{type_name} {resource!r}: {field_path}: {message}")


@dataclass(frozen=True)
class HeaderMatcher:
    name: str  # lowercase
    exact: str | None = None
    prefix: str | None = None
    present: bool | None = None
    invert: bool = False


@dataclass(frozen=True)
class RouteMatch:
    prefix: str | None = None  # path prefix; "" or "/" matches every path
    path: str | None = None  # exact path (query string excluded)
    headers: tuple[HeaderMatcher, ...] = ()


@dataclass(frozen=True)
class WeightedCluster:
    cluster: str
    weight: int


@dataclass(frozen=True)
class RetryPolicy:
    num_retries: int
    # Envoy names: connect-failure, reset, 5xx, gateway-error, retriable-4xx
    retry_on: frozenset[str]
    per_try_timeout: float | None = None


@dataclass(frozen=True)
class Route:
    name: str
    match: RouteMatch
    clusters: tuple[WeightedCluster, ...]  # one entry with weight 1 for a plain cluster
    total_weight: int
    timeout: float | None = None  # seconds; None = no route timeout
    retry: RetryPolicy | None = None


@dataclass(frozen=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]  # lowercase; "*" matches any host
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class RouteTable:
    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    # host (lowercase, with and without port) -> virtual host; built at decode time
    by_domain: dict[str, VirtualHost] = field(default_factory=dict, compare=False)
    wildcard: VirtualHost | None = None


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int
    healthy: bool = True
    # kept by the proxy-side guard after an update that would have emptied its cluster,
    # until the control plane confirms the removal (docs/resilience.md)
    stale: bool = False


@dataclass(frozen=True)
class Cluster:
    name: str
    lb_policy: LbPolicy = "least_request"
    connect_timeout: float = 1.0
    discovery: Literal["static", "eds"] = "eds"
    endpoints: tuple[Endpoint, ...] = ()  # for static clusters; EDS fills ProxyConfig.endpoints
    tls: UpstreamTls | None = None  # set: connect with mTLS


@dataclass(frozen=True)
class Listener:
    name: str
    address: str
    port: int
    direction: Direction
    # exactly one of: the name of a RouteConfiguration delivered over RDS, or an inline table
    route_config_name: str | None = None
    route_table: RouteTable | None = None
    service: str | None = None  # inbound: the local service it fronts; outbound|<svc>: the caller
    stat_prefix: str = ""
    # inbound only: plaintext (one raw chain), strict (one TLS chain), permissive (both)
    tls_mode: TlsMode = "plaintext"
    tls: DownstreamTls | None = None
    rbac: tuple[RbacFilter, ...] = ()


@dataclass(frozen=True)
class ProxyConfig:
    """One consistent, applied config. Replaced whole on every accepted update."""

    listeners: dict[str, Listener] = field(default_factory=dict)
    route_tables: dict[str, RouteTable] = field(default_factory=dict)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    endpoints: dict[str, tuple[Endpoint, ...]] = field(default_factory=dict)  # by cluster
    versions: dict[str, str] = field(default_factory=dict)  # type url -> version_info
    secrets: dict[str, Secret] = field(default_factory=dict)  # SDS, by name


# --- mutual TLS and authorization (issue 4); the xDS shape is in docs/mtls.md -------------

TlsMode = Literal["plaintext", "permissive", "strict"]


@dataclass(frozen=True)
class DownstreamTls:
    """How an inbound listener terminates mTLS (from its TLS filter chain)."""

    certificate_secret: str  # SDS name of the local service's identity: spiffe://td/svc/<svc>
    validation_secret: str  # SDS name of the trust bundle: "trust-bundle"
    require_client_certificate: bool = True
    peer_san_prefix: str | None = None  # e.g. "spiffe://plait.local/" (the trust domain)


@dataclass(frozen=True)
class UpstreamTls:
    """How an outbound cluster originates mTLS.

    ``certificate_secret`` is ``"default"``: the identity of the local service whose
    outbound listener the request came in on (each local service has its own).
    """

    certificate_secret: str
    validation_secret: str
    server_sans: tuple[str, ...]  # the destination's SPIFFE id(s) the server must present


@dataclass(frozen=True)
class RbacFilter:
    """One RBAC HTTP filter on an inbound listener, in filter order.

    ``action`` ALLOW: requests whose peer principal is in ``principals`` pass, others are
    denied; DENY: requests whose principal is in ``principals`` are denied. ``shadow``:
    audit mode, log what would be denied but let it through. ``authenticated_any``: the
    principal set is "any authenticated peer".
    """

    name: str
    action: Literal["ALLOW", "DENY"]
    principals: frozenset[str] = frozenset()
    authenticated_any: bool = False
    shadow: bool = False


@dataclass(frozen=True)
class Secret:
    """An SDS secret. plait sends only trust bundles; identities are made on the host."""

    name: str
    trusted_ca: bytes  # PEM, one or more root certificates
