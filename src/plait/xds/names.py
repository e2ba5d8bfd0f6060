"""Resource names, exactly as docs/xds.md ("Resource names") spells them.

Every module that builds or looks up a resource by name goes through these helpers, so a
name never drifts between the control plane, the proxy and the tests.
"""

from __future__ import annotations

from typing import Final

OUTBOUND: Final = "outbound"
"""Name of a plait proxy's outbound Listener and of the RouteConfiguration it uses."""


def outbound_cluster(service: str, subset: str = "") -> str:
    """``outbound|<svc>``, or ``outbound|<svc>|<subset>`` for a non-empty subset key."""
    return f"outbound|{service}|{subset}" if subset else f"outbound|{service}"


TRUST_BUNDLE: Final = "trust-bundle"
"""SDS name of the Secret holding the trust bundle (every active root, PEM)."""
DEFAULT_IDENTITY: Final = "default"
"""SDS name an outbound cluster's certificate uses: the identity of the local service
whose outbound listener the request came in on (made on the host, never sent)."""
DEFAULT_TRUST_DOMAIN: Final = "plait.local"


def spiffe_id(trust_domain: str, service: str) -> str:
    """``spiffe://<td>/svc/<svc>``: a service's identity, and its certificate's SDS name."""
    return f"spiffe://{trust_domain}/svc/{service}"


def outbound_listener(service: str) -> str:
    """``outbound|<svc>``: the outbound Listener requests from local service ``<svc>`` use."""
    return f"{OUTBOUND}|{service}"


def inbound_name(service: str) -> str:
    """``inbound|<svc>``: the inbound Listener, its inline routes and its STATIC cluster."""
    return f"inbound|{service}"


def grpc_route_config(service: str) -> str:
    """``grpc|<svc>``: the RouteConfiguration the API listeners of ``<svc>`` use."""
    return f"grpc|{service}"


def api_listener_names(service: str, ports: tuple[int, ...]) -> list[str]:
    """``<svc>`` and ``<svc>:<port>`` for each port: the targets a gRPC client may dial."""
    return [service, *(f"{service}:{port}" for port in ports)]


def service_domains(service: str, ports: tuple[int, ...]) -> list[str]:
    """Virtual host domains of ``<svc>`` in the ``outbound`` RouteConfiguration."""
    return api_listener_names(service, ports)
