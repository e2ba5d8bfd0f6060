"""Field checks and frozen models for the proxy's bootstrap file, without pydantic.

The proxy process must not import pydantic (about 11 MB of its memory; docs/internals.md,
"Memory"), so :mod:`plait.proxy.bootstrap` declares its models on this small layer. A
:class:`Model` lists its fields (``FIELDS``: name -> :class:`Field`: a check and a
default); constructing one (``Model(**fields)``, or :func:`model` for a nested mapping)
runs every check, collects *every* problem with its field path -- fields in declaration
order, then unknown fields (with a "did you mean"), then the checks across fields
(``_after``) -- and raises :class:`BootstrapError` with all of them. Models are frozen
(:class:`FrozenError` on assignment), compare and hash by value.

A check is ``(value, path, problems) -> value``: it returns the converted value, or
appends ``(path, message)`` to ``problems`` and returns :data:`BAD`. :func:`leaf` turns a
plain converter that raises :class:`Invalid` into one. The converters keep pydantic's lax
coercions where a YAML file could rely on them (``"9001"`` for a port, ``yes`` for true).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from plait.model.errors import ConfigError, FieldError
from plait.model.errors import Path as FieldPath
from plait.model.names import LABEL_KEY_RE, parse_duration


class BootstrapError(ConfigError, ValueError):
    """The bootstrap file is unreadable or invalid; ``errors`` lists every problem."""


class FrozenError(AttributeError, ValueError):
    """A bootstrap value was assigned to: the models are immutable."""


# -- field checks: value in, value out, or Invalid(message) ------------------------------


class Invalid(ValueError):
    """One problem with one value; the caller knows where it is."""


Problems = list[tuple[FieldPath, str]]
Check = Callable[[Any, FieldPath, Problems], Any]
BAD: Any = object()  # a check's answer when it recorded problems


def leaf(fn: Callable[[Any], Any]) -> Check:
    """A check of one value that raises :class:`Invalid` (or ValueError) when it is bad."""

    def check(value: Any, loc: FieldPath, problems: Problems) -> Any:
        try:
            return fn(value)
        except ValueError as exc:
            problems.append((loc, str(exc)))
            return BAD

    return check


def as_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    raise Invalid(f"must be a string, got {value!r}")


def nonempty(value: Any) -> str:
    text = as_str(value)
    if not text:
        raise Invalid("must not be empty")
    return text


_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise Invalid(f"must be true or false, got {value!r}")


def whole(value: Any) -> int:
    if isinstance(value, int):  # bool too, as pydantic's lax mode
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                number = float(value.strip())
            except ValueError:
                raise Invalid(f"must be a whole number, got {value!r}") from None
            if number.is_integer():
                return int(number)
            raise Invalid(f"must be a whole number, got {value!r}") from None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Invalid("Input should be a finite number")
        if value.is_integer():
            return int(value)
    raise Invalid(f"must be a whole number, got {value!r}")


def number(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise Invalid(
                "Input should be a valid number, unable to parse string as a number"
            ) from None
    raise Invalid("Input should be a valid number")


def bounded(convert: Callable[[Any], Any], ge: float, le: float | None = None) -> Check:
    def fn(value: Any) -> Any:
        number = convert(value)
        if le is not None and not number <= le:
            raise Invalid(f"must be <= {le}, got {value!r}")
        if not number >= ge:
            raise Invalid(f"must be >= {ge}, got {value!r}")
        return number

    return leaf(fn)


def optional(check: Check) -> Check:
    def fn(value: Any, loc: FieldPath, problems: Problems) -> Any:
        return None if value is None else check(value, loc, problems)

    return fn


def tuple_of(check: Check) -> Check:
    def fn(value: Any, loc: FieldPath, problems: Problems) -> Any:
        if not isinstance(value, (list, tuple, set, frozenset)):
            problems.append((loc, f"must be a list, got {value!r}"))
            return BAD
        items = [check(item, (*loc, i), problems) for i, item in enumerate(value)]
        return BAD if any(item is BAD for item in items) else tuple(items)

    return fn


def one_or_many(each: Callable[[str], str]) -> Check:
    """A string, or a non-empty list of strings; ``each`` checks every one."""

    def fn(value: Any) -> str | tuple[str, ...]:
        if isinstance(value, str):
            return each(value)
        if not isinstance(value, (list, tuple)):
            raise Invalid(f"must be a string or a list of strings, got {value!r}")
        if not value:
            raise Invalid("give at least one address")
        for i, item in enumerate(value):
            try:
                each(as_str(item))
            except ValueError as exc:
                raise Invalid(f"[{i}]: {exc}") from None
        return tuple(value)

    return leaf(fn)


def label_map(value: Any, loc: FieldPath, problems: Problems) -> Any:
    if not isinstance(value, Mapping):
        problems.append((loc, f"must be a mapping, got {value!r}"))
        return BAD
    before = len(problems)
    for key, item in value.items():
        if not isinstance(key, str):
            problems.append(((*loc, key, "[key]"), f"must be a string, got {key!r}"))
        if not isinstance(item, str):
            problems.append(((*loc, key), f"must be a string, got {item!r}"))
    if len(problems) > before:
        return BAD
    for key in value:
        if not LABEL_KEY_RE.match(key):
            problems.append((loc, f"label key {key!r} must be letters, digits, '.', '_', '/', '-'"))
            return BAD
    return dict(value)


STR = leaf(as_str)
NONEMPTY = leaf(nonempty)
DURATION = leaf(parse_duration)
DURATION_OR_ZERO = leaf(lambda value: parse_duration(value, allow_zero=True))
PORT = bounded(whole, 0, 65535)
APP_PORT = bounded(whole, 1, 65535)
THRESHOLD = bounded(whole, 1, 100)


@dataclass(frozen=True)
class Field:
    """One field of a model: its check and its default (a factory: fresh every time)."""

    check: Check
    default: Callable[[], Any] | None = None  # None: required
    repr: bool = True


def model(cls: type[Model]) -> Check:
    def fn(value: Any, loc: FieldPath, problems: Problems) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            problems.append((loc, f"must be a mapping of fields, got {value!r}"))
            return BAD
        return cls._validate(value, loc, problems)

    return fn


class Model:
    """A frozen record whose fields are checked on construction (``Model(**fields)``)."""

    FIELDS: ClassVar[dict[str, Field]] = {}

    def __init__(self, **values: Any) -> None:
        problems: Problems = []
        self._fill(values, (), problems)
        if problems:
            raise BootstrapError([FieldError.in_file("", p, m) for p, m in problems])

    @classmethod
    def _validate(cls, data: Mapping[Any, Any], loc: FieldPath, problems: Problems) -> Any:
        obj = cls.__new__(cls)
        return obj if obj._fill(data, loc, problems) else BAD

    @classmethod
    def _prepare(cls, data: Mapping[Any, Any]) -> Mapping[Any, Any]:
        return data

    def _after(self) -> None:
        """Checks across this model's fields; raise ValueError for a problem."""

    def _fill(
        self, data: Mapping[Any, Any], loc: FieldPath, problems: Problems, *, after: bool = True
    ) -> bool:
        data = self._prepare(data)
        before = len(problems)
        for name, spec in self.FIELDS.items():
            if name in data:
                value = spec.check(data[name], (*loc, name), problems)
            elif spec.default is None:
                problems.append(((*loc, name), "is required"))
                continue
            else:
                value = spec.default()
            object.__setattr__(self, name, value)
        for key in data:
            if key not in self.FIELDS:
                problems.append(((*loc, key), self._unknown(key)))
        if len(problems) > before:
            return False
        if not after:
            return True
        try:
            self._after()
        except ValueError as exc:
            problems.append((loc, str(exc)))
            return False
        return True

    @classmethod
    def _unknown(cls, key: object) -> str:
        """``is not a field here; did you mean 'node_id'? (allowed: ...)``."""
        import difflib  # only for a bad bootstrap: the proxy does without it (memory)

        allowed = list(cls.FIELDS)
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"is not a field here{hint} (allowed: {', '.join(allowed)})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenError(f"{type(self).__name__} is frozen: instance is frozen")

    def __delattr__(self, name: str) -> None:
        raise FrozenError(f"{type(self).__name__} is frozen: instance is frozen")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.FIELDS)

    def to_data(self) -> dict[str, Any]:
        """The checked values as JSON-able data: ``type(self)(**data)`` makes an equal model
        (how :mod:`plait.proxy.bootstrap_reader` hands a bootstrap to the proxy)."""
        return {name: _plain(getattr(self, name)) for name in self.FIELDS}

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Model)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}" for name, spec in self.FIELDS.items() if spec.repr
        )
        return f"{type(self).__name__}({shown})"


def _plain(value: Any) -> Any:
    if isinstance(value, Model):
        return value.to_data()
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def const(value: Any) -> Callable[[], Any]:
    return lambda: value


def default_of(cls: type[Model]) -> Callable[[], Any]:
    return lambda: cls()
