"""One node's whole set of xDS resources, versioned by content and checked for consistency.

Modelled on go-control-plane's ``pkg/cache/v3/snapshot.go``:

- A snapshot maps type URL -> resource name -> message (plain messages, not ``Any``).
- The version of a type is a content hash: the same resources give the same version on
  every replica and after every restart, and a type whose resources did not change keeps
  its version, so it is not re-sent.
- A snapshot is *consistent* when every name one resource uses is served by another:
  routes name clusters that exist, EDS clusters have endpoints, listeners name route
  configurations that exist, TLS contexts name SDS secrets that exist (except the local
  identities ``default`` and ``spiffe://...``, made on the proxy's host, never sent), and
  nothing is left over (a Secret nobody names is fine: the trust bundle goes to every
  proxy). Translation only ever produces
  consistent snapshots; the server can refuse to serve one that is not.

Messages are shared between snapshots (translation reuses what does not depend on the
node): treat them as read-only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2

from plait.xds.builders import http_connection_manager_of, transport_socket_secrets
from plait.xds.names import DEFAULT_IDENTITY
from plait.xds.types import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SECRET, short_name

Message = Any  # google.protobuf.message.Message; the protobuf package ships no stubs

VERSION_LENGTH = 16
_NO_RESOURCES: Mapping[str, Message] = {}
_SUBSET_MEMO_SIZE = 256  # distinct name sets remembered per type (a bound, not a tuning)


def resource_digest(message: Message) -> bytes:
    """SHA-256 of the deterministic serialization of one message."""
    return hashlib.sha256(message.SerializeToString(deterministic=True)).digest()


def content_version(digests: Iterable[tuple[str, bytes]]) -> str:
    """Version of a set of (name, digest) pairs: the same set gives the same version."""
    blob = b"".join(name.encode() + b"\0" + digest for name, digest in sorted(digests))
    return hashlib.sha256(blob).hexdigest()[:VERSION_LENGTH]


@dataclass(frozen=True)
class Snapshot:
    """Resources for one node: ``resources[type_url][name] -> message``.

    ``digests`` optionally holds precomputed :func:`resource_digest` values for some of
    the messages (a pure speed-up when many snapshots share resources); a digest must be
    that of the message under the same type and name.
    """

    resources: Mapping[str, Mapping[str, Message]]
    digests: Mapping[str, Mapping[str, bytes]] = field(
        default_factory=dict, repr=False, compare=False
    )
    _versions: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)
    _subsets: dict[str, dict[frozenset[str], tuple[str, dict[str, Message]]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def items(self, type_url: str) -> Mapping[str, Message]:
        """Every resource of a type by name (empty for a type this snapshot does not hold)."""
        return self.resources.get(type_url, _NO_RESOURCES)

    def names(self, type_url: str) -> list[str]:
        return sorted(self.items(type_url))

    def version(self, type_url: str) -> str:
        """Content hash (16 hex digits) of the type's names and serialized resources."""
        cached = self._versions.get(type_url)
        if cached is None:
            known = self.digests.get(type_url, _NO_DIGESTS)
            cached = content_version(
                (name, known.get(name) or resource_digest(message))
                for name, message in self.items(type_url).items()
            )
            self._versions[type_url] = cached
        return cached

    def versions(self) -> dict[str, str]:
        """Version of every served type, in push order."""
        return {type_url: self.version(type_url) for type_url in PUSH_ORDER}

    def subset(self, type_url: str, names: Iterable[str] | None) -> dict[str, Message]:
        """The resources a request asks for: all of them for None or no names (wildcard),
        else the named ones that exist (a name we do not have is simply absent)."""
        items = self.items(type_url)
        wanted = list(names or ())
        if not wanted:
            return dict(items)
        return {name: items[name] for name in wanted if name in items}

    def subset_version(self, type_url: str, names: Iterable[str]) -> tuple[str, dict[str, Message]]:
        """(version, resources) of a by-name subscription: the named resources that exist
        (by name, sorted) and their :func:`content_version`, from the digest hints.

        Memoized per type and set of names; the memo of a type is shared with every
        snapshot :meth:`replace` makes that keeps the type, so the streams of all nodes
        that share the resources and subscribe to the same names compute it once. The
        returned dict is shared: treat it as read-only."""
        memo = self._subsets.setdefault(type_url, {})
        key = frozenset(names)
        hit = memo.get(key)
        if hit is None:
            if len(memo) >= _SUBSET_MEMO_SIZE:
                memo.clear()
            items = self.items(type_url)
            resources = {name: items[name] for name in sorted(key) if name in items}
            known = self.digests.get(type_url, _NO_DIGESTS)
            version = content_version(
                (name, known.get(name) or resource_digest(message))
                for name, message in resources.items()
            )
            hit = memo[key] = (version, resources)
        return hit

    def replace(
        self,
        resources: Mapping[str, Mapping[str, Message]],
        digests: Mapping[str, Mapping[str, bytes]] | None = None,
    ) -> Snapshot:
        """This snapshot with the types in ``resources`` replaced.

        Kept types are the same objects, so their versions and digest hints carry over
        instead of being hashed again; replaced types keep only the hints in ``digests``.
        """
        kept = {t: d for t, d in self.digests.items() if t not in resources}
        snapshot = Snapshot(
            resources={**self.resources, **resources}, digests={**kept, **(digests or {})}
        )
        for type_url, version in self._versions.items():
            if type_url not in resources:
                snapshot._versions[type_url] = version
        for type_url in self.resources:
            if type_url not in resources:  # kept: share the memo of named subsets
                snapshot._subsets[type_url] = self._subsets.setdefault(type_url, {})
        return snapshot

    def consistency_errors(self) -> list[str]:
        """Why this snapshot is not consistent; empty when it is. See the module docstring."""
        return _consistency_errors(self)


