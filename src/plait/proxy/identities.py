"""The proxy's local identities: one IdentityManager per local service, wired in.

:class:`ProxyIdentities` is composed by :mod:`plait.proxy.main` when a local service
has a join token (bootstrap ``services[].token`` / ``token_file``, or ``--token
svc=TOKEN``) or a CA is given (``--ca``; else it is discovered from the control plane's
HTTP API). Per such local service it runs an
:class:`~plait.identity.manager.IdentityManager` whose data directory is
``<data_dir>/identity/<service>``; each new certificate goes to
:meth:`DataPlane.set_identity <plait.proxy.dataplane.DataPlane.set_identity>` (new TLS
contexts for the next accepts and connects).

It also reports them: :meth:`ProxyIdentities.refresh_metrics` sets
``plait_identity_expiry_seconds{service}`` (seconds left) and
``plait_identity_alarm{service}`` (1 when less than 25% of the lifetime is left, or no
certificate), :meth:`ProxyIdentities.view` is the admin ``/identities`` page and
:meth:`ProxyIdentities.heartbeat` the heartbeat's ``identities`` list, so the control
plane sees which bundle version each proxy runs (root rotation).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plait.identity.manager import Identity, IdentityManager
from plait.proxy.dataplane import DataPlane
from plait.proxy.tls import LocalIdentity

EXPIRY = "plait_identity_expiry_seconds"
ALARM = "plait_identity_alarm"


class ProxyIdentities:
    def __init__(
        self,
        dp: DataPlane,
        ca_url: str | None,
        tokens: Mapping[str, str | None],
        data_dir: str,
        *,
        bundle_file: str | None = None,
        metrics: Any = None,
        bundle_interval: float = 30.0,
        api_url: str | None = None,
    ) -> None:
        self.dp = dp
        self.metrics = metrics
        self.managers: dict[str, IdentityManager] = {}
        for service, token in tokens.items():
            self.managers[service] = IdentityManager(
                ca_url,
                service,
                token,
                Path(data_dir) / "identity" / service,
                self._updated,
                bundle_file=bundle_file,
                bundle_interval=bundle_interval,
                api_url=api_url,
            )
        for manager in self.managers.values():
            manager.load_stored()  # a valid stored certificate serves before the CA answers

    def _updated(self, ident: Identity) -> None:
        self.dp.set_identity(
            LocalIdentity(
                service=ident.service,
                spiffe_id=ident.spiffe_id,
                chain_pem=ident.chain_pem,
                key_pem=ident.key_pem,
                not_before=ident.not_before,
                not_after=ident.not_after,
                serial=ident.serial,
                ca_bundle_pem=ident.bundle_pem,
            )
        )

    def tasks(self) -> list[tuple[str, Any]]:
        return [(f"identity:{name}", m.run()) for name, m in self.managers.items()]

    async def refresh_every(self, interval: float = 1.0) -> None:
        while True:
            self.refresh_metrics()
            await asyncio.sleep(interval)

    def refresh_metrics(self) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        for service, manager in self.managers.items():
            labels = {"service": service}
            expires = manager.expires_at
            left = (expires - manager.now()).total_seconds() if expires is not None else 0.0
            metrics.set_gauge(
                EXPIRY,
                labels,
                round(left, 3),
                help="Seconds until the service's certificate expires (0: none).",
            )
            metrics.set_gauge(
                ALARM,
                labels,
                1 if manager.alarm else 0,
                help="1 when the service's certificate has less than 25% of its lifetime "
                "left (renewals are failing) or there is none.",
            )

    def view(self) -> dict[str, Any]:
        return {
            "identities": [m.status() for m in self.managers.values()],
            "trust_bundle_version": self.dp.tls.bundle_version,
        }

    def heartbeat(self) -> list[dict[str, Any]]:
        version = self.dp.tls.bundle_version
        out = []
        for service, manager in self.managers.items():
            cur = manager.current
            out.append(
                {
                    "service": service,
                    "serial": cur.serial if cur else None,
                    "not_after": cur.not_after.isoformat() if cur else None,
                    "bundle_version": version,
                }
            )
        return out
