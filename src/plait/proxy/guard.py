"""The proxy-side push guard: an EDS update that would empty a cluster is held back.

Second line of defence behind the control plane's own guard (docs/resilience.md). Pure:
:meth:`EndpointGuard.filter` takes the config the xDS client accepted and returns the one
to serve; time comes from an injected clock.

Rules, per EDS cluster:

- an update leaving the cluster with no healthy endpoint, while the config served has
  healthy ones, is applied only for the endpoints it names (new ones appear, health
  changes apply); the previously served healthy endpoints it drops are kept, marked
  ``stale`` -- a *hold* starts;
- the removal is *confirmed*, and the stale endpoints go, when the same empty
  assignment arrives again (a later EDS response) at least ``confirm_after`` seconds
  after the hold started, or when CDS removes the cluster itself (a deliberate delete);
- an update that gives the cluster a healthy endpoint again ends the hold at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from plait.proxy.runtime import Endpoint, ProxyConfig
from plait.xds.types import ENDPOINT

DEFAULT_CONFIRM_AFTER = 30.0


@dataclass(frozen=True)
class Hold:
    since: float  # clock() when the emptying update arrived
    eds_version: str  # the EDS version that started it
    kept: tuple[Endpoint, ...]  # stale endpoints served meanwhile


class EndpointGuard:
    def __init__(
        self, clock: Callable[[], float], confirm_after: float = DEFAULT_CONFIRM_AFTER
    ) -> None:
        self._clock = clock
        self.confirm_after = confirm_after
        self.holds: dict[str, Hold] = {}
        self._served: dict[str, tuple[Endpoint, ...]] = {}
        self._eds_version: str | None = None

    def filter(self, config: ProxyConfig) -> ProxyConfig:
        """The config to serve: ``config`` with held-back endpoints added, marked stale."""
        now = self._clock()
        version = config.versions.get(ENDPOINT)
        arrived = version != self._eds_version  # a new EDS response, not another type's
        self._eds_version = version
        eds = [name for name, c in config.clusters.items() if c.discovery == "eds"]
        for name in list(self.holds):
            if name not in config.clusters:
                del self.holds[name]  # CDS removed the cluster: a deliberate delete
        endpoints = dict(config.endpoints)
        changed = False
        for name in eds:
            new = config.endpoints.get(name, ())
            served = self._served.get(name, ())
            hold = self.holds.get(name)
            if any(e.healthy for e in new):
                self.holds.pop(name, None)
                continue
            if hold is not None:
                if arrived and now - hold.since >= self.confirm_after:
                    del self.holds[name]  # the same emptying update, again: confirmed
                    continue
            elif any(e.healthy for e in served):
                named = {(e.address, e.port) for e in new}
                kept = tuple(
                    replace(e, stale=True)
                    for e in served
                    if e.healthy and (e.address, e.port) not in named
                )
                if not kept:
                    continue
                hold = Hold(now, version or "", kept)
                self.holds[name] = hold
            else:
                continue
            endpoints[name] = tuple(new) + hold.kept
            changed = True
        out = replace(config, endpoints=endpoints) if changed else config
        self._served = {name: out.endpoints.get(name, ()) for name in eds}
        return out

    def view(self) -> dict[str, dict[str, object]]:
        """For the admin pages: per held cluster, since when and what is kept."""
        return {
            name: {
                "since": hold.since,
                "confirm_after": self.confirm_after,
                "kept": [f"{e.address}:{e.port}" for e in hold.kept],
            }
            for name, hold in sorted(self.holds.items())
        }