_NO_DIGESTS: Mapping[str, bytes] = {}


def _route_clusters(route_config: Message) -> Iterable[tuple[str, str]]:
    """(route path for messages, cluster name) for every cluster a RouteConfiguration names."""
    for vhost in route_config.virtual_hosts:
        for index, route in enumerate(vhost.routes):
            where = f"virtual_hosts['{vhost.name}'].routes[{index}]"
            if not route.HasField("route"):
                continue
            action = route.route
            if action.HasField("cluster"):
                yield where, action.cluster
            for weighted in action.weighted_clusters.clusters:
                yield where, weighted.name


def _consistency_errors(snapshot: Snapshot) -> list[str]:
    errors: list[str] = []
    clusters = snapshot.items(CLUSTER)
    route_configs = snapshot.items(ROUTE)
    assignments = snapshot.items(ENDPOINT)

    named_clusters: list[tuple[str, str]] = []  # (who names it, cluster)
    used_route_configs: set[str] = set()
    for name in sorted(snapshot.items(LISTENER)):
        manager = http_connection_manager_of(snapshot.items(LISTENER)[name])
        if manager is None:
            errors.append(f"Listener '{name}': no HTTP connection manager")
        elif manager.HasField("rds"):
            rds = manager.rds.route_config_name
            used_route_configs.add(rds)
            if rds not in route_configs:
                errors.append(f"Listener '{name}': RouteConfiguration '{rds}' is not in RDS")
        elif manager.HasField("route_config"):
            named_clusters.extend(
                (f"Listener '{name}' route_config {where}", cluster)
                for where, cluster in _route_clusters(manager.route_config)
            )
    for name in sorted(route_configs):
        if name not in used_route_configs:
            errors.append(f"RouteConfiguration '{name}': no listener uses it")
        named_clusters.extend(
            (f"RouteConfiguration '{name}' {where}", cluster)
            for where, cluster in _route_clusters(route_configs[name])
        )
    errors.extend(
        f"{who}: cluster '{cluster}' is not in CDS"
        for who, cluster in named_clusters
        if cluster not in clusters
    )

    eds_names: set[str] = set()
    for name in sorted(clusters):
        cluster = clusters[name]
        if cluster.type != cluster_pb2.Cluster.EDS:
            continue
        service_name = cluster.eds_cluster_config.service_name or name
        eds_names.add(service_name)
        if service_name not in assignments:
            errors.append(f"Cluster '{name}': ClusterLoadAssignment '{service_name}' is not in EDS")
    errors.extend(
        f"ClusterLoadAssignment '{name}': no EDS cluster uses it"
        for name in sorted(assignments)
        if name not in eds_names
    )
    errors.extend(_secret_errors(snapshot))
    return errors


def _is_local_secret(name: str) -> bool:
    """Identities are made on the proxy's host: ``default`` and ``spiffe://...``."""
    return name == DEFAULT_IDENTITY or name.startswith("spiffe://")


def _secret_errors(snapshot: Snapshot) -> list[str]:
    secrets = snapshot.items(SECRET)
    named: list[tuple[str, str]] = []  # (who names it, secret)
    clusters = snapshot.items(CLUSTER)
    for name in sorted(clusters):
        if clusters[name].HasField("transport_socket"):
            socket = clusters[name].transport_socket
            named.extend((f"Cluster '{name}'", s) for s in transport_socket_secrets(socket))
    listeners = snapshot.items(LISTENER)
    for name in sorted(listeners):
        for index, chain in enumerate(listeners[name].filter_chains):
            if chain.HasField("transport_socket"):
                who = f"Listener '{name}' filter_chains[{index}]"
                named.extend((who, s) for s in transport_socket_secrets(chain.transport_socket))
    return [
        f"{who}: secret '{secret}' is not in SDS"
        for who, secret in named
        if not _is_local_secret(secret) and secret not in secrets
    ]


def describe(snapshot: Snapshot) -> str:
    """One line per type: ``CDS 3 a1b2c3d4e5f60718``, for logs and the CLI."""
    return ", ".join(
        f"{short_name(t)} {len(snapshot.items(t))} {snapshot.version(t)}" for t in PUSH_ORDER
    )
