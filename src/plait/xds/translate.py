"""Translation: config + registry instances + the asking node -> that node's Snapshot.

Theory of operation. Almost everything a node receives does not depend on the node:

- EDS clusters ``outbound|<svc>`` for every service and ``outbound|<svc>|<subset>`` for
  every subset a Route names, with their ClusterLoadAssignments (healthy instances only);
- the ``outbound`` RouteConfiguration (plait proxies) or the ``grpc|<svc>``
  RouteConfigurations and API listeners (every other xDS client).

:class:`Translator` builds those shared parts once per (config, instances) and caches
them; :meth:`Translator.for_node` only adds what is the node's own: a plait proxy's
``outbound`` listener, its ``inbound|<svc>`` listeners and STATIC clusters and its
``outbound|<svc>`` listeners. A
non-plait node's snapshot does not depend on the node at all and is built once.

Two kinds of node get different cluster sets:

- a plait proxy: clusters for every service it may call (a tcp service gets its cluster
  and endpoints, no routes yet), ``lb_policy`` from the Service. *Scoping*: when every
  local service of the proxy (``node.inbound``) declares ``spec.calls``, "every service
  it may call" is the union of those lists, and the ``outbound`` RouteConfiguration has
  virtual hosts for just those services; if any local service has no ``calls`` (or is
  unknown to the config), or the proxy fronts no service, it is every service. The
  shared parts are built once per scope (:meth:`Translator.dependencies`), so every
  proxy with the same scope gets the same messages and the same shared snapshot;
- any other xDS client: clusters for http and grpc services only, ``ROUND_ROBIN``
  (gRPC's default policy).

Mutual TLS and authorization (docs/mtls.md), for plait proxies only:

- the Secret ``trust-bundle`` (the CA's roots) — only when the control plane has a
  non-empty bundle; with none, TLS contexts are still built (a ``strict`` service is never
  quietly downgraded to plaintext) and the proxy, lacking the bundle, fails those
  connections; :meth:`Snapshot.consistency_errors` then names the missing secret;
- an ``UpstreamTlsContext`` on every cluster of a ``strict`` or ``permissive`` service;
- ``inbound|<svc>`` filter chains per the local service's mode, and RBAC filters from its
  Policy (deny filter, then allow filter; ``audit`` puts them in ``shadow_rules``);
- ``outbound|<svc>`` listeners for inbound entries that report an ``outbound_port``.

Proxyless gRPC clients cannot use plait's SDS-based TLS (gRPC only takes certificate
providers from its own bootstrap, and a TLS context it refuses would NACK the whole CDS
response): they get plaintext clusters for ``plaintext`` and ``permissive`` services and
nothing at all for ``strict`` ones (no listener, route or cluster: the client fails
with "resource does not exist" rather than a handshake error).

Route rules apply to http and grpc services; each rule becomes one route, in order,
followed by a catch-all (prefix ``/``) to ``outbound|<svc>`` with the default timeout.
Names follow docs/xds.md via :mod:`plait.xds.names`. The result is always consistent
(:meth:`Snapshot.consistency_errors` is empty).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from plait.model.config import ConfigSet
from plait.model.resources import NAME_RE, Policy, RouteRule, RouteSpec, Service, subset_key
from plait.xds import builders as b
from plait.xds.inputs import InboundPort, Instance, NodeInfo
from plait.xds.names import (
    DEFAULT_IDENTITY,
    DEFAULT_TRUST_DOMAIN,
    OUTBOUND,
    TRUST_BUNDLE,
    api_listener_names,
    grpc_route_config,
    inbound_name,
    outbound_cluster,
    outbound_listener,
    service_domains,
    spiffe_id,
)
from plait.xds.snapshot import Message, Snapshot, resource_digest
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

DEFAULT_TIMEOUT = 15.0
"""Timeout of the catch-all route: the same as a RouteRule's default."""
INBOUND_CONNECT_TIMEOUT = 1.0
INBOUND_ROUTE_TIMEOUT = 0.0
"""0 switches the route timeout off (Envoy and plait proxies alike)."""
ROUTED_PROTOCOLS = frozenset({"http", "grpc"})

