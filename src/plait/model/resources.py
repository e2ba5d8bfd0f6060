"""User-facing resources: what an operator writes in YAML and `plait apply`s.

Every document has the Kubernetes-like shape

    apiVersion: plait/v1
    kind: Service | Route | Policy
    metadata: {name: ...}
    spec: {...}

Field names in YAML are camelCase (``pathPrefix``, ``perTryTimeout``); the Python
attributes are snake_case. Models are frozen: a validated resource never changes.
Durations are written as ``"250ms"``, ``"5s"``, ``"1m"`` (or a bare number of seconds)
and stored as float seconds; dumped in JSON mode (``model_dump(mode="json")``) they turn
back into such strings, so a dumped resource reads back to an equal one.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from plait.model.names import LABEL_KEY_RE as LABEL_KEY_RE
from plait.model.names import NAME_RE as NAME_RE
from plait.model.names import SPIFFE_ID_RE as SPIFFE_ID_RE
from plait.model.names import format_duration as format_duration
from plait.model.names import parse_duration as parse_duration

API_VERSION: Final = "plait/v1"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]


class _Strict(BaseModel):
    """Base: camelCase aliases, unknown fields refused, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            "must be a DNS label: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters"
        )
    return value


class Metadata(_Strict):
    name: str
    labels: dict[str, str] = Field(default_factory=dict)

    _name = field_validator("name")(_check_name)


class ServicePort(_Strict):
    """A port clients use to address the service (``http://orders:80/``)."""

    name: str = "http"
    port: int = Field(ge=1, le=65535)


ServiceName = Annotated[str, AfterValidator(_check_name)]


class ServiceSpec(_Strict):
    protocol: Literal["http", "grpc", "tcp"] = "http"
    ports: tuple[ServicePort, ...] = (ServicePort(name="http", port=80),)
    load_balancer: Literal["least_request", "round_robin"] = "least_request"
    connect_timeout: Duration = 1.0
    # the inbound side of the service (docs/mtls.md): plaintext only, both, or mTLS only
    mtls: Literal["plaintext", "permissive", "strict"] = "plaintext"
    # the Services this service's workloads call (docs/xds.md, "Scoping"): a proxy whose
    # local services all declare it gets only those services' clusters, endpoints and
    # routes. None (absent) = calls everything; () = calls nothing. Duplicates and names of
    # missing Services are refused by the cross-resource checks (plait.model.checks).
    calls: tuple[ServiceName, ...] | None = None

    @field_validator("ports")
    @classmethod
    def _unique_ports(cls, ports: tuple[ServicePort, ...]) -> tuple[ServicePort, ...]:
        if not ports:
            raise ValueError("at least one port is required")
        seen: set[int] = set()
        for p in ports:
            if p.port in seen:
                raise ValueError(f"port {p.port} is listed twice")
            seen.add(p.port)
        return ports


class Service(_Strict):
    api_version: Literal["plait/v1"] = API_VERSION
    kind: Literal["Service"] = "Service"
    metadata: Metadata
    spec: ServiceSpec = ServiceSpec()

    @property
    def name(self) -> str:
        return self.metadata.name


