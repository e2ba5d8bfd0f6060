"""The inputs of translation besides config: registry instances and the asking node."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Instance:
    """One registered instance of a service, as the control plane's registry holds it.

    ``address``/``port`` is where other proxies reach it: the inbound listener of the
    proxy that fronts it (not the app's own port).
    """

    service: str
    node_id: str
    address: str
    port: int
    labels: dict[str, str] = field(default_factory=dict)
    healthy: bool = True

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.service, self.node_id, self.address, self.port)


@dataclass(frozen=True)
class InboundPort:
    """A local service a plait proxy fronts: its inbound listener and the app behind it.

    ``outbound_port`` > 0: the proxy also has an outbound listener ``outbound|<svc>`` at
    ``outbound_address:outbound_port`` for requests the app makes (docs/mtls.md).
    """

    service: str
    address: str
    port: int
    app_port: int
    app_address: str = "127.0.0.1"
    outbound_port: int = 0
    outbound_address: str = "127.0.0.1"


@dataclass(frozen=True)
class NodeInfo:
    """What the control plane knows of an xDS client, from its ``Node`` message.

    A plait proxy sets ``metadata.plait_proxy = true`` and describes its listeners (see
    docs/xds.md, "Node metadata"); any other client (a proxyless gRPC client, Envoy) is
    treated as a plain xDS client and gets API listeners named after each service.
    ``client_features`` are the ``Node.client_features`` strings it announced (e.g.
    :data:`~plait.xds.types.SOTW_PARTIAL`); they change how it is served, not what.
    """

    node_id: str
    plait_proxy: bool = False
    outbound_address: str = "127.0.0.1"
    outbound_port: int = 0
    inbound: tuple[InboundPort, ...] = ()
    client_features: frozenset[str] = frozenset()
