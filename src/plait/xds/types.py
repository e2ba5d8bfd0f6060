"""xDS v3 resource type URLs and the order in which a snapshot's types are pushed.

Secrets (the trust bundle) go first, then clusters and endpoints, then the listeners and
routes that name them (make-before-break, see docs/xds.md and docs/mtls.md):
``PUSH_ORDER`` is that order.
"""

from __future__ import annotations

from typing import Final

LISTENER: Final = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE: Final = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER: Final = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT: Final = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET: Final = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

PUSH_ORDER: Final = (SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE)
ALL_TYPES: Final = frozenset(PUSH_ORDER)

SOTW_PARTIAL: Final = "plait.xds.sotw_partial"
"""``Node.client_features`` entry of a client that takes changed-only state-of-the-world
responses for ``PARTIAL_TYPES``: it keeps the resources it subscribes to that a response
does not carry (docs/xds.md, "Changed-only pushes")."""
PARTIAL_TYPES: Final = frozenset({ENDPOINT, ROUTE})
"""Types whose responses may carry only the changed resources, for clients with
``SOTW_PARTIAL``. Listener and Cluster responses are always complete (the xDS protocol
says so); Secrets are wildcard for plait proxies, so they are always complete too."""

SHORT_NAMES: Final = {
    LISTENER: "LDS",
    ROUTE: "RDS",
    CLUSTER: "CDS",
    ENDPOINT: "EDS",
    SECRET: "SDS",
}
"""Type URL -> the discovery service's short name, for logs and metrics."""


def short_name(type_url: str) -> str:
    """``"CDS"`` for the cluster type URL; the URL itself for a type we do not serve."""
    return SHORT_NAMES.get(type_url, type_url)
