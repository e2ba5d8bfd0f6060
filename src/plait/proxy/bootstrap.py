"""The proxy's bootstrap file (``plait proxy --config bootstrap.yaml``), docs/internals.md.

:func:`load_bootstrap` reads the YAML, validates it against the frozen models below and
either returns a :class:`Bootstrap` or raises :class:`BootstrapError` listing every
problem with file, field and line, in the config loader's words and format
(:mod:`plait.model.errors`), e.g.::

    bootstrap.yaml: services[0].health_check.interval: expected a duration such as
    '250ms' or '5s', got 'soon' (line 14)

Field names are snake_case, as the file spells them. Durations are ``"250ms"``/``"1s"``
strings or numbers of seconds (:func:`plait.model.names.parse_duration`). Ports may be 0
("any free port"); :func:`node_metadata` reports the ports actually bound.

The validation is written out rather than done by pydantic: the proxy process does not
import pydantic (about 11 MB of its memory; docs/internals.md, "Memory"). The models are
declared on :mod:`plait.proxy.bootstrap_fields`, which keeps pydantic's lax coercions
where a YAML file could rely on them (``"9001"`` for a port, ``yes`` for ``tcp``) and
reports every problem at once, fields in declaration order, then unknown fields, then the
checks across a model's fields.

PyYAML (with plait's YAML dialect, :mod:`plait.model.source`) is imported by
:func:`parse_bootstrap` only, not with this module: the proxy process reads its file
through :mod:`plait.proxy.bootstrap_reader`, in a child, and keeps about 1.4 MB less.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from plait.ca.token_format import token_id_of
from plait.model.errors import FieldError, format_path
from plait.model.errors import Path as FieldPath
from plait.model.names import NAME_RE
from plait.proxy.bootstrap_fields import (
    APP_PORT,
    DURATION,
    DURATION_OR_ZERO,
    NONEMPTY,
    PORT,
    STR,
    THRESHOLD,
    BootstrapError,
    Field,
    Invalid,
    Model,
    Problems,
    as_bool,
    as_str,
    bounded,
    const,
    default_of,
    label_map,
    leaf,
    model,
    number,
    one_or_many,
    optional,
    tuple_of,
)

__all__ = [
    "NODE_ID_RE",
    "Address",
    "AppAddress",
    "Bootstrap",
    "BootstrapError",
    "BoundPorts",
    "ControlPlane",
    "Guard",
    "HealthCheck",
    "LocalService",
    "cross_checks",
    "load_bootstrap",
    "node_metadata",
    "parse_bootstrap",
]

NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def _check_host_port(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise Invalid(f"expected host:port such as 127.0.0.1:18000, got {value!r}")
    return value


def _check_http_url(value: str) -> str:
    url = urlsplit(value)
    if url.scheme != "http" or not url.hostname:
        raise Invalid(f"expected a URL such as http://127.0.0.1:18001, got {value!r}")
    return value


def _service_name(value: Any) -> str:
    name = as_str(value)
    if not NAME_RE.match(name):
        raise Invalid(
            "must be a DNS label: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters"
        )
    return name


def _node_id(value: Any) -> str:
    node_id = as_str(value)
    if not NODE_ID_RE.match(node_id):
        raise Invalid(
            f"must be 1-128 letters, digits, '.', '_', ':' or '-' (no spaces), got {node_id!r}"
        )
    return node_id


def _health_path(value: Any) -> str:
    path = as_str(value)
    if not path.startswith("/"):
        raise Invalid(f"must be a path starting with '/', got {path!r}")
    return path


def _token(value: Any) -> str:
    # never echo the value: it is a secret
    text = as_str(value).strip()
    if token_id_of(text) is None:
        raise Invalid(
            "is not a join token: expected 'plait-jt.<id>.<secret>' (from 'plait token create')"
        )
    return text


# -- the models ---------------------------------------------------------------------------


class Address(Model):
    address: str
    port: int
    FIELDS: ClassVar[dict[str, Field]] = {
        "address": Field(NONEMPTY, const("127.0.0.1")),
        "port": Field(PORT, const(0)),
    }


class AppAddress(Model):
    """Where the local app listens: a real port (no 0)."""

    address: str
    port: int
    FIELDS: ClassVar[dict[str, Field]] = {
        "address": Field(NONEMPTY, const("127.0.0.1")),
        "port": Field(APP_PORT),
    }


class ControlPlane(Model):
    """One control plane, or several replicas: each field is a string or a list of them."""

    xds: str | tuple[str, ...]  # host:port of the ADS server(s)
    api: str | tuple[str, ...]  # http://host:port of the HTTP API(s)
    FIELDS: ClassVar[dict[str, Field]] = {
        "xds": Field(one_or_many(_check_host_port)),
        "api": Field(one_or_many(_check_http_url)),
    }

    @property
    def xds_addresses(self) -> tuple[str, ...]:
        return (self.xds,) if isinstance(self.xds, str) else self.xds

    @property
    def api_urls(self) -> tuple[str, ...]:
        return (self.api,) if isinstance(self.api, str) else self.api


class Guard(Model):
    """The proxy-side push guard and panic threshold (docs/resilience.md)."""

    confirm_after: float  # an emptying EDS update must arrive again after this
    panic_threshold: float  # percent healthy
    FIELDS: ClassVar[dict[str, Field]] = {
        "confirm_after": Field(DURATION, const(30.0)),
        "panic_threshold": Field(bounded(number, 0.0, 100.0), const(50.0)),
    }


class HealthCheck(Model):
    """An active check of the local app: ``http: /path`` (2xx/3xx) or ``tcp: true``."""

    http: str | None
    tcp: bool | None
    interval: float
    timeout: float
    unhealthy_threshold: int
    healthy_threshold: int
    FIELDS: ClassVar[dict[str, Field]] = {
        "http": Field(optional(leaf(_health_path)), const(None)),
        "tcp": Field(optional(leaf(as_bool)), const(None)),
        "interval": Field(DURATION, const(1.0)),
        "timeout": Field(DURATION, const(1.0)),
        "unhealthy_threshold": Field(THRESHOLD, const(2)),
        "healthy_threshold": Field(THRESHOLD, const(1)),
    }

    def _after(self) -> None:
        if (self.http is None) == (not self.tcp):
            raise Invalid("give exactly one of 'http: /path' or 'tcp: true'")


class LocalService(Model):
    """A local service: its app, its inbound listener, its own outbound listener
    (``outbound|<name>``: requests leaving with this service's identity, docs/mtls.md) and
    the join token that gets it its first certificate (``token`` inline, or
    ``token_file``, read when the proxy needs it)."""

    name: str
    labels: dict[str, str]
    app: AppAddress
    inbound: Address
    outbound: Address
    health_check: HealthCheck | None
    token: str | None
    token_file: str | None
    FIELDS: ClassVar[dict[str, Field]] = {
        "name": Field(leaf(_service_name)),
        "labels": Field(label_map, dict),
        "app": Field(model(AppAddress)),
        "inbound": Field(model(Address), default_of(Address)),
        "outbound": Field(model(Address), default_of(Address)),
        "health_check": Field(optional(model(HealthCheck)), const(None)),
        "token": Field(optional(leaf(_token)), const(None), repr=False),
        "token_file": Field(optional(NONEMPTY), const(None)),
    }

    def _after(self) -> None:
        if self.token is not None and self.token_file is not None:
            raise Invalid("give 'token' or 'token_file', not both")


class Bootstrap(Model):
    node_id: str
    control_plane: ControlPlane
    admin: Address
    outbound: Address
    services: tuple[LocalService, ...]
    heartbeat_interval: float
    lease_ttl: float
    drain_time: float  # on SIGTERM: deregister, keep serving this long so peers drop us
    data_dir: str  # "" = .plait/proxy-<node_id>
    guard: Guard
    access_log: str  # "-" = stdout
    ready_file: str | None
    FIELDS: ClassVar[dict[str, Field]] = {
        "node_id": Field(leaf(_node_id)),
        "control_plane": Field(model(ControlPlane)),
        "admin": Field(model(Address), default_of(Address)),
        "outbound": Field(model(Address), default_of(Address)),
        "services": Field(tuple_of(model(LocalService)), tuple),
        "heartbeat_interval": Field(DURATION, const(1.0)),
        "lease_ttl": Field(DURATION, const(10.0)),
        "drain_time": Field(DURATION_OR_ZERO, const(2.0)),  # 0: stop without draining
        "data_dir": Field(STR, const("")),
        "guard": Field(model(Guard), default_of(Guard)),
        "access_log": Field(STR, const("-")),
        "ready_file": Field(optional(STR), const(None)),
    }

    @classmethod
    def _prepare(cls, data: Mapping[Any, Any]) -> Mapping[Any, Any]:
        if not data.get("data_dir"):
            node_id = data.get("node_id")
            if isinstance(node_id, str):
                return {**data, "data_dir": f".plait/proxy-{node_id}"}
        return data

    def _after(self) -> None:
        problems = cross_checks(self)
        if problems:
            raise Invalid("; ".join(f"{format_path(p)}: {m}" for p, m in problems))

    @classmethod
    def model_validate(cls, data: Mapping[str, Any]) -> Bootstrap:
        """Validate a mapping (cross checks included); :class:`BootstrapError` if bad."""
        return cls(**data)

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
    # PyYAML only here: the proxy reads its file in a child (plait.proxy.bootstrap_reader)
    from plait.model.source import Where, read_documents

    documents, errors = read_documents(text, filename)
    if errors:
        raise BootstrapError([_top_level(e) for e in errors])
    if len(documents) != 1 or not isinstance(documents[0].data, Mapping):
        message = "must hold one YAML mapping with node_id, control_plane, ... (docs/internals.md)"
        raise BootstrapError([_error(filename, message, line=1)])
    where = Where(filename, 0, documents[0].where.node)
    problems: Problems = []
    boot = Bootstrap.__new__(Bootstrap)
    # the cross checks follow, each problem with its own line
    if not boot._fill(documents[0].data, (), problems, after=False):
        raise BootstrapError([where.error(p, m) for p, m in problems])
    problems = cross_checks(boot)
    if problems:
        raise BootstrapError([where.error(p, m) for p, m in problems])
    return boot


def _error(filename: str, message: str, line: int | None = None) -> FieldError:
    return FieldError(filename, 0, None, None, "", line, message)


def _top_level(error: FieldError) -> FieldError:
    return FieldError(error.file, 0, None, None, error.field, error.line, error.message)


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
