"""The parts of a local mesh: an :class:`App` (a demo app instance) and a :class:`Host`
(one proxy and the apps behind it). :class:`plait.cli.topology.Mesh` starts them."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plait.cli.supervisor import Process


@dataclass(frozen=True)
class App:
    """A demo app instance: service name, version label, and the services it calls."""

    name: str
    version: str = "v1"
    next: tuple[str, ...] = ()
    labels: Mapping[str, str] | None = None  # default {"version": version}

    def instance_labels(self) -> dict[str, str]:
        return dict(self.labels) if self.labels is not None else {"version": self.version}


@dataclass
class Host:
    """One proxy and the apps behind it. Ports are known once the host has started."""

    name: str
    apps: tuple[App, ...]
    bootstrap: Path
    ready_file: Path
    app_ports: dict[str, int]
    proxy: Process
    app_sockets: dict[str, socket.socket] = field(default_factory=dict)
    app_procs: dict[str, Process] = field(default_factory=dict)
    ready: dict[str, Any] | None = None

    def _info(self) -> dict[str, Any]:
        if self.ready is None:
            raise RuntimeError(f"host {self.name} has not started: call Mesh.wait_started()")
        return self.ready

    @property
    def admin_url(self) -> str:
        return str(self._info()["admin"]).rstrip("/")

    @property
    def outbound(self) -> tuple[str, int]:
        host, _, port = str(self._info()["outbound"]).rpartition(":")
        return host, int(port)

    @property
    def outbound_port(self) -> int:
        return self.outbound[1]

    @property
    def proxy_url(self) -> str:
        host, port = self.outbound
        return f"http://{host}:{port}"

    def inbound(self, service: str) -> tuple[str, int]:
        host, _, port = str(self._info()["inbound"][service]).rpartition(":")
        return host, int(port)

    def inbound_port(self, service: str) -> int:
        return self.inbound(service)[1]

    def processes(self) -> list[Process]:
        return [self.proxy, *self.app_procs.values()]
