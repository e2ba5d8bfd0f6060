"""Registration: the proxy heartbeats its local service instances to the control plane.

:class:`Registrar` POSTs ``/v1/registry/heartbeat`` (docs/internals.md) with the node id,
the lease ttl and every instance this proxy fronts — each at its inbound listener, with
its labels and current health — every ``interval`` seconds, and at once when
:meth:`Registrar.kick` is called (a health check flipped). A heartbeat replaces the
node's instances on the control plane and renews their lease, so a missed one costs
nothing as long as a later one arrives within the ttl. Failures are logged and retried
at the next beat; :meth:`Registrar.run` never raises for them.

With several control plane APIs (replicas), a heartbeat goes to the one that answered
last; when it fails, the next ones are tried in turn within the same beat.
``extra`` adds fields to every heartbeat (the proxy's ``config_source``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from plait.jsonhttp import request_json
from plait.proxy.bootstrap import Bootstrap, BoundPorts

log = logging.getLogger("plait.proxy.registration")

HEARTBEAT_PATH = "/v1/registry/heartbeat"
RequestJson = Callable[..., Awaitable[tuple[int, Any]]]


def instance_records(
    boot: Bootstrap, bound: BoundPorts, healthy: Mapping[str, bool]
) -> list[dict[str, Any]]:
    """The heartbeat's ``instances``: one per local service, at its bound inbound address.

    A service missing from ``healthy`` (no health check configured) counts as healthy.
    """
    records = []
    for svc in boot.services:
        address, port = bound.inbound[svc.name]
        records.append(
            {
                "service": svc.name,
                "address": address,
                "port": port,
                "labels": dict(svc.labels),
                "healthy": healthy.get(svc.name, True),
            }
        )
    return records


class Registrar:
    def __init__(
        self,
        api_url: str | Sequence[str],
        node_id: str,
        instances: Callable[[], list[dict[str, Any]]],
        interval: float,
        ttl: float,
        *,
        timeout: float = 5.0,
        request: RequestJson | None = None,
        identities: Callable[[], list[dict[str, Any]]] | None = None,
        extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.api_urls = [api_url] if isinstance(api_url, str) else list(api_url)
        self.api_url = self.api_urls[0]
        self._extra = extra
        self.node_id = node_id
        self.interval = interval
        self.ttl = ttl
        self._instances = instances
        self._identities = identities  # [{service, serial, not_after, bundle_version}]
        self._timeout = timeout
        self._request: RequestJson = request or request_json
        self._kick = asyncio.Event()
        self.sent = 0  # heartbeats the control plane accepted
        self.failures = 0  # consecutive failed heartbeats
        self.last_error: str | None = None

    def kick(self) -> None:
        """Heartbeat now (e.g. a health check flipped) instead of at the next interval."""
        self._kick.set()

    async def run(self) -> None:
        """Heartbeat forever (until cancelled)."""
        while True:
            self._kick.clear()  # a kick during the send below makes another one right after
            await self.heartbeat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.interval)

    async def heartbeat(self) -> bool:
        """Send one heartbeat; whether the control plane accepted it. Never raises."""
        try:
            body = {"node_id": self.node_id, "ttl": self.ttl, "instances": self._instances()}
            if self._identities is not None:
                ids = self._identities()
                body["identities"] = ids
                # the trust bundle installed, for the CA's root rotation (one per proxy)
                versions = {i["bundle_version"] for i in ids if i.get("bundle_version")}
                if len(versions) == 1:
                    body["bundle_version"] = versions.pop()
            if self._extra is not None:
                body.update(self._extra())
            await self._send_to_first_answering(body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            # the first failure and every 30th after it: a long outage does not flood the log
            if self.failures % 30 == 1:
                log.warning(
                    "heartbeat to %s failed (%d in a row): %s",
                    self.api_url,
                    self.failures,
                    self.last_error,
                )
            return False
        if self.failures:
            log.info("heartbeat to %s works again after %d failures", self.api_url, self.failures)
        self.failures = 0
        self.last_error = None
        self.sent += 1
        return True

    async def leave(self, timeout: float = 1.0) -> bool:
        """Deregister at shutdown: one heartbeat with no instances and ``"leaving": true``
        (the control plane drops the node's lease at once; an older one just sees no
        instances). Call after cancelling :meth:`run`. Whether it was accepted."""
        body: dict[str, Any] = {
            "node_id": self.node_id,
            "ttl": self.ttl,
            "instances": [],
            "leaving": True,
        }
        try:
            await asyncio.wait_for(self._send_to_first_answering(body), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("deregistration at shutdown failed: %s: %s", type(exc).__name__, exc)
            return False
        return True

    async def _send_to_first_answering(self, body: dict[str, Any]) -> None:
        """The current API first, then the others in order; raises the last failure."""
        start = self.api_urls.index(self.api_url)
        failure: Exception | None = None
        for i in range(len(self.api_urls)):
            url = self.api_urls[(start + i) % len(self.api_urls)]
            try:
                status, answer = await self._request(
                    url, "POST", HEARTBEAT_PATH, body, self._timeout
                )
                if status != 200:
                    error = answer.get("error") if isinstance(answer, dict) else answer
                    raise RuntimeError(f"HTTP {status}: {error}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = exc
                continue
            if url != self.api_url:
                log.info("heartbeats now go to %s", url)
                self.api_url = url
            return
        assert failure is not None
        raise failure


def kick_on_change(registrar: Registrar) -> Callable[[bool], None]:
    """An ``on_change`` for :class:`~plait.proxy.health.HealthChecker`: heartbeat at once."""
    return lambda _healthy: registrar.kick()