RETRY_ON: Mapping[str, str] = {
    "connect-failure": "connect-failure",
    "reset": "reset",
    "5xx": "5xx",
    "gateway-error": "gateway-error",
    "retriable-4xx": "retriable-4xx",
}
"""plait's ``retries.on`` names -> Envoy ``retry_on`` names."""

Resources = dict[str, Message]


def translate(
    config: ConfigSet,
    instances: Sequence[Instance],
    node: NodeInfo,
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    trust_bundle: bytes = b"",
) -> Snapshot:
    """The snapshot for one node. To serve many nodes, reuse one :class:`Translator`."""
    return Translator(
        config, instances, trust_domain=trust_domain, trust_bundle=trust_bundle
    ).for_node(node)


class Translator:
    """Builds per-node snapshots for one (config, instances) pair, sharing common parts.

    ``trust_domain`` names identities (``spiffe://<td>/svc/<svc>``); ``trust_bundle`` is
    the PEM of every active root, sent to plait proxies as the Secret ``trust-bundle``
    (nothing is sent while it is empty; see the module docstring).
    """

    def __init__(
        self,
        config: ConfigSet,
        instances: Sequence[Instance],
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        trust_bundle: bytes = b"",
    ) -> None:
        self._services = [config.services[name] for name in sorted(config.services)]
        self._by_name = {s.name: s for s in self._services}
        self._rules = _rules_by_service(config)
        self._policies = _policies_by_service(config)
        self._endpoints = _healthy_endpoints(instances, set(config.services))
        self._trust_domain = trust_domain
        self._trust_bundle = bytes(trust_bundle)
        self._inbound: dict[InboundPort, Any] = {}  # the same port on many nodes: one build
        self._scoped: dict[frozenset[str] | None, Snapshot] = {}  # scope -> shared parts
        self._eds_parts: dict[str, _EdsPart] = {}  # service -> its plait-proxy EDS parts
        self._assignments_memo: dict[str, Resources] = {}  # service -> its assignments

    def for_node(self, node: NodeInfo) -> Snapshot:
        if not node.plait_proxy:
            return self._client_snapshot
        shared = self._proxy_shared(self.dependencies(node))
        listeners: Resources = {
            OUTBOUND: _outbound_listener(OUTBOUND, node.outbound_address, node.outbound_port)
        }
        clusters: Resources = dict(shared.resources[CLUSTER])
        seen: set[str] = set()
        for port in node.inbound:
            if port.service in seen:  # the same service listed twice: the first one wins
                continue
            seen.add(port.service)
            name = inbound_name(port.service)
            listener = self._inbound.get(port)
            if listener is None:
                listener = self._inbound[port] = self._inbound_listener(port)
            listeners[name] = listener
            clusters[name] = b.make_static_cluster(
                name,
                [(port.app_address, port.app_port)],
                connect_timeout=INBOUND_CONNECT_TIMEOUT,
            )
            if port.outbound_port > 0:
                out_name = outbound_listener(port.service)
                listeners[out_name] = _outbound_listener(
                    out_name, port.outbound_address, port.outbound_port
                )
        return shared.replace(
            {CLUSTER: clusters, LISTENER: listeners}, digests={CLUSTER: shared.digests[CLUSTER]}
        )

    # --- mTLS and RBAC ------------------------------------------------------------------

    def _inbound_listener(self, port: InboundPort) -> Any:
        """``inbound|<svc>``: everything arriving at ``address:port`` goes to the local app.

        The route's timeout is 0 (off): the caller's outbound route owns the deadline, and
        an unset timeout would mean Envoy's 15 s, cutting longer outbound timeouts short.
        Filter chains follow the service's ``mtls`` mode, RBAC filters its Policy; a
        service unknown to the config is plaintext without RBAC.
        """
        name = inbound_name(port.service)
        route = b.make_route(b.make_route_match(), cluster=name, timeout=INBOUND_ROUTE_TIMEOUT)
        routes = b.make_route_configuration(name, [b.make_virtual_host(name, ["*"], [route])])
        service = self._by_name.get(port.service)
        mode: b.TlsMode = service.spec.mtls if service is not None else "plaintext"
        tls = None
        if mode != "plaintext":
            tls = b.make_downstream_tls(
                spiffe_id(self._trust_domain, port.service),
                TRUST_BUNDLE,
                f"spiffe://{self._trust_domain}/",
            )
        return b.make_http_listener(
            name,
            port.address,
            port.port,
            direction="inbound",
            route_config=routes,
            http_filters=self._rbac_filters(port.service),
            tls_mode=mode,
            downstream_tls=tls,
        )

    def _rbac_filters(self, service: str) -> list[Any]:
        """Deny filter (if the Policy denies anyone), then allow filter; none without one."""
        policy = self._policies.get(service)
        if policy is None:
            return []
        shadow = policy.spec.mode == "audit"
        filters = []
        if policy.spec.deny:
            deny = self._principals(policy.spec.deny)
            filters.append(b.make_rbac_filter("deny", "DENY", deny, shadow=shadow))
        allow = self._principals(policy.spec.allow)
        filters.append(b.make_rbac_filter("allow", "ALLOW", allow, shadow=shadow))
        return filters

    def _principals(self, entries: Iterable[str]) -> list[str]:
        """Service names become ``spiffe://<td>/svc/<name>``; SPIFFE ids stay; once each."""
        ids = (spiffe_id(self._trust_domain, e) if NAME_RE.match(e) else e for e in entries)
        return list(dict.fromkeys(ids))

    def _upstream_tls(self, service: Service) -> Any | None:
        if service.spec.mtls == "plaintext":
            return None
        return b.make_upstream_tls(
            DEFAULT_IDENTITY, TRUST_BUNDLE, spiffe_id(self._trust_domain, service.name)
        )

    # --- shared parts, built on first use ----------------------------------------------

    def dependencies(self, node: NodeInfo) -> frozenset[str] | None:
        """The services whose clusters, endpoints and routes a plait proxy gets: the union
        of its local services' ``calls``; None (every service) if it fronts no service or
        any local service calls everything (no ``calls``, or unknown to the config).
        Names of services the config does not have are left out."""
        local = {port.service for port in node.inbound}
        if not local:
            return None
        called: set[str] = set()
        for name in local:
            service = self._by_name.get(name)
            if service is None or service.spec.calls is None:
                return None
            called.update(service.spec.calls)
        return frozenset(called & self._by_name.keys())

    def _proxy_shared(self, scope: frozenset[str] | None) -> Snapshot:
        """Secrets, clusters, endpoints and the ``outbound`` routes of the services in
        ``scope`` (None: every service), shared by every plait proxy with that scope."""
        shared = self._scoped.get(scope)
        if shared is None:
            shared = self._scoped[scope] = self._build_shared(scope)
        return shared

    def _build_shared(self, scope: frozenset[str] | None) -> Snapshot:
        services = [s for s in self._services if scope is None or s.name in scope]
        clusters: Resources = {}
        endpoints: Resources = {}
        cluster_digests: dict[str, bytes] = {}
        endpoint_digests: dict[str, bytes] = {}
        for service in services:
            part = self._proxy_eds(service)
            clusters.update(part.clusters)
            endpoints.update(part.endpoints)
            cluster_digests.update(part.cluster_digests)
            endpoint_digests.update(part.endpoint_digests)
        outbound = b.make_route_configuration(
            OUTBOUND,
            [
                b.make_virtual_host(
                    s.name, service_domains(s.name, _ports(s)), self._service_routes[s.name]
                )
                for s in services
                if s.spec.protocol in ROUTED_PROTOCOLS
            ],
        )
        resources = {
            SECRET: self._secrets,
            CLUSTER: clusters,
            ENDPOINT: endpoints,
            ROUTE: {OUTBOUND: outbound},
        }
        digests = {
            SECRET: self._secret_digests,
            CLUSTER: cluster_digests,
            ENDPOINT: endpoint_digests,
            ROUTE: {OUTBOUND: resource_digest(outbound)},
        }
        shared = Snapshot(resources={**resources, LISTENER: {}}, digests=digests)
        shared.version(SECRET)  # computed once here, reused by every node's snapshot
        shared.version(ENDPOINT)
        shared.version(ROUTE)
        return shared

    @cached_property
    def _secrets(self) -> Resources:
        if not self._trust_bundle:
            return {}
        return {TRUST_BUNDLE: b.make_trust_bundle_secret(TRUST_BUNDLE, self._trust_bundle)}

    @cached_property
    def _secret_digests(self) -> dict[str, bytes]:
        return {name: resource_digest(m) for name, m in self._secrets.items()}

    def _proxy_eds(self, service: Service) -> _EdsPart:
        """One service's EDS clusters and assignments for plait proxies, with their
        digests: built once per translator, shared by every scope that has the service."""
        part = self._eds_parts.get(service.name)
        if part is None:
            clusters, endpoints = self._eds_clusters([service], lb_from_service=True, tls=True)
            part = self._eds_parts[service.name] = _EdsPart(
                clusters,
                endpoints,
                {name: resource_digest(m) for name, m in clusters.items()},
                {name: resource_digest(m) for name, m in endpoints.items()},
            )
        return part

    @cached_property
    def _client_snapshot(self) -> Snapshot:
        """Everything a proxyless gRPC client (or Envoy) gets; the same for every such node.

        Plaintext only: ``strict`` services are left out (see the module docstring)."""
        routed = [
            s
            for s in self._services
            if s.spec.protocol in ROUTED_PROTOCOLS and s.spec.mtls != "strict"
        ]
        clusters, endpoints = self._eds_clusters(routed, lb_from_service=False, tls=False)
        listeners: Resources = {}
        route_configs: Resources = {}
        for service in routed:
            rds = grpc_route_config(service.name)
            for name in api_listener_names(service.name, _ports(service)):
                listeners[name] = b.make_api_listener(name, rds)
            route_configs[rds] = b.make_route_configuration(
                rds, [b.make_virtual_host(service.name, ["*"], self._service_routes[service.name])]
            )
        return Snapshot(
            resources={
                CLUSTER: clusters,
                ENDPOINT: endpoints,
                LISTENER: listeners,
                ROUTE: route_configs,
            }
        )

    def _eds_clusters(
        self, services: Iterable[Service], *, lb_from_service: bool, tls: bool
    ) -> tuple[Resources, Resources]:
        """EDS clusters of ``services`` and their (shared) ClusterLoadAssignments;
        ``tls``: with an UpstreamTlsContext for strict and permissive services."""
        clusters: Resources = {}
        endpoints: Resources = {}
        for service in services:
            spec = service.spec
            lb_policy: b.LbPolicy = spec.load_balancer if lb_from_service else "round_robin"
            socket = self._upstream_tls(service) if tls else None
            assignments = self._assignments(service.name)
            for name in self._subset_clusters[service.name]:
                clusters[name] = b.make_eds_cluster(
                    name,
                    connect_timeout=spec.connect_timeout,
                    lb_policy=lb_policy,
                    transport_socket=socket,
                )
                endpoints[name] = assignments[name]
        return clusters, endpoints

    @cached_property
    def _subset_clusters(self) -> dict[str, dict[str, Mapping[str, str]]]:
        """Per service, EDS cluster name -> label subset: the whole service first, then
        every subset its Route names (weight 0 too, so a canary's cluster is warm)."""
        by_service: dict[str, dict[str, Mapping[str, str]]] = {}
        for service in self._services:
            subsets: dict[str, Mapping[str, str]] = {outbound_cluster(service.name): {}}
            if service.spec.protocol in ROUTED_PROTOCOLS:
                for rule in self._rules.get(service.name, ()):
                    for backend in rule.backends:
                        name = outbound_cluster(service.name, subset_key(backend.subset))
                        subsets.setdefault(name, backend.subset)
            by_service[service.name] = subsets
        return by_service

    def _assignments(self, service: str) -> Resources:
        """A ClusterLoadAssignment per EDS cluster of ``service``; the same for every kind
        of node, built on first use (a scoped proxy needs only some services')."""
        found = self._assignments_memo.get(service)
        if found is None:
            endpoints = self._endpoints.get(service, [])
            found = self._assignments_memo[service] = {
                name: b.make_load_assignment(name, _members(endpoints, subset))
                for name, subset in self._subset_clusters[service].items()
            }
        return found

    @cached_property
    def _service_routes(self) -> dict[str, list[Any]]:
        """Per http/grpc service: a route per rule, in order, then the catch-all."""
        return {
            s.name: [
                *(_rule_route(s.name, rule) for rule in self._rules.get(s.name, ())),
                b.make_route(
                    b.make_route_match(prefix="/"),
                    cluster=outbound_cluster(s.name),
                    timeout=DEFAULT_TIMEOUT,
                ),
            ]
            for s in self._services
            if s.spec.protocol in ROUTED_PROTOCOLS
        }


