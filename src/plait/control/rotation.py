"""Root rotation orchestration: *when* the CA moves to its next rotation state.

The CA's state machine (:mod:`plait.ca.authority`) says what may happen; :func:`plan`
decides, on every tick of the control plane's periodic task, whether it should happen now:

- ``distributing`` (the new root is in the bundle, the old intermediate still issues):
  switch the issuer once every live proxy (every node holding a registry lease) reports
  the current bundle version in its heartbeat field ``bundle_version``. With no live
  proxy nobody needs waiting for, so the switch is immediate. Until then the plan names
  the nodes still waiting.
- ``retiring`` (the new intermediate issues, the old root is still trusted): retire the old
  root once ``now`` is past the last ``notAfter`` the old issuer signed; every certificate
  that chains to it has expired by then, so dropping it breaks no connection.
- ``stable``: nothing to do.

Pure: the inputs are plain values, the answer a :class:`RotationPlan`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from plait.ca.authority import DISTRIBUTING, RETIRING, iso

SWITCH, RETIRE = "switch", "retire"


@dataclass(frozen=True)
class RotationInputs:
    state: str
    bundle_version: str
    live_nodes: tuple[str, ...]
    reported: Mapping[str, str]  # node id -> the bundle version it last reported
    now: datetime
    retire_after: datetime | None  # the last notAfter the old issuer signed


@dataclass(frozen=True)
class RotationPlan:
    action: str | None  # SWITCH, RETIRE or None
    reason: str
    waiting_for: tuple[str, ...] = ()  # nodes that have not reported the new bundle


def _plan_switch(inputs: RotationInputs) -> RotationPlan:
    waiting = tuple(
        sorted(n for n in inputs.live_nodes if inputs.reported.get(n) != inputs.bundle_version)
    )
    if waiting:
        return RotationPlan(
            None, f"waiting for {len(waiting)} proxy(ies) to install the new bundle", waiting
        )
    return RotationPlan(SWITCH, "every live proxy has the new bundle")


def _plan_retire(inputs: RotationInputs) -> RotationPlan:
    if inputs.retire_after is not None and inputs.now <= inputs.retire_after:
        return RotationPlan(None, f"old certificates are valid until {iso(inputs.retire_after)}")
    return RotationPlan(RETIRE, "every certificate from the old root has expired")


PLANNERS: dict[str, Callable[[RotationInputs], RotationPlan]] = {
    DISTRIBUTING: _plan_switch,
    RETIRING: _plan_retire,
}


def plan(
    state: str,
    bundle_version: str,
    live_nodes: Iterable[str],
    reported: Mapping[str, str],
    now: datetime,
    retire_after: datetime | None,
) -> RotationPlan:
    """What to do now for a CA in rotation ``state`` (see the module docstring)."""
    planner = PLANNERS.get(state)
    if planner is None:
        return RotationPlan(None, "no rotation in progress")
    inputs = RotationInputs(state, bundle_version, tuple(live_nodes), reported, now, retire_after)
    return planner(inputs)
