"""The front door for config: YAML text in, validated resources and ConfigSets out.

    text --parse_documents--> [Resource] --build_config / apply_resources--> ConfigSet

Every function either returns a fully checked result or raises :class:`ConfigError`
listing *every* problem it found (syntax, per-document field checks, duplicate names,
cross-resource references), each with file, document, field and line. Nothing here
does I/O, and a rejected change never alters the ConfigSet it was given (they are
immutable values).

``apply_text``/``load_text`` are ``parse_documents`` followed by ``apply_resources``/
``build_config``, but keep each resource's place in the text, so cross-resource errors
(a Route naming a missing Service) carry line numbers too. The list-based functions
number documents by their position in the list.

The parts live in small modules: :mod:`~plait.model.source` (YAML text and lines),
:mod:`~plait.model.validate` (one document), :mod:`~plait.model.checks` (cross-checks,
apply, delete), :mod:`~plait.model.serialize` (dicts for the API and the store) and
:mod:`~plait.model.errors`. Import the public names from here.
"""

from __future__ import annotations

from collections.abc import Iterable

from plait.model import checks
from plait.model.checks import Entry, resource_key
from plait.model.config import ConfigSet
from plait.model.errors import ConfigError, FieldError, ResourceNotFoundError
from plait.model.resources import Resource
from plait.model.serialize import (
    config_from_documents,
    config_to_documents,
    resource_from_dict,
    resource_to_dict,
)
from plait.model.source import Where, read_documents
from plait.model.validate import validate_document

__all__ = [
    "ConfigError",
    "FieldError",
    "ResourceNotFoundError",
    "apply_resources",
    "apply_text",
    "build_config",
    "config_from_documents",
    "config_to_documents",
    "delete_resource",
    "load_text",
    "parse_documents",
    "resource_from_dict",
    "resource_key",
    "resource_to_dict",
]


def parse_documents(text: str, filename: str) -> list[Resource]:
    """Every resource in a multi-document YAML text, in order; empty documents skipped.

    Checks syntax, each document's fields, and that no (kind, name) is used twice.
    """
    return [entry.resource for entry in _parse(text, filename)]


def build_config(resources: Iterable[Resource], filename: str = "<config>") -> ConfigSet:
    """Cross-check a whole set of resources into a ConfigSet."""
    return checks.build(_entries(resources, filename))


def apply_resources(
    current: ConfigSet, new: list[Resource], filename: str
) -> tuple[ConfigSet, list[str]]:
    """Upsert ``new`` into ``current`` (like ``kubectl apply``).

    Returns the new ConfigSet and the sorted keys (``"Service/orders"``) of the
    resources that were added or differ from their applied version.
    """
    return checks.apply(current, _entries(new, filename))


def delete_resource(current: ConfigSet, kind: str, name: str) -> ConfigSet:
    """``current`` without ``kind/name``.

    Raises :class:`ResourceNotFoundError` (a ConfigError and a KeyError) if there is no
    such resource, and ConfigError if it is a Service that a Route still names.
    """
    return checks.delete(current, kind, name)


def apply_text(current: ConfigSet, text: str, filename: str) -> tuple[ConfigSet, list[str]]:
    """``apply_resources(current, parse_documents(text, filename), filename)``, with lines."""
    return checks.apply(current, _parse(text, filename))


def load_text(text: str, filename: str) -> ConfigSet:
    """``build_config(parse_documents(text, filename), filename)``, with lines."""
    return checks.build(_parse(text, filename))


def _parse(text: str, filename: str) -> list[Entry]:
    documents, errors = read_documents(text, filename)
    entries: list[Entry] = []
    for doc in documents:
        resource, found = validate_document(doc.data, doc.where)
        errors.extend(found)
        if resource is not None:
            entries.append(Entry(resource, doc.where))
    errors.extend(checks.check_unique(entries))
    if errors:
        raise ConfigError(errors)
    return entries


def _entries(resources: Iterable[Resource], filename: str) -> list[Entry]:
    return [Entry(r, Where(filename, n)) for n, r in enumerate(resources, start=1)]