# --- pure helpers -----------------------------------------------------------------------


@dataclass(frozen=True)
class _EdsPart:
    """One service's EDS clusters and ClusterLoadAssignments, with their digests."""

    clusters: Resources
    endpoints: Resources
    cluster_digests: dict[str, bytes]
    endpoint_digests: dict[str, bytes]


def _ports(service: Service) -> tuple[int, ...]:
    return tuple(p.port for p in service.spec.ports)


def _rules_by_service(config: ConfigSet) -> dict[str, tuple[RouteRule, ...]]:
    """Rules per destination service (first Route by name wins; unknown services dropped)."""
    rules: dict[str, tuple[RouteRule, ...]] = {}
    for name in sorted(config.routes):
        spec: RouteSpec = config.routes[name].spec
        if spec.service in config.services and spec.service not in rules:
            rules[spec.service] = spec.rules
    return rules


def _policies_by_service(config: ConfigSet) -> dict[str, Policy]:
    """The Policy of each service (first by name wins; unknown services dropped)."""
    policies: dict[str, Policy] = {}
    for name in sorted(config.policies):
        policy = config.policies[name]
        if policy.spec.service in config.services:
            policies.setdefault(policy.spec.service, policy)
    return policies


Endpoint = tuple[str, int, Mapping[str, str]]


