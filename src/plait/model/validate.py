"""One document's data -> one resource, or the list of what is wrong with it.

Dispatch is on ``kind`` (the :data:`~plait.model.resources.KINDS` table); the chosen
pydantic model does the field checks. Pydantic reports each problem with a location in
the YAML's own camelCase names (the models' alias generator makes the aliases, and
validation goes by alias only, so ``connect_timeout:`` is refused with a hint) and an
error type; :data:`_MESSAGES` turns each type into
plain words, and :class:`~plait.model.source.Where` turns the location into a line.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Callable, Mapping
from typing import Annotated, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from plait.model.errors import KEY_MARKER, FieldError, Path
from plait.model.resources import KINDS, Resource
from plait.model.source import Where, identify

_KNOWN_KINDS = ", ".join(sorted(KINDS))


def validate_document(data: object, where: Where) -> tuple[Resource | None, list[FieldError]]:
    """Validate one document's data; the resource, or None and at least one error."""
    if not isinstance(data, Mapping):
        shown = _shown(data) if isinstance(data, list) else f"the value {_shown(data)}"
        message = (
            f"a document must be a mapping with apiVersion, kind, metadata and spec; "
            f"this one is {shown}"
        )
        return None, [where.error((), message)]
    kind, name = identify(data)
    if kind is None or kind not in KINDS:
        message = _kind_message(data.get("kind"))
        return None, [where.error(("kind",), message, kind, name)]
    model = KINDS[kind]
    try:
        # by alias only: YAML spells fields one way (camelCase), Python code by name
        return model.model_validate(data, by_alias=True, by_name=False), []
    except ValidationError as exc:
        errors = [
            where.error(_path(e), _message(e, model), kind, name)
            for e in exc.errors(include_url=False)
        ]
        return None, errors


def _kind_message(kind: object) -> str:
    if kind is None:
        return f"is required: one of {_KNOWN_KINDS}"
    if not isinstance(kind, str):
        return f"must be one of {_KNOWN_KINDS}, got {_shown(kind)}"
    return f"unknown kind {kind!r}: expected one of {_KNOWN_KINDS}" + _did_you_mean(
        kind, list(KINDS)
    )


def _path(e: ErrorDetails) -> Path:
    return tuple(e["loc"])


# Pydantic error type -> plain words. Anything not listed keeps pydantic's own message.
_MESSAGES: dict[str, Callable[[ErrorDetails], str]] = {
    "missing": lambda e: "is required",
    "greater_than_equal": lambda e: f"must be >= {_ctx(e, 'ge')}",
    "greater_than": lambda e: f"must be > {_ctx(e, 'gt')}",
    "less_than_equal": lambda e: f"must be <= {_ctx(e, 'le')}",
    "less_than": lambda e: f"must be < {_ctx(e, 'lt')}",
    "int_type": lambda e: f"must be a whole number, got {_shown(e['input'])}",
    "int_parsing": lambda e: f"must be a whole number, got {_shown(e['input'])}",
    "int_from_float": lambda e: f"must be a whole number, got {_shown(e['input'])}",
    "float_type": lambda e: f"must be a number, got {_shown(e['input'])}",
    "float_parsing": lambda e: f"must be a number, got {_shown(e['input'])}",
    "string_type": lambda e: f"must be a string, got {_shown(e['input'])}",
    "bool_type": lambda e: f"must be true or false, got {_shown(e['input'])}",
    "bool_parsing": lambda e: f"must be true or false, got {_shown(e['input'])}",
    "literal_error": lambda e: _literal_message(e),
    "dict_type": lambda e: f"must be a mapping, got {_shown(e['input'])}",
    "model_type": lambda e: f"must be a mapping of fields, got {_shown(e['input'])}",
    "model_attributes_type": lambda e: f"must be a mapping of fields, got {_shown(e['input'])}",
    "tuple_type": lambda e: f"must be a list, got {_shown(e['input'])}",
    "list_type": lambda e: f"must be a list, got {_shown(e['input'])}",
    "value_error": lambda e: str(_ctx(e, "error")),
    "recursion_loop": lambda e: "refers to itself through a YAML alias; write the value out",
}


def _message(e: ErrorDetails, model: type[BaseModel]) -> str:
    loc = e["loc"]
    if loc and loc[-1] == KEY_MARKER:
        return "the key " + _MESSAGES.get(e["type"], _pydantic_message)(e)
    if e["type"] == "extra_forbidden":
        return _extra_message(loc, model)
    return _MESSAGES.get(e["type"], _pydantic_message)(e)


def _pydantic_message(e: ErrorDetails) -> str:
    return e["msg"]


def _ctx(e: ErrorDetails, key: str) -> object:
    return e.get("ctx", {}).get(key, "?")


def _literal_message(e: ErrorDetails) -> str:
    expected = str(_ctx(e, "expected"))
    choice = "one of " if " or " in expected else ""
    return f"must be {choice}{expected}, got {_shown(e['input'])}"


def _extra_message(loc: Path, model: type[BaseModel]) -> str:
    field = loc[-1] if loc else "?"
    owner = _model_at(model, loc[:-1])
    if owner is None:
        return f"{field!r} is not an allowed field here"
    allowed = [info.alias or name for name, info in owner.model_fields.items()]
    hint = _did_you_mean(field, allowed) if isinstance(field, str) else ""
    return f"{field!r} is not an allowed field here; allowed: {', '.join(allowed)}{hint}"


def _model_at(model: type[BaseModel], path: Path) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``path`` (for listing its fields)."""
    tp: object = model
    for part in path:
        tp = _step(_strip(tp), part)
    tp = _strip(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _strip(tp: object) -> object:
    """Drop ``Annotated[...]`` and ``| None`` wrappers."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _step(tp: object, part: str | int) -> object:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, info in tp.model_fields.items():
            if part in (info.alias, name):
                return info.annotation
        return None
    origin, args = get_origin(tp), get_args(tp)
    if origin in (tuple, list) and args and isinstance(part, int):
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower().replace("_", ""): c for c in choices}
        close = [lowered[k] for k in [word.lower().replace("_", "")] if k in lowered]
    return f" (did you mean {close[0]!r}?)" if close else ""


def _shown(value: object, limit: int = 60) -> str:
    """A short rendering of a user's value, spelled as YAML spells it where it differs."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    try:
        text = repr(value)
    except Exception:  # e.g. an int too long to print
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
