"""Prometheus metrics: recording and the text exposition format."""

# ruff: noqa: E501  (the golden exposition has long lines by nature)

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.proxy.metrics import BUCKETS, Metrics

# --- a small validator of the text format (version 0.0.4) ------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
_VALUE = r"(?:[+-]?Inf|NaN|[+-]?[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)"
SAMPLE = re.compile(rf"^({_NAME})(?:\{{({_LABEL}(?:,{_LABEL})*)?\}})? ({_VALUE})$")
HELP = re.compile(rf"^# HELP ({_NAME}) (.*)$")
TYPE = re.compile(rf"^# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """Family -> samples; asserts the structural rules of the format on the way."""
    assert text.endswith("\n")
    families: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    types: dict[str, str] = {}
    current = ""
    for line in text[:-1].split("\n"):
        if m := HELP.match(line):
            current = m.group(1)
            assert current not in families, f"family {current} appears twice"
            families[current] = []
            continue
        if m := TYPE.match(line):
            assert m.group(1) == current, "TYPE must follow its HELP"
            types[current] = m.group(2)
            continue
        m = SAMPLE.match(line)
        assert m, f"not a valid sample line: {line!r}"
        name = m.group(1)
        allowed = {current}
        if types[current] == "histogram":
            allowed = {f"{current}_bucket", f"{current}_sum", f"{current}_count"}
        assert name in allowed, f"{name} outside its family {current}"
        labels = {k: v for k, v in LABEL.findall(m.group(2) or "")}
        families[current].append((name, labels, float(m.group(3))))
    assert list(families) == sorted(families), "families must be sorted"
    return families


# --- golden output ---------------------------------------------------------------------


GOLDEN = """\
# HELP plait_active_connections Open downstream connections.
# TYPE plait_active_connections gauge
plait_active_connections{listener="outbound"} 3
# HELP plait_request_duration_seconds Time from the first byte of the request to the end of the response, seconds.
# TYPE plait_request_duration_seconds histogram
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="200",reason="",le="0.001"} 1
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="200",reason="",le="0.0025"} 1
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="200",reason="",le="0.005"} 1
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="200",reason="",le="0.01"} 1
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="200",reason="",le="0.025"} 2
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="200",reason="",le="0.05"} 2
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="200",reason="",le="0.1"} 2
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="200",reason="",le="0.25"} 2
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="200",reason="",le="0.5"} 2
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="200",reason="",le="1"} 2
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="200",reason="",le="2.5"} 2
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="200",reason="",le="5"} 2
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="200",reason="",le="10"} 2
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="200",reason="",le="+Inf"} 2
plait_request_duration_seconds_sum{direction="outbound",source="web",destination="orders",code="200",reason=""} 0.021
plait_request_duration_seconds_count{direction="outbound",source="web",destination="orders",code="200",reason=""} 2
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="503",reason="destination_unavailable",le="0.001"} 0
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="503",reason="destination_unavailable",le="0.0025"} 0
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="503",reason="destination_unavailable",le="0.005"} 0
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="503",reason="destination_unavailable",le="0.01"} 0
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="503",reason="destination_unavailable",le="0.025"} 0
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="503",reason="destination_unavailable",le="0.05"} 0
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="503",reason="destination_unavailable",le="0.1"} 0
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="503",reason="destination_unavailable",le="0.25"} 0
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="503",reason="destination_unavailable",le="0.5"} 0
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="503",reason="destination_unavailable",le="1"} 0
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="503",reason="destination_unavailable",le="2.5"} 0
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="503",reason="destination_unavailable",le="5"} 0
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="503",reason="destination_unavailable",le="10"} 0
plait_request_duration_seconds_bucket{direction="outbound",source="web",destination="orders",code="503",reason="destination_unavailable",le="+Inf"} 1
plait_request_duration_seconds_sum{direction="outbound",source="web",destination="orders",code="503",reason="destination_unavailable"} 12
plait_request_duration_seconds_count{direction="outbound",source="web",destination="orders",code="503",reason="destination_unavailable"} 1
# HELP plait_requests_total Requests handled, by direction, source and destination service, response code and reason (the Proxy-Status error type, empty when the app answered).
# TYPE plait_requests_total counter
plait_requests_total{direction="outbound",source="web",destination="orders",code="200",reason=""} 2
plait_requests_total{direction="outbound",source="web",destination="orders",code="503",reason="destination_unavailable"} 1
# HELP plait_upstream_connections_total Connection attempts to upstream endpoints, by cluster and result (ok, failed).
# TYPE plait_upstream_connections_total counter
plait_upstream_connections_total{cluster="outbound|orders",result="failed"} 1
plait_upstream_connections_total{cluster="outbound|orders",result="ok"} 2
# HELP plait_xds_updates_total plait_xds_updates_total
# TYPE plait_xds_updates_total counter
plait_xds_updates_total{result="ack",type="cds"} 2
"""


def test_render_golden() -> None:
    m = Metrics()
    m.request("outbound", "web", "orders", 503, "destination_unavailable", 12.0)
    m.request("outbound", "web", "orders", 200, "", 0.001)  # on a bound: in that bucket
    m.request("outbound", "web", "orders", 200, "", 0.02)
    m.upstream_connect("outbound|orders", ok=True)
    m.upstream_connect("outbound|orders", ok=False)
    m.upstream_connect("outbound|orders", ok=True)
    m.set_gauge(
        "plait_active_connections", {"listener": "outbound"}, 5, help="Open downstream connections."
    )
    m.set_gauge("plait_active_connections", {"listener": "outbound"}, 3)
    m.inc("plait_xds_updates_total", {"type": "cds", "result": "ack"})
    m.inc("plait_xds_updates_total", {"result": "ack", "type": "cds"})
    assert m.render() == GOLDEN
    parse_exposition(m.render())
    assert m.requests_count("outbound", "web", "orders", 200, "") == 2
    assert m.requests_count("outbound", "web", "orders", 404, "") == 0


def test_empty_registry_renders_the_builtin_families() -> None:
    text = Metrics().render()
    families = parse_exposition(text)
    assert set(families) == {
        "plait_requests_total",
        "plait_request_duration_seconds",
        "plait_upstream_connections_total",
    }
    assert all(samples == [] for samples in families.values())


def test_label_values_are_escaped() -> None:
    m = Metrics()
    m.request("inbound", 'we"ird\\src', "line\nbreak", 200, "", 0.1)
    text = m.render()
    assert 'source="we\\"ird\\\\src",destination="line\\nbreak"' in text
    families = parse_exposition(text)
    (_, labels, value) = families["plait_requests_total"][0]
    assert labels["source"] == 'we\\"ird\\\\src' and value == 1


def test_negative_durations_count_as_zero() -> None:
    m = Metrics()
    m.request("inbound", "a", "b", 200, "", -1.0)
    buckets = parse_exposition(m.render())["plait_request_duration_seconds"]
    assert buckets[0][2] == 1  # le="0.001"
    assert ("plait_request_duration_seconds_sum", buckets[-2][1], 0.0) == buckets[-2]


def test_output_does_not_depend_on_insertion_order() -> None:
    a, b = Metrics(), Metrics()
    events = [("outbound", "x", "y", 200), ("inbound", "y", "z", 500), ("outbound", "a", "y", 200)]
    for e in events:
        a.request(*e, "", 0.1)
    for e in reversed(events):
        b.request(*e, "", 0.1)
    a.set_gauge("g", {"k": "1"}, 1)
    a.set_gauge("g", {"k": "0"}, 1)
    b.set_gauge("g", {"k": "0"}, 1)
    b.set_gauge("g", {"k": "1"}, 1)
    assert a.render() == b.render()


def test_gauges_and_counters() -> None:
    m = Metrics()
    m.set_gauge("plait_config_version", {}, 7)
    m.set_gauge("plait_endpoints", {"cluster": "c", "healthy": "true"}, 2.5)
    m.set_gauge("plait_endpoints", {"cluster": "c", "healthy": "false"}, 1)
    m.remove_gauge("plait_endpoints", {"healthy": "false", "cluster": "c"})
    m.inc("plait_bytes_total", {}, 10)
    text = m.render()
    assert "plait_config_version 7\n" in text
    assert 'plait_endpoints{cluster="c",healthy="true"} 2.5\n' in text
    assert 'healthy="false"' not in text
    assert "plait_bytes_total 10\n" in text
    m.remove_gauge("plait_endpoints")
    m.remove_gauge("never_set")
    assert "plait_endpoints{" not in m.render()
    parse_exposition(m.render())


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.set_gauge("1bad", {}, 1),
        lambda m: m.set_gauge("bad-name", {}, 1),
        lambda m: m.set_gauge("ok", {"bad:label": "v"}, 1),
        lambda m: m.set_gauge("plait_requests_total", {}, 1),
        lambda m: m.inc("c_total", {}, -1),
        lambda m: (m.set_gauge("dup", {}, 1), m.inc("dup", {})),
    ],
)
def test_invalid_uses_are_refused(call: object) -> None:
    with pytest.raises(ValueError):
        call(Metrics())  # type: ignore[operator]


def test_buckets_must_increase() -> None:
    with pytest.raises(ValueError):
        Metrics(buckets=(1.0, 0.5))
    with pytest.raises(ValueError):
        Metrics(buckets=())
    assert BUCKETS[0] == 0.001 and BUCKETS[-1] == 10


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["inbound", "outbound"]),
            st.sampled_from([200, 404, 503]),
            st.floats(min_value=0, max_value=30, allow_nan=False),
        ),
        max_size=40,
    )
)
def test_histogram_invariants(observations: list[tuple[str, int, float]]) -> None:
    m = Metrics()
    for direction, code, duration in observations:
        m.request(direction, "s", "d", code, "", duration)
    families = parse_exposition(m.render())
    by_series: dict[tuple[tuple[str, str], ...], list[tuple[str, dict[str, str], float]]] = {}
    for name, labels, value in families["plait_request_duration_seconds"]:
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        by_series.setdefault(key, []).append((name, labels, value))
    total = 0.0
    for samples in by_series.values():
        buckets = [v for n, _, v in samples if n.endswith("_bucket")]
        count = next(v for n, _, v in samples if n.endswith("_count"))
        total_sum = next(v for n, _, v in samples if n.endswith("_sum"))
        assert buckets == sorted(buckets), "buckets are cumulative"
        assert buckets[-1] == count
        assert total_sum >= 0 and math.isfinite(total_sum)
        total += count
    assert total == len(observations)
    requests = families["plait_requests_total"]
    assert sum(v for _, _, v in requests) == len(observations)


@pytest.mark.parametrize(
    ("duration", "first_le"),
    [
        (0.0, "0.001"),
        (0.001, "0.001"),
        (0.0010001, "0.0025"),
        (0.3, "0.5"),
        (1.0, "1"),
        (10.0, "10"),
        (10.5, "+Inf"),
    ],
)
def test_bucket_boundaries_are_inclusive(duration: float, first_le: str) -> None:
    m = Metrics()
    m.request("inbound", "a", "b", 200, "", duration)
    buckets = [
        (labels["le"], value)
        for name, labels, value in parse_exposition(m.render())["plait_request_duration_seconds"]
        if name.endswith("_bucket")
    ]
    les = [le for le, _ in buckets]
    i = les.index(first_le)
    assert all(v == 0 for _, v in buckets[:i]) and all(v == 1 for _, v in buckets[i:])