def _healthy_endpoints(
    instances: Iterable[Instance], services: set[str]
) -> dict[str, list[Endpoint]]:
    """Healthy instances of known services, grouped by service and sorted by address.

    Sorting makes the result independent of the order of ``instances``.
    """
    grouped: dict[str, list[Endpoint]] = {}
    for inst in instances:
        if inst.healthy and inst.service in services:
            grouped.setdefault(inst.service, []).append((inst.address, inst.port, inst.labels))
    for endpoints in grouped.values():
        endpoints.sort(key=lambda e: (e[0], e[1]))
    return grouped


def _members(endpoints: Iterable[Endpoint], subset: Mapping[str, str]) -> list[tuple[str, int]]:
    """Addresses of the endpoints whose labels include ``subset``, each address once.

    Two registered instances at one address (a registry glitch) count once: gRPC refuses
    an assignment that lists an address twice. The address is a member if any of them is.
    """
    items = subset.items()
    members = ((address, port) for address, port, labels in endpoints if items <= labels.items())
    return list(dict.fromkeys(members))


def _outbound_listener(name: str, address: str, port: int) -> Any:
    """``outbound`` or ``outbound|<svc>``: plaintext from the app, routes from RDS
    ``outbound``."""
    return b.make_http_listener(name, address, port, direction="outbound", rds_name=OUTBOUND)


