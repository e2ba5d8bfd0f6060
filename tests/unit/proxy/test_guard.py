"""The proxy-side push guard's hold/confirm state machine (docs/resilience.md)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from plait.proxy.guard import EndpointGuard
from plait.proxy.runtime import Cluster, Endpoint, ProxyConfig
from plait.xds.types import ENDPOINT

A = Endpoint("10.0.0.1", 80)
B = Endpoint("10.0.0.2", 80)
C = Endpoint("10.0.0.3", 80)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cfg(version: str, endpoints: tuple[Endpoint, ...], *, cluster: bool = True) -> ProxyConfig:
    clusters = {"outbound|orders": Cluster("outbound|orders")} if cluster else {}
    eps = {"outbound|orders": endpoints} if cluster else {}
    return ProxyConfig(clusters=clusters, endpoints=eps, versions={ENDPOINT: version})


def served(config: ProxyConfig) -> tuple[Endpoint, ...]:
    return config.endpoints.get("outbound|orders", ())


def guard() -> tuple[EndpointGuard, Clock]:
    clock = Clock()
    return EndpointGuard(clock, confirm_after=30.0), clock


def test_normal_updates_pass_through() -> None:
    g, _ = guard()
    assert served(g.filter(cfg("1", (A, B)))) == (A, B)
    assert served(g.filter(cfg("2", (B,)))) == (B,)
    assert g.holds == {}


def test_an_emptying_update_keeps_the_old_endpoints_stale() -> None:
    g, _ = guard()
    g.filter(cfg("1", (A, B)))
    out = served(g.filter(cfg("2", ())))
    assert out == (replace(A, stale=True), replace(B, stale=True))
    assert "outbound|orders" in g.view()


def test_new_endpoints_are_applied_alongside_the_stale_ones() -> None:
    g, _ = guard()
    g.filter(cfg("1", (A,)))
    sick = replace(C, healthy=False)
    assert served(g.filter(cfg("2", (sick,)))) == (sick, replace(A, stale=True))


def test_confirmed_by_the_same_update_after_the_hold() -> None:
    g, clock = guard()
    g.filter(cfg("1", (A,)))
    g.filter(cfg("2", ()))
    clock.now += 10
    assert served(g.filter(cfg("3", ()))) == (replace(A, stale=True),)  # too early
    clock.now += 20
    assert served(g.filter(cfg("4", ()))) == ()  # 30 s after the hold started
    assert g.holds == {}


def test_another_type_reapplying_the_config_is_no_confirmation() -> None:
    g, clock = guard()
    g.filter(cfg("1", (A,)))
    g.filter(cfg("2", ()))
    clock.now += 60
    assert served(g.filter(cfg("2", ()))) == (replace(A, stale=True),)  # same EDS version


def test_cds_removing_the_cluster_confirms_at_once() -> None:
    g, _ = guard()
    g.filter(cfg("1", (A,)))
    g.filter(cfg("2", ()))
    out = g.filter(cfg("2", (), cluster=False))
    assert out.endpoints == {} and g.holds == {}
    assert served(g.filter(cfg("3", ()))) == ()  # back, empty: nothing to keep


def test_healthy_endpoints_again_end_the_hold() -> None:
    g, _ = guard()
    g.filter(cfg("1", (A,)))
    g.filter(cfg("2", ()))
    assert served(g.filter(cfg("3", (B,)))) == (B,)
    assert g.holds == {}


def test_an_empty_cluster_staying_empty_is_not_held() -> None:
    g, _ = guard()
    assert served(g.filter(cfg("1", ()))) == ()
    assert g.holds == {}


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sets(st.sampled_from([A, B, C, replace(C, healthy=False)])),
            st.floats(min_value=0, max_value=40),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_never_empties_a_healthy_cluster_without_confirmation(
    steps: list[tuple[set[Endpoint], float]],
) -> None:
    g, clock = guard()
    previous: tuple[Endpoint, ...] = ()
    for i, (endpoints, dt) in enumerate(steps):
        clock.now += dt
        new = tuple(sorted(endpoints, key=lambda e: (e.address, e.healthy)))
        hold = g.holds.get("outbound|orders")
        out = served(g.filter(cfg(str(i), new)))
        assert set(new) <= set(out)  # what the control plane sends is always applied
        if any(e.healthy for e in previous) and not out:
            # emptied: only as the confirmation of a hold old enough (an endpoint the
            # update itself marks unhealthy stays, and panic mode spreads load over it)
            assert hold is not None and clock.now - hold.since >= 30.0
        if g.holds:
            assert any(e.healthy and e.stale for e in out)
        previous = out