class HeaderMatch(_Strict):
    """Match a request header. Exactly one of ``exact``, ``prefix``, ``present``."""

    name: str
    exact: str | None = None
    prefix: str | None = None
    present: bool | None = None
    invert: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> HeaderMatch:
        kinds = [k for k in ("exact", "prefix", "present") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of 'exact', 'prefix' or 'present'")
        return self


class RouteMatch(_Strict):
    """Path and header conditions; all given conditions must hold. Empty matches all."""

    path_prefix: str | None = None
    path: str | None = None
    headers: tuple[HeaderMatch, ...] = ()

    @model_validator(mode="after")
    def _path_kind(self) -> RouteMatch:
        if self.path_prefix is not None and self.path is not None:
            raise ValueError("give either 'path' or 'pathPrefix', not both")
        for field, value in (("pathPrefix", self.path_prefix), ("path", self.path)):
            if value is not None and not value.startswith("/"):
                raise ValueError(f"'{field}' must start with '/'")
        return self


class Backend(_Strict):
    """A weighted share of traffic to the instances whose labels include ``subset``.

    An empty subset means every instance of the service.
    """

    subset: dict[str, str] = Field(default_factory=dict)
    weight: int = Field(default=1, ge=0, le=10000)


class RetryPolicy(_Strict):
    attempts: int = Field(default=1, ge=0, le=10)
    on: tuple[Literal["connect-failure", "reset", "5xx", "gateway-error", "retriable-4xx"], ...] = (
        "connect-failure",
        "reset",
    )
    per_try_timeout: Duration | None = None


class RouteRule(_Strict):
    match: RouteMatch = RouteMatch()
    backends: tuple[Backend, ...] = (Backend(),)
    timeout: Duration = 15.0
    retries: RetryPolicy | None = None

    @field_validator("backends")
    @classmethod
    def _some_weight(cls, backends: tuple[Backend, ...]) -> tuple[Backend, ...]:
        if not backends:
            raise ValueError("at least one backend is required")
        if sum(b.weight for b in backends) <= 0:
            raise ValueError("the backend weights add up to 0: at least one must be positive")
        return backends


class RouteSpec(_Strict):
    service: str
    rules: tuple[RouteRule, ...]

    _service = field_validator("service")(_check_name)

    @field_validator("rules")
    @classmethod
    def _some_rules(cls, rules: tuple[RouteRule, ...]) -> tuple[RouteRule, ...]:
        if not rules:
            raise ValueError("at least one rule is required")
        return rules


class Route(_Strict):
    """Routing for one destination service: rules tried in order, first match wins.

    A request that matches no rule goes to every instance of the service (the same as
    having no Route at all).
    """

    api_version: Literal["plait/v1"] = API_VERSION
    kind: Literal["Route"] = "Route"
    metadata: Metadata
    spec: RouteSpec

    @property
    def name(self) -> str:
        return self.metadata.name


def _check_principal(value: str) -> str:
    if NAME_RE.match(value) or SPIFFE_ID_RE.match(value):
        return value
    raise ValueError(
        f"{value!r} is neither a service name (a DNS label) nor a SPIFFE id "
        "spiffe://<trust domain>/svc/<service>"
    )


Principal = Annotated[str, AfterValidator(_check_principal)]


class PolicySpec(_Strict):
    service: str
    mode: Literal["enforce", "audit"] = "enforce"
    allow: tuple[Principal, ...] = ()
    deny: tuple[Principal, ...] = ()

    _service = field_validator("service")(_check_name)

    @field_validator("allow", "deny")
    @classmethod
    def _unique(cls, entries: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for entry in entries:
            if entry in seen:
                raise ValueError(f"{entry!r} is listed twice")
            seen.add(entry)
        return entries


class Policy(_Strict):
    """Who may call one destination service (docs/mtls.md).

    ``allow`` lists source services (or full SPIFFE ids) that may call; empty means any
    authenticated peer. ``deny`` wins over ``allow``. ``mode: audit`` only logs what
    would be denied.
    """

    api_version: Literal["plait/v1"] = API_VERSION
    kind: Literal["Policy"] = "Policy"
    metadata: Metadata
    spec: PolicySpec

    @property
    def name(self) -> str:
        return self.metadata.name


Resource = Service | Route | Policy
KINDS: dict[str, type[Service] | type[Route] | type[Policy]] = {
    "Service": Service,
    "Route": Route,
    "Policy": Policy,
}


def subset_key(subset: dict[str, str]) -> str:
    """Stable text key for a label subset: ``version=v2,zone=a`` (sorted), '' for all."""
    return ",".join(f"{k}={subset[k]}" for k in sorted(subset))
