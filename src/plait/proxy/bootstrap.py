"""The proxy's bootstrap file (``plait proxy --config bootstrap.yaml``), docs/internals.md.

:func:`load_bootstrap` reads the YAML, validates it with the frozen pydantic models below
and either returns a :class:`Bootstrap` or raises :class:`BootstrapError` listing every
problem with file, field and line, in the config loader's words and format
(:mod:`plait.model.errors`), e.g.::

    bootstrap.yaml: services[0].health_check.interval: expected a duration such as
    '250ms' or '5s', got 'soon' (line 14)

Field names are snake_case, as the file spells them. Durations are ``"250ms"``/``"1s"``
strings or numbers of seconds (:data:`plait.model.resources.Duration`). Ports may be 0
("any free port"); :func:`node_metadata` reports the ports actually bound.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from plait.ca.tokens import token_id_of
from plait.model.errors import ConfigError, FieldError, format_path
from plait.model.errors import Path as FieldPath
from plait.model.resources import LABEL_KEY_RE, NAME_RE, Duration
from plait.model.source import Where, read_documents

NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_DEFER_CROSS_CHECKS = "defer_cross_checks"


class BootstrapError(ConfigError, ValueError):
    """The bootstrap file is unreadable or invalid; ``errors`` lists every problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Address(_Strict):
    address: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=0, ge=0, le=65535)


class AppAddress(_Strict):
    """Where the local app listens: a real port (no 0)."""

    address: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(ge=1, le=65535)


def _one_or_many(value: str | tuple[str, ...], check: Any) -> str | tuple[str, ...]:
    if isinstance(value, str):
        return str(check(value))
    if not value:
        raise ValueError("give at least one address")
    for i, item in enumerate(value):
        try:
            check(item)
        except ValueError as exc:
            raise ValueError(f"[{i}]: {exc}") from None
    return value


