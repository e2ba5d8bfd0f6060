"""Resources to and from their YAML-shaped dicts: for the API, the CLI and the store.

The dict is what a user would write: camelCase names, durations as ``"5s"``/``"250ms"``,
fields left at their default omitted, but ``apiVersion``, ``kind`` and ``metadata``
always present. ``resource_from_dict(resource_to_dict(r)) == r`` for every resource,
and a config stored with :func:`config_to_documents` reads back with
:func:`config_from_documents` to an equal ConfigSet (both are property-tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from plait.model.checks import Entry, build
from plait.model.config import ConfigSet
from plait.model.errors import ConfigError, FieldError
from plait.model.resources import Resource
from plait.model.source import Where
from plait.model.validate import validate_document

STORED = "<stored config>"


def resource_to_dict(r: Resource) -> dict[str, Any]:
    """The resource as YAML-shaped data (safe to ``yaml.safe_dump`` or ``json.dumps``)."""
    body = r.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    out: dict[str, Any] = {"apiVersion": r.api_version, "kind": r.kind}
    out["metadata"] = body.get("metadata", {"name": r.name})
    if "spec" in body:
        out["spec"] = body["spec"]
    return out


def resource_from_dict(d: object, where: str) -> Resource:
    """Validate YAML-shaped data into a resource; ``where`` names its origin in errors."""
    resource, errors = validate_document(d, Where(where, 1))
    if resource is None:
        raise ConfigError(errors)
    return resource


def config_to_documents(cfg: ConfigSet) -> list[dict[str, Any]]:
    """Every resource as a dict: Services, then Routes, then Policies, each sorted by name."""
    services = [cfg.services[name] for name in sorted(cfg.services)]
    routes = [cfg.routes[name] for name in sorted(cfg.routes)]
    policies = [cfg.policies[name] for name in sorted(cfg.policies)]
    ordered: list[Resource] = [*services, *routes, *policies]
    return [resource_to_dict(r) for r in ordered]


def config_from_documents(docs: Sequence[object], where: str = STORED) -> ConfigSet:
    """Validate and cross-check stored documents into a ConfigSet (or ConfigError)."""
    entries: list[Entry] = []
    errors: list[FieldError] = []
    for number, doc in enumerate(docs, start=1):
        place = Where(where, number)
        resource, found = validate_document(doc, place)
        errors.extend(found)
        if resource is not None:
            entries.append(Entry(resource, place))
    if errors:
        raise ConfigError(errors)
    return build(entries)
