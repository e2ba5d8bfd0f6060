"""The push guard: a registry change that would gut a service is held back, not pushed.

Theory of operation. The registry (:mod:`plait.control.registry`) keeps the truth of the
leases; the guard decides which instances are *served*, i.e. handed to the snapshot
cache and so to every proxy. Each registry change (a heartbeat, a lease sweep, a store
reload) is a *proposal*: the whole new instance set. :meth:`Guard.propose` compares it
with the set served now and holds the removals that look like the control plane being
confused rather than the fleet changing (docs/resilience.md, "Push guard"):

(a) a service would lose more than ``max_endpoint_loss`` (default 50%) of its healthy
    endpoints within ``window`` (default 60 s). Loss is *net* and *cumulative*: it is
    counted from the highest number of healthy endpoints the service had served at any
    time in the window, so a replacement that registers makes up for the instance it
    replaces (a rolling restart passes) and a slow drain in many small steps is caught;
(b) a service that had healthy endpoints would have none;
(c) the whole registry (the services of the config) would lose more than
    ``max_registry_loss`` (default 30%) of its healthy endpoints within the window, and
    at least two of them (so that one instance restarting in a registry of three is not
    "33%").

Rules:
- additions and updates always pass at once, even while removals are held: a held
  service is served as the union of the new set and the healthy instances it had;
- a hold has an id, a reason, a creation time and the instances it keeps served; while
  the condition lasts the hold keeps its id (its proposal is updated); when the
  condition goes away (instances come back) the hold is dropped by itself;
- :meth:`Guard.approve` applies the held change (and restarts the scope's window, so
  the approved loss is not counted again); approving the registry-wide hold approves
  everything held;
- :meth:`Guard.discard` refuses the change: the instances it would have removed are
  *pinned*, served as they were, until they register again (healthy), a later change
  of the same service is approved, or the service is deleted from the config. Their
  leases stay expired in the registry; only the served set keeps them;
- only services of the config are guarded: a service deleted by a config change is
  never held (its holds and pins are dropped with it);
- pure: no I/O; time comes from the injected ``clock`` (monotonic, for the window) and
  ``wall`` (unix seconds, for the ``created_at`` operators see).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from plait.xds.inputs import Instance

REGISTRY = "*"
"""The scope of the registry-wide check (c); other scopes are service names."""

Key = tuple[str, str, str, int]


def instance_key(inst: Instance) -> Key:
    return (inst.service, inst.node_id, inst.address, inst.port)


def _sort_key(inst: Instance) -> tuple[str, str, str, int]:
    return instance_key(inst)


@dataclass(frozen=True)
class GuardSettings:
    """Thresholds (fractions of healthy endpoints) and window (seconds)."""

    max_endpoint_loss: float = 0.5
    max_registry_loss: float = 0.3
    window: float = 60.0
    enabled: bool = True

    def __post_init__(self) -> None:
        for name in ("max_endpoint_loss", "max_registry_loss"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.window < 0:
            raise ValueError(f"window must not be negative, got {self.window}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "max_endpoint_loss": self.max_endpoint_loss,
            "max_registry_loss": self.max_registry_loss,
            "window": self.window,
        }


@dataclass
class Hold:
    """A held change of one scope (a service, or ``REGISTRY``)."""

    id: str
    scope: str
    reason: str
    created: float  # guard clock
    created_at: float  # wall clock
    baseline: int  # healthy endpoints at the window's high mark
    proposed: int  # healthy endpoints the change would leave
    kept: tuple[Instance, ...]  # instances served only because of this hold

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "scope": "registry" if self.scope == REGISTRY else "service",
            "service": None if self.scope == REGISTRY else self.scope,
            "reason": self.reason,
            "created_at": self.created_at,
            "age": round(max(0.0, now - self.created), 3),
            "change": {
                "healthy_before": self.baseline,
                "healthy_after": self.proposed,
                "removed": [
                    {
                        "service": i.service,
                        "node_id": i.node_id,
                        "address": i.address,
                        "port": i.port,
                    }
                    for i in self.kept
                ],
            },
        }


class HoldNotFound(LookupError):
    """No hold has that id."""


def _pct(x: float) -> str:
    return f"{round(x * 100):d}%"


class Guard:
    """Decides the served instance set. See the module docstring for the rules."""

    def __init__(
        self,
        settings: GuardSettings | None = None,
        clock: Callable[[], float] | None = None,
        wall: Callable[[], float] | None = None,
        served: Iterable[Instance] = (),
        services: Iterable[str] | None = None,
    ) -> None:
        self.settings = settings if settings is not None else GuardSettings()
        self.clock: Callable[[], float] = clock if clock is not None else (lambda: 0.0)
        self.wall: Callable[[], float] = wall if wall is not None else self.clock
        self._served: dict[Key, Instance] = {instance_key(i): i for i in served}
        self._truth: tuple[Instance, ...] = tuple(self._served.values())
        self._services: frozenset[str] | None = None if services is None else frozenset(services)
        self._samples: dict[str, deque[tuple[float, int]]] = {}
        self._holds: dict[str, Hold] = {}
        self._pins: dict[Key, Instance] = {}
        self._ids = itertools.count(1)
        self.held_total = 0

    # -- views ---------------------------------------------------------------------------

    def served(self) -> list[Instance]:
        return sorted(self._served.values(), key=_sort_key)

    def holds(self) -> list[Hold]:
        return sorted(self._holds.values(), key=lambda h: (h.created, h.id))

    def pinned(self) -> list[Instance]:
        return sorted(self._pins.values(), key=_sort_key)

    def to_dict(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "thresholds": self.settings.to_dict(),
            "held": len(self._holds),
            "holds": [h.to_dict(now) for h in self.holds()],
            "held_total": self.held_total,
            "pinned": [
                {"service": i.service, "node_id": i.node_id, "address": i.address, "port": i.port}
                for i in self.pinned()
            ],
        }

    # -- changes -------------------------------------------------------------------------

    def propose(
        self, truth: Iterable[Instance], services: Iterable[str] | None = None
    ) -> list[Instance]:
        """The registry's new instance set (and the config's services, if they changed):
        returns the set to serve."""
        self._truth = tuple(truth)
        if services is not None:
            self._set_services(frozenset(services))
        self._evaluate(approved=frozenset())
        return self.served()

    def approve(self, hold_id: str) -> list[Instance]:
        """Apply the held change; returns the set to serve. Raises HoldNotFound."""
        hold = self._find(hold_id)
        del self._holds[hold.scope]
        if hold.scope == REGISTRY:
            approved = frozenset(self._holds) | {REGISTRY}
            self._holds.clear()
            self._pins.clear()
            self._evaluate(approved=approved)
            self._samples.clear()
        else:
            self._pins = {k: v for k, v in self._pins.items() if v.service != hold.scope}
            before = self._total(self._served.values())
            self._evaluate(approved=frozenset({hold.scope}))
            self._samples.pop(hold.scope, None)
            # the approved loss no longer counts towards the registry-wide window
            delta = before - self._total(self._served.values())
            reg = self._samples.get(REGISTRY)
            if reg and delta > 0:
                self._samples[REGISTRY] = deque((t, max(0, c - delta)) for t, c in reg)
        return self.served()

    def discard(self, hold_id: str) -> list[Instance]:
        """Refuse the held change: keep serving what it would remove (pinned, see the
        module docstring). Returns the set to serve. Raises HoldNotFound."""
        hold = self._find(hold_id)
        del self._holds[hold.scope]
        for inst in hold.kept:
            self._pins[instance_key(inst)] = inst
        self._evaluate(approved=frozenset())
        return self.served()

    def _find(self, hold_id: str) -> Hold:
        for hold in self._holds.values():
            if hold.id == hold_id:
                return hold
        known = ", ".join(h.id for h in self.holds()) or "none"
        raise HoldNotFound(f"no held change {hold_id!r} (held now: {known}; see GET /v1/guard)")

    def _set_services(self, services: frozenset[str]) -> None:
        gone = (self._services or frozenset()) - services if self._services is not None else set()
        self._services = services
        for svc in gone:  # deleted by config: never held
            self._holds.pop(svc, None)
            self._samples.pop(svc, None)
        if gone:
            self._pins = {k: v for k, v in self._pins.items() if v.service not in gone}

    # -- the decision --------------------------------------------------------------------

    def _guarded(self, service: str) -> bool:
        return self._services is None or service in self._services

    def _healthy_counts(self, instances: Iterable[Instance]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for inst in instances:
            if self._guarded(inst.service):
                counts[inst.service] = counts.get(inst.service, 0) + (1 if inst.healthy else 0)
        return counts

    def _total(self, instances: Iterable[Instance]) -> int:
        return sum(self._healthy_counts(instances).values())

    def _baseline(self, scope: str, current: int, now: float) -> int:
        samples = self._samples.get(scope)
        if not samples:
            return current
        horizon = now - self.settings.window
        while samples and samples[0][0] < horizon:
            samples.popleft()
        return max([current, *(c for _, c in samples)])

    def _evaluate(self, approved: frozenset[str]) -> None:
        now = self.clock()
        truth: dict[Key, Instance] = {instance_key(i): i for i in self._truth}
        # pins: served as they were until the instance is back and healthy
        for key, pin in list(self._pins.items()):
            if not self._guarded(pin.service):
                del self._pins[key]
                continue
            current = truth.get(key)
            if current is not None and current.healthy:
                del self._pins[key]
            else:
                truth[key] = pin
        if not self.settings.enabled:
            self._holds.clear()
            self._served = truth
            return

        cur = self._healthy_counts(self._served.values())
        prop = self._healthy_counts(truth.values())
        s = self.settings
        verdicts: dict[str, tuple[str, int, int]] = {}
        for svc in sorted(set(cur) | set(prop)):
            if svc in approved or REGISTRY in approved:
                continue
            base = self._baseline(svc, cur.get(svc, 0), now)
            after = prop.get(svc, 0)
            loss = base - after
            if base <= 0 or loss <= 0:
                continue
            if after == 0 and cur.get(svc, 0) > 0:
                verdicts[svc] = (
                    f"would remove {loss} of {base} healthy endpoints of service {svc} "
                    f"({_pct(loss / base)}): it would have none",
                    base,
                    after,
                )
            elif loss / base > s.max_endpoint_loss:
                verdicts[svc] = (
                    f"would remove {loss} of {base} healthy endpoints of service {svc} "
                    f"within {s.window:g}s ({_pct(loss / base)} > {_pct(s.max_endpoint_loss)})",
                    base,
                    after,
                )
        if REGISTRY not in approved:
            cur_total = sum(cur.values())
            # what the registry would have: services already held keep what they serve
            after_total = sum(prop.values())
            base = self._baseline(REGISTRY, cur_total, now)
            loss = base - after_total
            if base > 0 and loss >= 2 and loss / base > s.max_registry_loss:
                verdicts[REGISTRY] = (
                    f"would remove {loss} of {base} healthy endpoints of the registry "
                    f"within {s.window:g}s ({_pct(loss / base)} > {_pct(s.max_registry_loss)})",
                    base,
                    after_total,
                )

        # services whose removals are held back
        if REGISTRY in verdicts:
            held_services = {svc for svc in cur if svc not in approved}
        else:
            held_services = set(verdicts)
        served: dict[Key, Instance] = dict(truth)
        kept: dict[str, list[Instance]] = {}
        for key, old in self._served.items():
            if old.service not in held_services or not old.healthy:
                continue
            new = truth.get(key)
            if new is None or not new.healthy:
                served[key] = old
                kept.setdefault(old.service, []).append(old)
                kept.setdefault(REGISTRY, []).append(old)

        # holds: keep ids while the condition lasts, drop the ones that went away
        for scope in list(self._holds):
            if scope not in verdicts:
                del self._holds[scope]
        for scope, (reason, base, after) in verdicts.items():
            kept_here = tuple(sorted(kept.get(scope, ()), key=_sort_key))
            hold = self._holds.get(scope)
            if hold is None:
                self._holds[scope] = Hold(
                    id=f"h{next(self._ids)}",
                    scope=scope,
                    reason=reason,
                    created=now,
                    created_at=self.wall(),
                    baseline=base,
                    proposed=after,
                    kept=kept_here,
                )
                self.held_total += 1
            else:
                hold.reason, hold.baseline, hold.proposed, hold.kept = (
                    reason,
                    base,
                    after,
                    kept_here,
                )

        # the window: remember each scope's previous served count when it changes
        new_counts = self._healthy_counts(served.values())
        for svc in set(cur) | set(new_counts):
            before, after_n = cur.get(svc, 0), new_counts.get(svc, 0)
            if before != after_n:
                self._samples.setdefault(svc, deque()).append((now, before))
        before_total, after_total_n = sum(cur.values()), sum(new_counts.values())
        if before_total != after_total_n:
            self._samples.setdefault(REGISTRY, deque()).append((now, before_total))
        self._served = served
