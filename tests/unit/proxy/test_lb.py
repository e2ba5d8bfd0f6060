"""Load balancers: round robin and least request (power of two choices)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.proxy.lb import (
    Balancer,
    EndpointState,
    LeastRequest,
    RoundRobin,
    in_panic,
    make_balancer,
)
from plait.proxy.runtime import Endpoint


def eps(n: int, unhealthy: tuple[int, ...] = ()) -> list[Endpoint]:
    return [Endpoint(f"10.0.0.{i}", 8080, healthy=i not in unhealthy) for i in range(n)]


def addr(state: EndpointState | None) -> str:
    assert state is not None
    return state.endpoint.address


# --- EndpointState ---------------------------------------------------------------------


def test_endpoint_state_counters() -> None:
    s = EndpointState(Endpoint("10.0.0.1", 80))
    s.start()
    s.start()
    assert (s.active, s.total, s.failures) == (2, 2, 0)
    s.finish(ok=True)
    s.finish(ok=False)
    assert (s.active, s.total, s.failures) == (0, 2, 1)
    s.finish(ok=True)  # an unmatched finish never makes active negative
    assert s.active == 0
    assert s.snapshot() == {
        "address": "10.0.0.1",
        "port": 80,
        "healthy": True,
        "stale": False,
        "active": 0,
        "total": 2,
        "failures": 1,
    }
    assert "10.0.0.1:80" in repr(s)


# --- shared behaviour, both policies ---------------------------------------------------


POLICIES = ["round_robin", "least_request"]


@pytest.mark.parametrize("policy", POLICIES)
def test_no_endpoints(policy: str) -> None:
    b = make_balancer(policy, [], random.Random(0))  # type: ignore[arg-type]
    assert b.pick() is None
    assert b.snapshot() == []


@pytest.mark.parametrize("policy", POLICIES)
def test_no_healthy_endpoint(policy: str) -> None:
    b = make_balancer(policy, eps(3, unhealthy=(0, 1, 2)), random.Random(0), panic_threshold=0)  # type: ignore[arg-type]
    assert all(b.pick() is None for _ in range(10))
    assert len(b.snapshot()) == 3
    assert not b.panic


@pytest.mark.parametrize("policy", POLICIES)
def test_single_healthy_endpoint(policy: str) -> None:
    b = make_balancer(policy, eps(4, unhealthy=(0, 1, 3)), random.Random(0), panic_threshold=0)  # type: ignore[arg-type]
    assert {addr(b.pick()) for _ in range(50)} == {"10.0.0.2"}


@settings(max_examples=100, deadline=None)
@given(
    policy=st.sampled_from(POLICIES),
    health=st.lists(st.booleans(), min_size=0, max_size=8),
    loads=st.lists(st.integers(min_value=0, max_value=5), min_size=8, max_size=8),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_never_picks_an_unhealthy_endpoint(
    policy: str, health: list[bool], loads: list[int], seed: int
) -> None:
    endpoints = [Endpoint(f"10.0.0.{i}", 80, healthy=h) for i, h in enumerate(health)]
    b = make_balancer(policy, endpoints, random.Random(seed), panic_threshold=0)  # type: ignore[arg-type]
    for state, load in zip(b.states, loads, strict=False):
        state.active = load
    for _ in range(30):
        picked = b.pick()
        if not any(health):
            assert picked is None
        else:
            assert picked is not None and picked.healthy


@pytest.mark.parametrize("policy", POLICIES)
def test_update_keeps_counters_of_endpoints_that_stay(policy: str) -> None:
    b = make_balancer(policy, eps(3), random.Random(0))  # type: ignore[arg-type]
    kept = b.states[1]
    kept.start()
    kept.start()
    kept.finish(ok=False)
    removed = b.states[0]
    removed.start()
    b.update(
        [
            Endpoint("10.0.0.1", 8080, healthy=True),  # stays
            Endpoint("10.0.0.9", 8080),  # new
            Endpoint("10.0.0.2", 8080, healthy=False),  # stays, now unhealthy
        ]
    )
    assert [s.endpoint.address for s in b.states] == ["10.0.0.1", "10.0.0.9", "10.0.0.2"]
    assert b.states[0] is kept
    assert (kept.active, kept.total, kept.failures) == (1, 2, 1)
    assert b.states[1].total == 0
    if policy == "least_request":
        assert {addr(b.pick()) for _ in range(20)} == {"10.0.0.9"}  # the idle one
    assert b.states[2].healthy is False
    kept.finish(ok=True)  # equal load, so both policies use both healthy endpoints
    picked = {addr(b.pick()) for _ in range(50)}
    assert picked == {"10.0.0.1", "10.0.0.9"}
    # a request in flight on a removed endpoint still finishes on its state
    removed.finish(ok=True)
    assert removed.active == 0
    # an endpoint that leaves and returns starts from zero
    b.update(eps(1))
    assert b.states[0] is not removed and b.states[0].total == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_update_treats_port_as_part_of_identity_and_dedupes(policy: str) -> None:
    b = make_balancer(policy, [Endpoint("10.0.0.1", 80)], random.Random(0))  # type: ignore[arg-type]
    b.states[0].start()
    b.update([Endpoint("10.0.0.1", 81), Endpoint("10.0.0.1", 80), Endpoint("10.0.0.1", 80)])
    assert [(s.endpoint.port, s.active) for s in b.states] == [(81, 0), (80, 1)]


def test_make_balancer_policies() -> None:
    assert isinstance(make_balancer("round_robin", eps(2), random.Random(0)), RoundRobin)
    assert isinstance(make_balancer("least_request", eps(2), random.Random(0)), LeastRequest)
    with pytest.raises(ValueError, match="unknown load-balancing policy 'random'"):
        make_balancer("random", eps(2), random.Random(0))  # type: ignore[arg-type]


def test_policy_change_carries_counters_over() -> None:
    old = make_balancer("round_robin", eps(2), random.Random(0))
    old.states[0].start()
    new: Balancer = make_balancer("least_request", eps(3), random.Random(0), previous=old)
    assert new.states[0] is old.states[0]
    assert new.states[0].active == 1
    assert [s["total"] for s in new.snapshot()] == [1, 0, 0]


def test_snapshot_shape() -> None:
    b = make_balancer("least_request", eps(2, unhealthy=(1,)), random.Random(0))
    s = b.pick()
    assert s is not None
    s.start()
    assert b.snapshot() == [
        {
            "address": "10.0.0.0",
            "port": 8080,
            "healthy": True,
            "stale": False,
            "active": 1,
            "total": 1,
            "failures": 0,
        },
        {
            "address": "10.0.0.1",
            "port": 8080,
            "healthy": False,
            "stale": False,
            "active": 0,
            "total": 0,
            "failures": 0,
        },
    ]


# --- round robin -----------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_round_robin_cycles_evenly(n: int) -> None:
    b = RoundRobin(eps(n), random.Random(3))
    picks = [addr(b.pick()) for _ in range(n * 10)]
    assert Counter(picks) == {f"10.0.0.{i}": 10 for i in range(n)}
    # and in a fixed rotation: every window of n picks holds each endpoint once
    for k in range(0, len(picks) - n + 1):
        assert len(set(picks[k : k + n])) == n


def test_round_robin_skips_unhealthy() -> None:
    b = RoundRobin(eps(5, unhealthy=(1, 3)), random.Random(0))
    picks = Counter(addr(b.pick()) for _ in range(30))
    assert picks == {"10.0.0.0": 10, "10.0.0.2": 10, "10.0.0.4": 10}


def test_round_robin_starts_at_a_seeded_random_offset() -> None:
    firsts = {addr(RoundRobin(eps(5), random.Random(seed)).pick()) for seed in range(40)}
    assert len(firsts) > 1  # not every proxy starts on the same endpoint
    assert addr(RoundRobin(eps(5), random.Random(9)).pick()) == addr(
        RoundRobin(eps(5), random.Random(9)).pick()
    )


def test_round_robin_survives_shrinking_update() -> None:
    b = RoundRobin(eps(5), random.Random(0))
    for _ in range(4):
        b.pick()
    b.update(eps(2))
    picks = Counter(addr(b.pick()) for _ in range(10))
    assert picks == {"10.0.0.0": 5, "10.0.0.1": 5}


# --- least request (P2C) ---------------------------------------------------------------


def test_p2c_two_endpoints_always_takes_the_less_loaded() -> None:
    b = LeastRequest(eps(2), random.Random(1))
    b.states[0].active = 3
    assert {addr(b.pick()) for _ in range(100)} == {"10.0.0.1"}
    b.states[1].active = 4
    assert {addr(b.pick()) for _ in range(100)} == {"10.0.0.0"}


def test_p2c_most_loaded_never_wins_and_least_loaded_wins_two_thirds() -> None:
    b = LeastRequest(eps(3), random.Random(12345))
    for state, load in zip(b.states, (0, 10, 20), strict=True):
        state.active = load
    n = 30_000
    counts = Counter(addr(b.pick()) for _ in range(n))
    assert counts["10.0.0.2"] == 0  # loses against either other endpoint
    # the idle endpoint is in the pair with probability 2/3
    assert abs(counts["10.0.0.0"] / n - 2 / 3) < 0.02
    assert abs(counts["10.0.0.1"] / n - 1 / 3) < 0.02


def test_p2c_the_two_choices_are_distinct() -> None:
    # If a pair could be the same endpoint twice, the busy endpoint would sometimes win.
    b = LeastRequest(eps(5), random.Random(5))
    for state in b.states:
        state.active = 1
    b.states[2].active = 100
    picks = Counter(addr(b.pick()) for _ in range(20_000))
    assert picks["10.0.0.2"] == 0


@pytest.mark.parametrize("n", [2, 3, 5])
def test_p2c_ties_are_broken_at_random(n: int) -> None:
    b = LeastRequest(eps(n), random.Random(99))
    draws = 20_000
    counts = Counter(addr(b.pick()) for _ in range(draws))
    assert len(counts) == n
    for c in counts.values():
        assert abs(c / draws - 1 / n) < 0.02


def test_p2c_balances_live_load() -> None:
    # Requests that start and never finish: P2C keeps in-flight counts close together.
    b = LeastRequest(eps(4), random.Random(2024))
    for _ in range(400):
        s = b.pick()
        assert s is not None
        s.start()
    actives = [s.active for s in b.states]
    assert sum(actives) == 400
    assert max(actives) - min(actives) <= 3


def test_p2c_is_deterministic_for_a_seed() -> None:
    a = LeastRequest(eps(6), random.Random(77))
    b = LeastRequest(eps(6), random.Random(77))
    assert [addr(a.pick()) for _ in range(200)] == [addr(b.pick()) for _ in range(200)]


# --- panic threshold (docs/resilience.md) ----------------------------------------------


@pytest.mark.parametrize(
    ("healthy", "total", "threshold", "panic"),
    [
        (0, 0, 50, False),  # no endpoints: nothing to spread over
        (0, 3, 50, True),
        (1, 3, 50, True),  # 33% < 50%
        (1, 2, 50, False),  # exactly 50% is not below it
        (2, 3, 50, False),
        (3, 4, 80, True),
        (0, 3, 0, False),  # 0 switches panic off
        (4, 4, 100, False),
    ],
)
def test_in_panic(healthy: int, total: int, threshold: float, panic: bool) -> None:
    assert in_panic(healthy, total, threshold) is panic


@pytest.mark.parametrize("policy", POLICIES)
def test_panic_spreads_over_every_endpoint(policy: str) -> None:
    b = make_balancer(policy, eps(4, unhealthy=(0, 1, 3)), random.Random(0))  # type: ignore[arg-type]
    assert b.panic
    assert {addr(b.pick()) for _ in range(400)} == {f"10.0.0.{i}" for i in range(4)}


@pytest.mark.parametrize("policy", POLICIES)
def test_all_unhealthy_is_panic_not_none(policy: str) -> None:
    b = make_balancer(policy, eps(2, unhealthy=(0, 1)), random.Random(0))  # type: ignore[arg-type]
    assert b.panic and b.pick() is not None


@pytest.mark.parametrize("policy", POLICIES)
def test_panic_ends_when_health_returns(policy: str) -> None:
    b = make_balancer(policy, eps(3, unhealthy=(0, 1)), random.Random(0))  # type: ignore[arg-type]
    assert b.panic
    b.update(eps(3, unhealthy=(0,)))
    assert not b.panic
    assert {addr(b.pick()) for _ in range(100)} == {"10.0.0.1", "10.0.0.2"}


@settings(max_examples=150, deadline=None)
@given(
    policy=st.sampled_from(POLICIES),
    health=st.lists(st.booleans(), min_size=1, max_size=10),
    threshold=st.sampled_from([0.0, 25.0, 50.0, 100.0]),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_picks_follow_the_panic_rule(
    policy: str, health: list[bool], threshold: float, seed: int
) -> None:
    endpoints = [Endpoint(f"10.0.0.{i}", 80, healthy=h) for i, h in enumerate(health)]
    b = make_balancer(policy, endpoints, random.Random(seed), panic_threshold=threshold)  # type: ignore[arg-type]
    panic = sum(health) * 100.0 < threshold * len(health)
    assert b.panic is panic
    for _ in range(30):
        picked = b.pick()
        if panic:
            assert picked is not None
        elif not any(health):
            assert picked is None
        else:
            assert picked is not None and picked.healthy
