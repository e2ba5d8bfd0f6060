"""Config errors that say what is wrong, where, and what to do.

One :class:`FieldError` per problem, pointing at a file, a document in it (1-based, as
the user counts ``---`` sections), the resource when it is known, a field path written
the way the YAML spells it (``spec.rules[0].backends[1].weight``) and a line. A
:class:`ConfigError` carries every problem found in one go, so a user fixes a file in
one round trip instead of one error at a time.

``document`` 0 means "not from a document" (e.g. a delete request); ``field`` "" means
"the document or resource as a whole"; ``line`` None means the line is not known (the
resource was not read from YAML text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

Path = tuple[str | int, ...]
"""A field location as pydantic reports it: YAML (camelCase) names and list indices."""

_PLAIN_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
KEY_MARKER = "[key]"  # pydantic's marker for "the key of the mapping entry before me"


def format_path(path: Path) -> str:
    """``("spec", "rules", 0, "match")`` -> ``spec.rules[0].match``.

    Mapping keys that are not plain words are quoted: ``subset["app.io/tier"]``.
    """
    out = ""
    for part in path:
        if part == KEY_MARKER:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY_RE.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


@dataclass(frozen=True)
class FieldError:
    """One problem in one field of one document."""

    file: str
    document: int
    kind: str | None
    name: str | None
    field: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = [self.file] if self.file else []
        resource = "/".join(p for p in (self.kind, self.name) if p)
        if self.document:
            where.append(f"document {self.document}" + (f" ({resource})" if resource else ""))
        elif resource:
            where.append(resource)
        if self.field:
            where.append(self.field)
        text = ": ".join([*where, self.message])
        return f"{text} (line {self.line})" if self.line is not None else text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def in_file(cls, file: str, path: Path, message: str) -> FieldError:
        """A problem at ``path`` of a file that is not a list of resources (no document,
        kind or name), and with no line to point at."""
        return cls(file, 0, None, None, format_path(path), None, message)


def _sort_key(e: FieldError) -> tuple[str, int, int, str]:
    return (e.file, e.document, e.line if e.line is not None else 0, e.field)


class ConfigError(Exception):
    """The config was refused; ``errors`` lists every problem found, in file order."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: list[FieldError] = sorted(errors, key=_sort_key)
        super().__init__(self.errors)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors) or "invalid config"

    def to_dict(self) -> dict[str, Any]:
        """The HTTP API's 400 body: ``{"error": <all lines>, "errors": [<FieldError>...]}``."""
        return {"error": str(self), "errors": [e.to_dict() for e in self.errors]}


class ResourceNotFoundError(ConfigError, KeyError):
    """The named resource (or its kind) does not exist; the HTTP API answers 404."""
