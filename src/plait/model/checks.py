"""Cross-resource checks, and the config operations built on them: build, apply, delete.

A :class:`~plait.model.config.ConfigSet` is only ever made here, after every check in
:data:`CHECKS` passed, so holders of a ConfigSet can rely on its invariants:

- names are unique per kind;
- every Route's ``spec.service`` names an existing Service, and that Service is not
  ``tcp`` (Routes are HTTP/gRPC routing);
- at most one Route per Service;
- every Policy's ``spec.service`` names an existing Service, at most one Policy per
  Service;
- backend subsets use well-formed label keys;
- every name in a Service's ``spec.calls`` names an existing Service, once.

Each resource comes with its :class:`~plait.model.source.Where`, so an error points at
the document (and line, when read from text) that has to change. When an apply brings a
conflict between a new resource and one already applied, the new one is blamed: that is
the one the user is editing.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from plait.model.config import ConfigSet
from plait.model.errors import ConfigError, FieldError, Path, ResourceNotFoundError
from plait.model.resources import KINDS, LABEL_KEY_RE, Policy, Resource, Route, Service
from plait.model.source import Where

APPLIED = "<current config>"  # the file name errors use for already-applied resources


@dataclass(frozen=True)
class Entry:
    """A validated resource and where it came from; ``new`` is False for applied ones."""

    resource: Resource
    where: Where
    new: bool = True

    @property
    def key(self) -> str:
        return resource_key(self.resource)

    def error(self, path: Path, message: str) -> FieldError:
        r = self.resource
        return self.where.error(path, message, r.kind, r.name)


def resource_key(r: Resource) -> str:
    """``"Service/orders"``: how changes and errors name a resource."""
    return f"{r.kind}/{r.name}"


def check_unique(entries: Sequence[Entry]) -> list[FieldError]:
    """The second and later resources with an already-used (kind, name) are refused."""
    first: dict[str, Entry] = {}
    errors: list[FieldError] = []
    for entry in entries:
        if entry.key in first:
            other = first[entry.key].where.describe(entry.where.file)
            message = (
                f"{entry.resource.kind} {entry.resource.name!r} is already defined in {other}; "
                "names must be unique per kind: rename or remove one"
            )
            errors.append(entry.error(("metadata", "name"), message))
        else:
            first[entry.key] = entry
    return errors


def _check_one_per_service(
    entries: Sequence[Entry], kind: type[Route] | type[Policy], merge_advice: str
) -> list[FieldError]:
    """Each ``kind`` document names an existing Service, and a Service takes at most one.

    Routes are also refused on tcp Services. ``merge_advice`` ends the "at most one" error.
    """
    services: dict[str, Entry] = {}  # the first definition; check_unique reports the rest
    for e in entries:
        if isinstance(e.resource, Service):
            services.setdefault(e.resource.name, e)
    first_of: dict[str, Entry] = {}
    errors: list[FieldError] = []
    for entry in entries:
        resource = entry.resource
        if not isinstance(resource, kind):
            continue
        target = resource.spec.service
        service = services.get(target)
        if service is None:
            hint = _close_name(target, sorted(services))
            message = (
                f"names Service {target!r}, which does not exist{hint}; "
                "define that Service or fix the name"
            )
            errors.append(entry.error(("spec", "service"), message))
            continue
        if (
            kind is Route
            and isinstance(service.resource, Service)
            and service.resource.spec.protocol == "tcp"
        ):
            errors.append(_tcp_error(entry, service))
        if target in first_of:
            other = first_of[target]
            message = (
                f"Service {target!r} already has {kind.__name__} {other.resource.name!r} "
                f"({other.where.describe(entry.where.file)}); a Service takes at most one "
                f"{kind.__name__}: {merge_advice}"
            )
            errors.append(entry.error(("spec", "service"), message))
        else:
            first_of[target] = entry
    return errors


def check_references(entries: Sequence[Entry]) -> list[FieldError]:
    """Routes against Services: the target exists, is not tcp, has at most one Route."""
    return _check_one_per_service(entries, Route, "merge their rules into one Route")


def check_policies(entries: Sequence[Entry]) -> list[FieldError]:
    """Policies against Services: the protected Service exists, has at most one Policy."""
    return _check_one_per_service(
        entries, Policy, "merge their allow and deny lists into one Policy"
    )


def _tcp_error(route: Entry, service: Entry) -> FieldError:
    if route.new or not service.new:
        message = (
            f"Service {service.resource.name!r} has protocol tcp, and Routes apply only to "
            "http and grpc Services: remove this Route or change the Service's protocol"
        )
        return route.error(("spec", "service"), message)
    message = (
        f"is tcp, but Route {route.resource.name!r} routes this Service and Routes apply "
        "only to http and grpc Services: delete the Route first or keep http/grpc"
    )
    return service.error(("spec", "protocol"), message)


def check_subsets(entries: Sequence[Entry]) -> list[FieldError]:
    """Backend subset label keys must be label keys an instance can carry."""
    errors: list[FieldError] = []
    for entry in entries:
        route = entry.resource
        if not isinstance(route, Route):
            continue
        for i, rule in enumerate(route.spec.rules):
            for j, backend in enumerate(rule.backends):
                for key in backend.subset:
                    if not LABEL_KEY_RE.match(key):
                        path = ("spec", "rules", i, "backends", j, "subset", key)
                        message = (
                            f"{key!r} is not a valid label key: use letters, digits, '.', "
                            "'_', '/' and '-', starting with a letter or digit, at most 63 "
                            "characters"
                        )
                        errors.append(entry.error(path, message))
    return errors


def check_calls(entries: Sequence[Entry]) -> list[FieldError]:
    """Each name in a Service's ``spec.calls`` names an existing Service, at most once."""
    services = sorted({e.resource.name for e in entries if isinstance(e.resource, Service)})
    known = set(services)
    errors: list[FieldError] = []
    for entry in entries:
        service = entry.resource
        if not isinstance(service, Service) or service.spec.calls is None:
            continue
        first: dict[str, int] = {}
        for index, target in enumerate(service.spec.calls):
            path = ("spec", "calls", index)
            if target in first:
                message = (
                    f"Service {target!r} is listed twice (first at spec.calls[{first[target]}]); "
                    "list each called Service once"
                )
                errors.append(entry.error(path, message))
                continue
            first[target] = index
            if target not in known:
                hint = _close_name(target, services)
                message = (
                    f"names Service {target!r}, which does not exist{hint}; "
                    "define that Service or fix the name"
                )
                errors.append(entry.error(path, message))
    return errors


