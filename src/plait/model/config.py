"""A whole, cross-checked set of resources: what one config version holds."""

from __future__ import annotations

from dataclasses import dataclass, field

from plait.model.resources import Policy, Resource, Route, Service


@dataclass(frozen=True)
class ConfigSet:
    """Every applied resource, keyed for lookup. Build with :func:`plait.model.load.build_config`.

    Invariants (checked when built): names are unique per kind; every Route and every
    Policy names an existing Service; at most one Route and at most one Policy per
    Service.
    """

    services: dict[str, Service] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)  # keyed by route name
    policies: dict[str, Policy] = field(default_factory=dict)  # keyed by policy name

    def route_for(self, service: str) -> Route | None:
        for route in self.routes.values():
            if route.spec.service == service:
                return route
        return None

    def policy_for(self, service: str) -> Policy | None:
        for policy in self.policies.values():
            if policy.spec.service == service:
                return policy
        return None

    def resources(self) -> list[Resource]:
        out: list[Resource] = list(self.services.values())
        out.extend(self.routes.values())
        out.extend(self.policies.values())
        return out
