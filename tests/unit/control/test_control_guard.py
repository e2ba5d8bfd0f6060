"""The push guard (plait.control.guard): what is held, what passes, approve/discard."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.control.guard import REGISTRY, Guard, GuardSettings, HoldNotFound, instance_key
from plait.xds.inputs import Instance


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def inst(service: str, n: int, healthy: bool = True) -> Instance:
    return Instance(
        service=service,
        node_id=f"node-{service}-{n}",
        address="10.0.0.1",
        port=9000 + n,
        labels={},
        healthy=healthy,
    )


def fleet(**sizes: int) -> list[Instance]:
    return [inst(svc, i) for svc, size in sizes.items() for i in range(size)]


def healthy(served: list[Instance], service: str) -> int:
    return sum(1 for i in served if i.service == service and i.healthy)


def make(
    initial: list[Instance], services: set[str] | None = None, **kw: float
) -> tuple[Guard, Clock]:
    clock = Clock()
    names = services if services is not None else {i.service for i in initial}
    return Guard(GuardSettings(**kw), clock, served=initial, services=names), clock  # type: ignore[arg-type]


# -- the thresholds --------------------------------------------------------------------


def test_emptying_a_service_is_held_with_a_reason_and_keeps_serving() -> None:
    start = fleet(orders=4, inventory=4, frontend=4)
    guard, _ = make(start)
    truth = [i for i in start if i.service != "orders"]
    served = guard.propose(truth)
    assert healthy(served, "orders") == 4
    holds = {h.scope: h for h in guard.holds()}
    assert "orders" in holds
    assert holds["orders"].reason.startswith(
        "would remove 4 of 4 healthy endpoints of service orders (100%)"
    )
    assert len(holds["orders"].kept) == 4
    assert guard.held_total >= 1


def test_half_is_allowed_more_than_half_is_held() -> None:
    start = fleet(orders=4, inventory=10)
    guard, _ = make(start)
    two_gone = [i for i in start if i not in start[:2]]
    served = guard.propose(two_gone)
    assert healthy(served, "orders") == 2 and not guard.holds()
    guard2, _ = make(start)
    three_gone = [i for i in start if i not in start[:3]]
    served = guard2.propose(three_gone)
    assert healthy(served, "orders") == 4
    (hold,) = guard2.holds()
    assert "3 of 4" in hold.reason and "75% > 50%" in hold.reason


def test_unhealthy_counts_as_removed() -> None:
    start = fleet(orders=4, inventory=10)
    guard, _ = make(start)
    truth = [dataclasses.replace(i, healthy=False) if i.service == "orders" else i for i in start]
    served = guard.propose(truth)
    assert healthy(served, "orders") == 4
    assert [h.scope for h in guard.holds()] == ["orders"]


def test_slow_drain_within_the_window_is_caught() -> None:
    start = fleet(orders=4, inventory=10)
    guard, clock = make(start)
    truth = list(start)
    for step in range(3):  # one instance every 10 s
        clock.now += 10
        truth = [i for i in truth if i != start[step]]
        guard.propose(truth)
    # 4 -> 3 -> 2 passed; the third step is 3 of 4 within 60 s
    assert healthy(guard.served(), "orders") == 2
    (hold,) = guard.holds()
    assert "3 of 4" in hold.reason and "within 60s" in hold.reason


def test_slow_drain_slower_than_the_window_passes() -> None:
    start = fleet(orders=4, inventory=10)
    guard, clock = make(start)
    truth = list(start)
    for step in range(3):
        clock.now += 61
        truth = [i for i in truth if i != start[step]]
        guard.propose(truth)
    assert healthy(guard.served(), "orders") == 1
    assert not guard.holds()


def test_registry_wide_loss_is_held() -> None:
    # twelve services of three: losing one instance of each is 33% of each service
    # (allowed) but 12 of 36 of the registry (33% > 30%)
    start = fleet(**{f"s{n}": 3 for n in range(12)})
    guard, _ = make(start)
    truth = [i for i in start if i.port != 9000]
    served = guard.propose(truth)
    assert len(served) == 36
    (hold,) = guard.holds()
    assert hold.scope == REGISTRY
    assert "12 of 36 healthy endpoints of the registry" in hold.reason


def test_single_instance_loss_in_a_small_registry_passes() -> None:
    start = fleet(a=1, b=1, c=1)
    start += [inst("a", 1)]
    guard, _ = make(start)
    served = guard.propose([i for i in start if i != start[-1]])  # 4 -> 3 (25%)
    assert len(served) == 3 and not guard.holds()
    guard, _ = make(fleet(a=2, b=1))
    served = guard.propose(fleet(a=1, b=1))  # 3 -> 2 is 33%, but one instance
    assert len(served) == 2 and not guard.holds()


def test_one_instance_restart_is_held_until_replaced_then_dropped() -> None:
    start = fleet(orders=1, inventory=5)
    guard, clock = make(start)
    without = [i for i in start if i.service != "orders"]
    served = guard.propose(without)
    assert healthy(served, "orders") == 1  # the old endpoint stays served
    assert [h.scope for h in guard.holds()] == ["orders"]
    clock.now += 2
    replacement = dataclasses.replace(start[0], port=9500, node_id="node-orders-new")
    served = guard.propose([*without, replacement])
    assert not guard.holds()
    assert [i for i in served if i.service == "orders"] == [replacement]


def test_additions_pass_while_removals_are_held() -> None:
    start = fleet(orders=4, inventory=4)
    guard, _ = make(start, services={"orders", "inventory", "billing"})
    truth = [i for i in start if i.service != "orders"] + fleet(billing=2)
    served = guard.propose(truth)
    assert healthy(served, "billing") == 2
    assert healthy(served, "orders") == 4
    assert guard.holds()


def test_config_deletion_bypasses_the_guard() -> None:
    start = fleet(orders=4, inventory=4)
    guard, _ = make(start)
    truth = [i for i in start if i.service != "orders"]
    served = guard.propose(truth, services={"inventory"})
    assert healthy(served, "orders") == 0
    assert not guard.holds()
    # and a service deleted while held drops its hold
    guard, _ = make(start)
    guard.propose(truth)
    assert guard.holds()
    served = guard.propose(truth, services={"inventory"})
    assert not guard.holds() and healthy(served, "orders") == 0


def test_disabled_guard_passes_everything() -> None:
    start = fleet(orders=4)
    clock = Clock()
    guard = Guard(GuardSettings(enabled=False), clock, served=start, services={"orders"})
    assert guard.propose([]) == [] and not guard.holds()


# -- approve, discard, auto-drop --------------------------------------------------------


def test_hold_is_dropped_when_instances_come_back() -> None:
    start = fleet(orders=4, inventory=20)
    guard, clock = make(start)
    truth = [i for i in start if i.service != "orders"]
    guard.propose(truth)
    (hold,) = guard.holds()
    clock.now += 1
    guard.propose(truth + [i for i in start if i.service == "orders"][:1])
    assert [h.id for h in guard.holds()] == [hold.id]  # same condition, same id
    guard.propose(start)
    assert not guard.holds()
    assert guard.served() == sorted(start, key=lambda i: (i.service, i.node_id, i.address, i.port))


def test_approve_applies_and_restarts_the_window() -> None:
    start = fleet(orders=4, inventory=20)
    guard, clock = make(start)
    truth = [i for i in start if i.service != "orders"]
    guard.propose(truth)
    (hold,) = guard.holds()
    with pytest.raises(HoldNotFound):
        guard.approve("nope")
    served = guard.approve(hold.id)
    assert healthy(served, "orders") == 0 and not guard.holds()
    clock.now += 1
    # orders comes back and leaves again: held again (it had endpoints), new id
    guard.propose(start)
    guard.propose(truth)
    assert [h.id for h in guard.holds()] != [hold.id] and guard.holds()


def test_approve_registry_hold_applies_everything() -> None:
    start = fleet(orders=4, inventory=4, frontend=2)
    guard, _ = make(start)
    guard.propose([])
    scopes = {h.scope for h in guard.holds()}
    assert scopes == {REGISTRY, "orders", "inventory", "frontend"}
    registry = next(h for h in guard.holds() if h.scope == REGISTRY)
    assert guard.approve(registry.id) == []
    assert not guard.holds()


def test_discard_pins_until_the_instances_come_back() -> None:
    start = fleet(orders=4, inventory=20)
    guard, clock = make(start)
    truth = [i for i in start if i.service != "orders"]
    guard.propose(truth)
    (hold,) = guard.holds()
    served = guard.discard(hold.id)
    assert healthy(served, "orders") == 4 and not guard.holds()
    assert len(guard.pinned()) == 4
    clock.now += 5
    served = guard.propose(truth)  # no new hold for the pinned ones
    assert healthy(served, "orders") == 4 and not guard.holds()
    served = guard.propose(start)  # back: pins go
    assert not guard.pinned()
    assert healthy(served, "orders") == 4


def test_window_accounting_with_injected_clock() -> None:
    start = fleet(orders=4, inventory=20)
    guard, clock = make(start)
    guard.propose([i for i in start if i != start[0]])  # 4 -> 3 at t=0
    clock.now += 30
    guard.propose([i for i in start if i not in start[:2]])  # 3 -> 2 at t=30: 50%
    assert not guard.holds()
    clock.now += 29
    guard.propose([i for i in start if i not in start[:3]])  # t=59: 3 of 4 -> held
    assert guard.holds()
    (hold,) = guard.holds()
    guard.discard(hold.id)
    # later, outside every window, 2 -> 1 is 50%: allowed (the pin keeps one more)
    clock.now += 120
    guard.propose([i for i in start if i not in start[:3]])
    assert not guard.holds()


# -- properties ----------------------------------------------------------------------

SERVICES = ("a", "b", "c")
pool = [inst(s, n) for s in SERVICES for n in range(6)]
subsets = st.lists(st.sampled_from(range(len(pool))), unique=True).map(
    lambda ix: [pool[i] for i in sorted(ix)]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(subsets, min_size=1, max_size=8), st.lists(st.floats(0, 90), max_size=8))
def test_additions_are_never_held(steps: list[list[Instance]], gaps: list[float]) -> None:
    guard, clock = make([], services=set(SERVICES))
    for n, truth in enumerate(steps):
        clock.now += gaps[n] if n < len(gaps) else 1.0
        served = guard.propose(truth)
        for i in truth:
            assert i in served  # every instance of the registry is served
        # what is served beyond the truth is only what holds/pins keep
        keys = {instance_key(i) for i in truth}
        kept = {instance_key(k) for h in guard.holds() for k in h.kept}
        kept |= {instance_key(i) for i in guard.pinned()}
        assert {instance_key(i) for i in served} - keys <= kept


@settings(max_examples=200, deadline=None)
@given(subsets, st.sampled_from(SERVICES), st.data())
def test_removing_more_than_half_of_a_service_is_always_held(
    start: list[Instance], service: str, data: st.DataObject
) -> None:
    mine = [i for i in start if i.service == service]
    if not mine:
        return
    keep = data.draw(st.integers(0, (len(mine) - 1) // 2))  # strictly less than half kept
    if keep / len(mine) >= 0.5:
        return
    guard, _ = make(start, services=set(SERVICES))
    truth = [i for i in start if i.service != service] + mine[:keep]
    served = guard.propose(truth)
    assert any(h.scope in (service, REGISTRY) for h in guard.holds())
    assert healthy(served, service) == len(mine)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 3), st.sampled_from(["replace", "unhealthy", "gone"]), st.data())
def test_rolling_replacement_one_at_a_time_is_never_held(
    first: int, how: str, data: st.DataObject
) -> None:
    orders = fleet(orders=4)
    others = fleet(inventory=2, frontend=1)
    guard, clock = make(orders + others)
    current = list(orders)
    for step in range(4):
        victim = (first + step) % 4
        old = current[victim]
        clock.now += data.draw(st.floats(0.1, 5.0))
        if how == "unhealthy":
            down = [dataclasses.replace(old, healthy=False) if i == old else i for i in current]
        else:
            down = [i for i in current if i != old]
        if how != "replace":
            served = guard.propose(down + others)
            assert not guard.holds(), guard.holds()[0].reason
            assert healthy(served, "orders") == 3
        clock.now += data.draw(st.floats(0.1, 5.0))
        new = dataclasses.replace(old, port=old.port + 100 * (step + 1), node_id=old.node_id)
        current = [new if i == old else i for i in current]
        served = guard.propose(current + others)
        assert not guard.holds(), guard.holds()[0].reason
        assert healthy(served, "orders") == 4