def _check_host_port(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected host:port such as 127.0.0.1:18000, got {value!r}")
    return value


def _check_http_url(value: str) -> str:
    url = urlsplit(value)
    if url.scheme != "http" or not url.hostname:
        raise ValueError(f"expected a URL such as http://127.0.0.1:18001, got {value!r}")
    return value


class ControlPlane(_Strict):
    """One control plane, or several replicas: each field is a string or a list of them."""

    xds: str | tuple[str, ...]  # host:port of the ADS server(s)
    api: str | tuple[str, ...]  # http://host:port of the HTTP API(s)

    @field_validator("xds")
    @classmethod
    def _host_port(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        return _one_or_many(value, _check_host_port)

    @field_validator("api")
    @classmethod
    def _http_url(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        return _one_or_many(value, _check_http_url)

    @property
    def xds_addresses(self) -> tuple[str, ...]:
        return (self.xds,) if isinstance(self.xds, str) else self.xds

    @property
    def api_urls(self) -> tuple[str, ...]:
        return (self.api,) if isinstance(self.api, str) else self.api


class Guard(_Strict):
    """The proxy-side push guard and panic threshold (docs/resilience.md)."""

    confirm_after: Duration = 30.0  # an emptying EDS update must arrive again after this
    panic_threshold: float = Field(default=50.0, ge=0.0, le=100.0)  # percent healthy


class HealthCheck(_Strict):
    """An active check of the local app: ``http: /path`` (2xx/3xx) or ``tcp: true``."""

    http: str | None = None
    tcp: bool | None = None
    interval: Duration = 1.0
    timeout: Duration = 1.0
    unhealthy_threshold: int = Field(default=2, ge=1, le=100)
    healthy_threshold: int = Field(default=1, ge=1, le=100)

    @field_validator("http")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"must be a path starting with '/', got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.http is None) == (not self.tcp):
            raise ValueError("give exactly one of 'http: /path' or 'tcp: true'")
        return self


class LocalService(_Strict):
    """A local service: its app, its inbound listener, its own outbound listener
    (``outbound|<name>``: requests leaving with this service's identity, docs/mtls.md) and
    the join token that gets it its first certificate (``token`` inline, or
    ``token_file``, read when the proxy needs it)."""

    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    app: AppAddress
    inbound: Address = Address()
    outbound: Address = Address()
    health_check: HealthCheck | None = None
    token: str | None = Field(default=None, repr=False)
    token_file: str | None = Field(default=None, min_length=1)

    @field_validator("token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        # never echo the value: it is a secret
        if value is not None and token_id_of(value.strip()) is None:
            raise ValueError(
                "is not a join token: expected 'plait-jt.<id>.<secret>' (from 'plait token create')"
            )
        return value.strip() if value is not None else None

    @model_validator(mode="after")
    def _one_token(self) -> Self:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give 'token' or 'token_file', not both")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(
                "must be a DNS label: lowercase letters, digits and '-', "
                "starting and ending with a letter or digit, at most 63 characters"
            )
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key in labels:
            if not LABEL_KEY_RE.match(key):
                raise ValueError(f"label key {key!r} must be letters, digits, '.', '_', '/', '-'")
        return labels


class Bootstrap(_Strict):
    node_id: str
    control_plane: ControlPlane
    admin: Address = Address()
    outbound: Address = Address()
    services: tuple[LocalService, ...] = ()
    heartbeat_interval: Duration = 1.0
    lease_ttl: Duration = 10.0
    # on SIGTERM: deregister, keep serving this long so peers drop us, then close
    drain_time: Duration = 2.0
    data_dir: str = ""  # "" = .plait/proxy-<node_id>
    guard: Guard = Guard()
    access_log: str = "-"  # "-" = stdout
    ready_file: str | None = None

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str) -> str:
        if not NODE_ID_RE.match(value):
            raise ValueError(
                f"must be 1-128 letters, digits, '.', '_', ':' or '-' (no spaces), got {value!r}"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_data_dir(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and not data.get("data_dir"):
            node_id = data.get("node_id")
            if isinstance(node_id, str):
                return {**data, "data_dir": f".plait/proxy-{node_id}"}
        return data

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Self:
        if not (info.context or {}).get(_DEFER_CROSS_CHECKS):
            problems = cross_checks(self)
            if problems:
                raise ValueError("; ".join(f"{format_path(p)}: {m}" for p, m in problems))
        return self

    def service(self, name: str) -> LocalService:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)


def cross_checks(boot: Bootstrap) -> list[tuple[FieldPath, str]]:
    """Checks across fields: unique service names and fixed ports, lease vs heartbeat."""
    problems: list[tuple[FieldPath, str]] = []
    names: set[str] = set()
    ports: dict[tuple[str, int], str] = {}
    listeners: list[tuple[FieldPath, Address]] = [(("admin",), boot.admin)]
    listeners.append((("outbound",), boot.outbound))
    for i, svc in enumerate(boot.services):
        if svc.name in names:
            problems.append((("services", i, "name"), f"service {svc.name!r} is listed twice"))
        names.add(svc.name)
        listeners.append((("services", i, "inbound"), svc.inbound))
        listeners.append((("services", i, "outbound"), svc.outbound))
    for path, addr in listeners:
        if addr.port == 0:
            continue
        key = (addr.address, addr.port)
        if key in ports:
            message = f"{addr.address}:{addr.port} is already used by {ports[key]}"
            problems.append(((*path, "port"), message))
        ports[key] = format_path(path)
    if boot.lease_ttl <= boot.heartbeat_interval:
        problems.append((("lease_ttl",), "must be longer than heartbeat_interval"))
    return problems


def load_bootstrap(path: str | os.PathLike[str]) -> Bootstrap:
    """Read and validate a bootstrap file; raises :class:`BootstrapError` if it is bad."""
    filename = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BootstrapError([_error(filename, f"cannot read the bootstrap file: {exc}")]) from None
    return parse_bootstrap(text, filename)


def parse_bootstrap(text: str, filename: str = "<bootstrap>") -> Bootstrap:
    documents, errors = read_documents(text, filename)
    if errors:
        raise BootstrapError([_top_level(e) for e in errors])
    if len(documents) != 1 or not isinstance(documents[0].data, Mapping):
        message = "must hold one YAML mapping with node_id, control_plane, ... (docs/internals.md)"
        raise BootstrapError([_error(filename, message, line=1)])
    where = Where(filename, 0, documents[0].where.node)
    try:
        boot = Bootstrap.model_validate(documents[0].data, context={_DEFER_CROSS_CHECKS: True})
    except ValidationError as exc:
        raise BootstrapError(
            [where.error(tuple(e["loc"]), _message(e)) for e in exc.errors(include_url=False)]
        ) from None
    problems = cross_checks(boot)
    if problems:
        raise BootstrapError([where.error(p, m) for p, m in problems])
    return boot


def _error(filename: str, message: str, line: int | None = None) -> FieldError:
    return FieldError(filename, 0, None, None, "", line, message)


def _top_level(error: FieldError) -> FieldError:
    return FieldError(error.file, 0, None, None, error.field, error.line, error.message)


_MESSAGES: dict[str, str] = {
    "missing": "is required",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping of fields",
    "model_attributes_type": "must be a mapping of fields",
    "tuple_type": "must be a list",
}


_BOUNDS = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">"}


def _message(e: ErrorDetails) -> str:
    ctx = e.get("ctx", {})
    if e["type"] == "value_error":
        return str(ctx.get("error", e["msg"]))
    if e["type"] in _BOUNDS:
        limit = next(iter(ctx.values()), "?")
        return f"must be {_BOUNDS[e['type']]} {limit}, got {e['input']!r}"
    if e["type"] == "string_too_short":
        return "must not be empty"
    if e["type"] == "extra_forbidden":
        return _unknown_field(tuple(e["loc"]))
    fixed = _MESSAGES.get(e["type"])
    if fixed is None:
        return str(e["msg"])
    if e["type"] == "missing":
        return fixed
    return f"{fixed}, got {e['input']!r}"


def _unknown_field(loc: FieldPath) -> str:
    """``is not a field here; did you mean 'node_id'? (allowed: ...)``."""
    model: object = Bootstrap
    for part in loc[:-1]:
        if isinstance(part, str):
            model = _field_model(model, part)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return "is not a bootstrap field (docs/internals.md lists them)"
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"is not a field here{hint} (allowed: {', '.join(allowed)})"


def _field_model(model: object, name: str) -> object:
    """The model class (or None) of field ``name``, through ``X | None`` and ``tuple[X, ...]``."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    info = model.model_fields.get(name)
    if info is None:
        return None
    args = [a for a in get_args(info.annotation) if a is not type(None) and a is not Ellipsis]
    return args[0] if args else info.annotation


# -- what the proxy tells the control plane -----------------------------------------------


@dataclass(frozen=True)
class BoundPorts:
    """The addresses the proxy's listeners actually bound (a bootstrap may ask for 0)."""

    outbound: tuple[str, int]
    inbound: Mapping[str, tuple[str, int]]  # local service name -> (address, port)
    admin: tuple[str, int] | None = None
    # local service name -> its own outbound listener ``outbound|<svc>`` (docs/mtls.md)
    service_outbound: Mapping[str, tuple[str, int]] = field(default_factory=dict)


def node_metadata(boot: Bootstrap, bound: BoundPorts) -> dict[str, Any]:
    """``Node.metadata`` for a plait proxy (docs/xds.md, "Node metadata")."""
    inbound = []
    for svc in boot.services:
        if svc.name not in bound.inbound:
            raise ValueError(f"no bound inbound listener for service {svc.name!r}")
        address, port = bound.inbound[svc.name]
        entry: dict[str, Any] = {
            "service": svc.name,
            "address": address,
            "port": port,
            "app_address": svc.app.address,
            "app_port": svc.app.port,
        }
        if svc.name in bound.service_outbound:
            out_address, out_port = bound.service_outbound[svc.name]
            entry["outbound_address"] = out_address
            entry["outbound_port"] = out_port
        inbound.append(entry)
    return {
        "plait_proxy": True,
        "outbound": {"address": bound.outbound[0], "port": bound.outbound[1]},
        "inbound": inbound,
    }