def _rule_route(service: str, rule: RouteRule) -> Any:
    match = rule.match
    headers = [
        b.make_header_matcher(
            h.name, exact=h.exact, prefix=h.prefix, present=h.present, invert=h.invert
        )
        for h in match.headers
    ]
    route_match = b.make_route_match(prefix=match.path_prefix, path=match.path, headers=headers)
    retry_policy = None
    if rule.retries is not None and rule.retries.attempts > 0 and rule.retries.on:
        # No attempts or no conditions means no retries: say so by having no policy
        # (gRPC refuses num_retries 0).
        retry_on = list(dict.fromkeys(RETRY_ON[name] for name in rule.retries.on))
        retry_policy = b.make_retry_policy(
            retry_on, rule.retries.attempts, rule.retries.per_try_timeout
        )
    weights: dict[str, int] = {}  # cluster -> weight; equal subsets add up, zeros dropped
    for backend in rule.backends:
        if backend.weight > 0:
            name = outbound_cluster(service, subset_key(backend.subset))
            weights[name] = weights.get(name, 0) + backend.weight
    if list(weights) == [outbound_cluster(service)]:
        return b.make_route(
            route_match,
            cluster=outbound_cluster(service),
            timeout=rule.timeout,
            retry_policy=retry_policy,
        )
    return b.make_route(
        route_match,
        weighted_clusters=list(weights.items()),
        timeout=rule.timeout,
        retry_policy=retry_policy,
    )
