"""The health threshold machine: starts unhealthy, first pass counts, then thresholds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plait.proxy.health import HealthState, _http_verdict


def run(state: HealthState, results: str) -> list[bool]:
    """Feed ``"+"`` (pass) / ``"-"`` (fail) results; the verdict after each."""
    return [state.record(r == "+") for r in results]


def test_starts_unhealthy_and_unchecked() -> None:
    state = HealthState(unhealthy_threshold=2, healthy_threshold=3)
    assert (state.healthy, state.checked) == (False, False)
    assert run(state, "-") == [False]
    assert state.checked


def test_the_first_pass_marks_healthy_at_once() -> None:
    assert run(HealthState(2, 3), "--+") == [False, False, True]


def test_unhealthy_after_threshold_consecutive_failures() -> None:
    assert run(HealthState(3, 1), "+--+---") == [True, True, True, True, True, True, False]


def test_back_to_healthy_needs_the_healthy_threshold() -> None:
    state = HealthState(unhealthy_threshold=1, healthy_threshold=3)
    assert run(state, "+-++-+++") == [True, False, False, False, False, False, False, True]


def test_thresholds_of_one_follow_every_result() -> None:
    assert run(HealthState(1, 1), "+-+-") == [True, False, True, False]


def test_thresholds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HealthState(0, 1)
    with pytest.raises(ValueError):
        HealthState(1, 0)


@given(
    unhealthy=st.integers(1, 5),
    healthy=st.integers(1, 5),
    results=st.text(alphabet="+-", max_size=40),
)
def test_verdicts_follow_the_runs(unhealthy: int, healthy: int, results: str) -> None:
    state = HealthState(unhealthy, healthy)
    verdicts = run(state, results)
    for i, verdict in enumerate(verdicts):
        seen = results[: i + 1]
        if "+" not in seen:
            assert verdict is False  # never passed: unknown counts as unhealthy
        elif seen.endswith("-" * unhealthy):
            assert verdict is False
        elif seen.endswith("+" * healthy) or (seen.count("+") == 1 and seen.endswith("+")):
            assert verdict is True
        else:  # no run long enough to flip: the verdict before stands
            assert verdict == (verdicts[i - 1] if i else False)


@pytest.mark.parametrize(
    ("line", "verdict"),
    [
        (b"HTTP/1.1 200 OK\r\n", None),
        (b"HTTP/1.0 204\r\n", None),
        (b"HTTP/1.1 302 Found\r\n", None),
        (b"HTTP/1.1 404 Not Found\r\n", "HTTP status 404"),
        (b"HTTP/1.1 503 Service Unavailable\r\n", "HTTP status 503"),
        (b"", "not an HTTP response: 'nothing'"),
        (b"SSH-2.0-OpenSSH\r\n", "not an HTTP response: 'SSH-2.0-OpenSSH\\r\\n'"),
    ],
)
def test_http_status_verdicts(line: bytes, verdict: str | None) -> None:
    assert _http_verdict(line) == verdict
