"""Property tests: dump/parse round trips, and garbage in -> ConfigError, never a crash."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plait.model.config import ConfigSet
from plait.model.load import (
    ConfigError,
    apply_text,
    config_from_documents,
    config_to_documents,
    parse_documents,
    resource_from_dict,
    resource_to_dict,
)
from plait.model.resources import (
    LABEL_KEY_RE,
    NAME_RE,
    Backend,
    HeaderMatch,
    Metadata,
    Policy,
    PolicySpec,
    Resource,
    RetryPolicy,
    Route,
    RouteMatch,
    RouteRule,
    RouteSpec,
    Service,
    ServicePort,
    ServiceSpec,
)

EXAMPLE = (Path(__file__).resolve().parents[3] / "examples" / "demo-mesh.yaml").read_text()
# PLAIT_HYPOTHESIS_EXAMPLES=5000 for a longer hunt than the default run.
SETTINGS = settings(
    max_examples=int(os.environ.get("PLAIT_HYPOTHESIS_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --- valid resources ------------------------------------------------------------------

names = st.from_regex(NAME_RE, fullmatch=True)
texts = st.text(max_size=20)
labels = st.dictionaries(st.from_regex(LABEL_KEY_RE, fullmatch=True), texts, max_size=3)
durations = st.one_of(
    st.sampled_from([0.001, 0.25, 1.0, 1.5, 5.0, 60.0, 90.0, 3600.0]),
    st.floats(min_value=1e-9, max_value=1e7, allow_nan=False, allow_infinity=False),
)
paths = st.text(max_size=12).map(lambda s: "/" + s)


@st.composite
def service_specs(draw: st.DrawFn) -> ServiceSpec:
    numbers = draw(st.lists(st.integers(1, 65535), min_size=1, max_size=3, unique=True))
    ports = tuple(ServicePort(name=draw(texts), port=n) for n in numbers)
    return ServiceSpec(
        protocol=draw(st.sampled_from(["http", "grpc", "tcp"])),
        ports=ports,
        load_balancer=draw(st.sampled_from(["least_request", "round_robin"])),
        connect_timeout=draw(durations),
        mtls=draw(st.sampled_from(["plaintext", "permissive", "strict"])),
    )


services = st.builds(
    Service,
    metadata=st.builds(Metadata, name=names, labels=labels),
    spec=service_specs(),
)

header_matches = st.one_of(
    st.builds(HeaderMatch, name=texts, exact=texts, invert=st.booleans()),
    st.builds(HeaderMatch, name=texts, prefix=texts, invert=st.booleans()),
    st.builds(HeaderMatch, name=texts, present=st.booleans(), invert=st.booleans()),
)
route_matches = st.one_of(
    st.builds(RouteMatch, path_prefix=st.none() | paths, headers=st.tuples(header_matches)),
    st.builds(RouteMatch, path=paths, headers=st.lists(header_matches, max_size=2).map(tuple)),
)
backend_lists = st.lists(
    st.builds(Backend, subset=labels, weight=st.integers(0, 10000)), min_size=1, max_size=3
).filter(lambda bs: sum(b.weight for b in bs) > 0)
retry_policies = st.builds(
    RetryPolicy,
    attempts=st.integers(0, 10),
    on=st.lists(
        st.sampled_from(["connect-failure", "reset", "5xx", "gateway-error", "retriable-4xx"]),
        max_size=3,
    ).map(tuple),
    per_try_timeout=st.none() | durations,
)
rules = st.builds(
    RouteRule,
    match=route_matches,
    backends=backend_lists.map(tuple),
    timeout=durations,
    retries=st.none() | retry_policies,
)
routes = st.builds(
    Route,
    metadata=st.builds(Metadata, name=names, labels=labels),
    spec=st.builds(
        RouteSpec, service=names, rules=st.lists(rules, min_size=1, max_size=3).map(tuple)
    ),
)
principals = st.one_of(
    names,
    st.builds(
        lambda td, n: f"spiffe://{td}/svc/{n}", st.sampled_from(["plait.local", "a.b"]), names
    ),
)
policies = st.builds(
    Policy,
    metadata=st.builds(Metadata, name=names, labels=labels),
    spec=st.builds(
        PolicySpec,
        service=names,
        mode=st.sampled_from(["enforce", "audit"]),
        allow=st.lists(principals, unique=True, max_size=3).map(tuple),
        deny=st.lists(principals, unique=True, max_size=3).map(tuple),
    ),
)
resource_lists = st.lists(
    st.one_of(services, routes, policies), max_size=5, unique_by=lambda r: (r.kind, r.name)
)


@SETTINGS
@given(resource_lists)
def test_dump_then_parse_gives_equal_resources(resources: list[Resource]) -> None:
    text = yaml.safe_dump_all([resource_to_dict(r) for r in resources], sort_keys=False)
    assert parse_documents(text, "dump.yaml") == resources


@SETTINGS
@given(st.one_of(services, routes, policies))
def test_dict_and_json_round_trip(resource: Resource) -> None:
    data = json.loads(json.dumps(resource_to_dict(resource)))
    assert resource_from_dict(data, "json") == resource


@SETTINGS
@given(st.lists(services, max_size=4, unique_by=lambda s: s.name))
def test_config_documents_round_trip(svcs: list[Service]) -> None:
    cfg = ConfigSet(services={s.name: s for s in svcs})
    assert config_from_documents(config_to_documents(cfg)) == cfg


# --- garbage --------------------------------------------------------------------------

TOKENS = [
    *(":", "- ", "---\n", "...\n", "[", "]", "{", "}", ",", "? ", "|", ">", "'", '"', "#"),
    *("&a ", "*a", "<<: ", "!!int ", "!!timestamp ", "!!binary ", "!!python/name:os.system "),
    *("\n", "  ", "\t", "kind: ", "Service", "Route", "apiVersion: ", "plait/v1", "metadata"),
    *("name: ", "spec:", "rules:", "backends:", "weight: ", "on: ", "2001-13-45", "1e999"),
    *("Policy", "allow: ", "deny: ", "mode: ", "mtls: ", "spiffe://td/svc/a"),
    *("9" * 5000, "-1", ".nan", "~", "true", "\x00", "\ufeff", "\u2028", "%YAML 1.1\n", "%TAG "),
]
token_soup = st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)


@st.composite
def mutated_example(draw: st.DrawFn) -> str:
    start = draw(st.integers(0, len(EXAMPLE)))
    end = draw(st.integers(start, min(len(EXAMPLE), start + 20)))
    return EXAMPLE[:start] + draw(st.one_of(st.text(max_size=10), token_soup)) + EXAMPLE[end:]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
shaped = st.fixed_dictionaries(
    {"kind": st.sampled_from(["Service", "Route", "Policy", "X"]), "metadata": json_values},
    optional={"spec": json_values, "apiVersion": json_values, "extra": json_values},
)
dumped = st.lists(st.one_of(shaped, json_values), max_size=3).map(
    lambda docs: yaml.safe_dump_all(docs)
)
garbage = st.one_of(st.text(), token_soup, mutated_example(), dumped)


def check_error(exc: ConfigError, text: str) -> None:
    assert exc.errors
    assert str(exc)
    json.dumps(exc.to_dict())
    last_line = len(re.findall("\r\n|[\r\n\x85\u2028\u2029]", text)) + 1
    for e in exc.errors:
        assert e.file == "garbage.yaml"
        assert e.document >= 1
        assert e.line is None or 1 <= e.line <= last_line, (e, last_line)
        assert e.message


@SETTINGS
@given(garbage)
def test_garbage_never_raises_anything_but_config_error(text: str) -> None:
    try:
        parse_documents(text, "garbage.yaml")
    except ConfigError as exc:
        check_error(exc, text)


@SETTINGS
@given(garbage)
def test_garbage_applied_never_raises_anything_but_config_error(text: str) -> None:
    try:
        apply_text(ConfigSet(), text, "garbage.yaml")
    except ConfigError as exc:
        check_error(exc, text)


@SETTINGS
@given(st.one_of(shaped, json_values))
def test_garbage_dicts_never_raise_anything_but_config_error(data: Any) -> None:
    try:
        resource_from_dict(data, "store")
    except ConfigError as exc:
        assert exc.errors and str(exc)
