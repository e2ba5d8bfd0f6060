"""Hypothesis strategies for the xDS tests: valid configs, registry states and nodes."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from plait.model.config import ConfigSet
from plait.model.resources import Policy, Route, Service
from plait.xds.inputs import InboundPort, Instance, NodeInfo

SERVICE_NAMES = ["a", "orders", "web", "db", "x-1", "inventory"]
LABEL_KEYS = ["version", "zone", "tier"]
LABEL_VALUES = ["v1", "v2", "a"]
RETRY_ON = ["connect-failure", "reset", "5xx", "gateway-error", "retriable-4xx"]

labels = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=3)
seconds = st.floats(min_value=0.001, max_value=120, allow_nan=False, allow_infinity=False)
paths = st.from_regex(r"/[a-z0-9/._-]{0,12}", fullmatch=True)
header_values = st.text(alphabet="abc-/ 1", max_size=5)


@st.composite
def service_docs(draw: st.DrawFn, name: str, names: list[str] | None = None) -> Service:
    """A Service; with ``names``, it may declare ``calls`` (absent, empty or some of them)."""
    spec: dict[str, Any] = {
        "protocol": draw(st.sampled_from(["http", "grpc", "tcp"])),
        "ports": [
            {"name": f"p{p}", "port": p}
            for p in draw(st.lists(st.integers(1, 65535), min_size=1, max_size=3, unique=True))
        ],
        "loadBalancer": draw(st.sampled_from(["least_request", "round_robin"])),
        "connectTimeout": draw(seconds),
        "mtls": draw(st.sampled_from(["plaintext", "permissive", "strict"])),
    }
    if names and draw(st.booleans()):
        spec["calls"] = draw(st.lists(st.sampled_from(names), unique=True))
    return Service.model_validate({"metadata": {"name": name}, "spec": spec})


@st.composite
def header_matches(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["exact", "prefix", "present"]))
    value = draw(st.booleans()) if kind == "present" else draw(header_values)
    return {
        "name": draw(st.sampled_from(["x-a", "x-b"])),
        kind: value,
        "invert": draw(st.booleans()),
    }


def _some_weight(backends: list[dict[str, object]]) -> bool:
    return any(b["weight"] != 0 for b in backends)


@st.composite
def rules(draw: st.DrawFn) -> dict[str, Any]:
    match: dict[str, Any] = {"headers": draw(st.lists(header_matches(), max_size=3))}
    path_kind = draw(st.sampled_from([None, "path", "pathPrefix"]))
    if path_kind is not None:
        match[path_kind] = draw(paths)
    backends = draw(
        st.lists(
            st.fixed_dictionaries({"subset": labels, "weight": st.integers(0, 10000)}),
            min_size=1,
            max_size=4,
        ).filter(_some_weight)
    )
    rule: dict[str, Any] = {"match": match, "backends": backends, "timeout": draw(seconds)}
    if draw(st.booleans()):
        retries: dict[str, Any] = {
            "attempts": draw(st.integers(0, 10)),
            "on": draw(st.lists(st.sampled_from(RETRY_ON), max_size=6)),
        }
        if draw(st.booleans()):
            retries["perTryTimeout"] = draw(seconds)
        rule["retries"] = retries
    return rule


@st.composite
def configs(draw: st.DrawFn) -> ConfigSet:
    names = draw(st.lists(st.sampled_from(SERVICE_NAMES), unique=True, max_size=len(SERVICE_NAMES)))
    services = {name: draw(service_docs(name, names)) for name in names}
    routed = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    routes = {
        f"route-{name}": Route.model_validate(
            {
                "metadata": {"name": f"route-{name}"},
                "spec": {"service": name, "rules": draw(st.lists(rules(), min_size=1, max_size=4))},
            }
        )
        for name in routed
    }
    protected = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    callers = st.lists(
        st.sampled_from([*SERVICE_NAMES, "spiffe://other.example/svc/batch"]),
        unique=True,
        max_size=3,
    )
    policies = {
        f"policy-{name}": Policy.model_validate(
            {
                "metadata": {"name": f"policy-{name}"},
                "spec": {
                    "service": name,
                    "mode": draw(st.sampled_from(["enforce", "audit"])),
                    "allow": draw(callers),
                    "deny": draw(callers),
                },
            }
        )
        for name in protected
    }
    return ConfigSet(services=services, routes=routes, policies=policies)


instances = st.lists(
    st.builds(
        Instance,
        service=st.sampled_from([*SERVICE_NAMES, "ghost"]),
        node_id=st.sampled_from(["n1", "n2", "n3"]),
        address=st.sampled_from(["10.0.0.1", "10.0.0.2", "::1"]),
        port=st.integers(1, 4),
        labels=labels,
        healthy=st.booleans(),
    ),
    max_size=25,
)

inbound_ports = st.builds(
    InboundPort,
    service=st.sampled_from([*SERVICE_NAMES, "unknown"]),
    address=st.sampled_from(["127.0.0.1", "10.0.0.1"]),
    port=st.integers(1, 65535),
    app_port=st.integers(1, 65535),
    outbound_port=st.integers(0, 65535),
)

nodes = st.one_of(
    st.builds(
        NodeInfo,
        node_id=st.sampled_from(["n1", "n2"]),
        plait_proxy=st.just(True),
        outbound_port=st.integers(0, 65535),
        inbound=st.lists(inbound_ports, max_size=3).map(tuple),
    ),
    st.builds(NodeInfo, node_id=st.sampled_from(["grpc-1", "envoy-1"])),
)


@st.composite
def configs_and_proxies(draw: st.DrawFn) -> tuple[ConfigSet, NodeInfo]:
    """A config and a plait proxy fronting some of its services (scoping applies when
    they all declare ``calls``), now and then also one the config does not know."""
    config = draw(configs())
    names = sorted(config.services)
    local = draw(st.lists(st.sampled_from(names), unique=True, max_size=3)) if names else []
    if draw(st.integers(0, 9)) == 0:
        local.append("unknown")
    ports = [
        InboundPort(name, "127.0.0.1", 20000 + i, app_port=9000 + i, outbound_port=i % 2)
        for i, name in enumerate(local)
    ]
    node = NodeInfo("n1", plait_proxy=True, outbound_port=15001, inbound=tuple(ports))
    return config, node


TRUST_BUNDLE = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
trust_bundles = st.sampled_from([b"", TRUST_BUNDLE])

PROPERTY_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