CHECKS: tuple[Callable[[Sequence[Entry]], list[FieldError]], ...] = (
    check_unique,
    check_references,
    check_policies,
    check_subsets,
    check_calls,
)


def build(entries: Sequence[Entry]) -> ConfigSet:
    """Run every check; a ConfigSet with resources sorted by name, or ConfigError."""
    errors = [error for check in CHECKS for error in check(entries)]
    if errors:
        raise ConfigError(errors)
    services = sorted((e.resource for e in entries if isinstance(e.resource, Service)), key=_name)
    routes = sorted((e.resource for e in entries if isinstance(e.resource, Route)), key=_name)
    policies = sorted((e.resource for e in entries if isinstance(e.resource, Policy)), key=_name)
    return ConfigSet(
        services={s.name: s for s in services},
        routes={r.name: r for r in routes},
        policies={p.name: p for p in policies},
    )


def _name(r: Resource) -> str:
    return r.name


def applied_entries(current: ConfigSet) -> list[Entry]:
    return [Entry(r, Where(APPLIED, 0), new=False) for r in current.resources()]


def apply(current: ConfigSet, new: Sequence[Entry]) -> tuple[ConfigSet, list[str]]:
    """Upsert ``new`` into ``current``: the checked result and the keys that changed."""
    replaced = {e.key for e in new}
    merged = [e for e in applied_entries(current) if e.key not in replaced]
    merged.extend(new)
    result = build(merged)
    before = {resource_key(r): r for r in current.resources()}
    changed = {e.key for e in new if before.get(e.key) != e.resource}
    return result, sorted(changed)


def delete(current: ConfigSet, kind: str, name: str) -> ConfigSet:
    """``current`` without the named resource; refused if a Route, a Policy or another
    Service's ``spec.calls`` still names a Service."""
    where = Where(APPLIED, 0)
    if kind not in KINDS:
        message = f"unknown kind {kind!r}: expected one of {', '.join(sorted(KINDS))}"
        raise ResourceNotFoundError([where.error((), message, kind, name)])
    tables: dict[str, dict[str, Service] | dict[str, Route] | dict[str, Policy]] = {
        "Service": current.services,
        "Route": current.routes,
        "Policy": current.policies,
    }
    if name not in tables[kind]:
        message = f"there is no {kind} {name!r} to delete; check the kind and name"
        raise ResourceNotFoundError([where.error((), message, kind, name)])
    if kind == "Service":
        route = current.route_for(name)
        if route is not None:
            message = (
                f"cannot delete: Route {route.name!r} still routes this Service "
                "(spec.service); delete that Route first, or point it at another Service"
            )
            raise ConfigError([where.error((), message, kind, name)])
        policy = current.policy_for(name)
        if policy is not None:
            message = (
                f"cannot delete: Policy {policy.name!r} still protects this Service "
                "(spec.service); delete that Policy first, or point it at another Service"
            )
            raise ConfigError([where.error((), message, kind, name)])
        callers = sorted(
            s.name
            for s in current.services.values()
            if s.name != name and s.spec.calls is not None and name in s.spec.calls
        )
        if callers:
            who = (
                f"Service {callers[0]!r} still calls"
                if len(callers) == 1
                else f"Services {', '.join(repr(c) for c in callers)} still call"
            )
            message = (
                f"cannot delete: {who} this Service (spec.calls); remove it from "
                "spec.calls first, or delete the callers first"
            )
            raise ConfigError([where.error((), message, kind, name)])
    return ConfigSet(
        services={k: v for k, v in current.services.items() if kind != "Service" or k != name},
        routes={k: v for k, v in current.routes.items() if kind != "Route" or k != name},
        policies={k: v for k, v in current.policies.items() if kind != "Policy" or k != name},
    )


def _close_name(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
