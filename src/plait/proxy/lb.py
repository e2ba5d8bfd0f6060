"""Load balancing over one cluster's endpoints: which endpoint gets the next request.

Rules:

* Only healthy endpoints are picked -- unless the cluster is in *panic*: fewer than
  ``panic_threshold`` percent (default 50) of its endpoints are healthy. Then, as in
  Envoy, load is spread over all of them, healthy or not: a mass health failure is more
  often a wrong signal than a dead fleet, and piling every request onto the few
  survivors takes them down too. ``panic_threshold=0`` switches panic off. With no
  endpoints at all, ``pick()`` returns ``None`` and the caller answers
  ``destination_unavailable``. Endpoints kept by the proxy-side guard (``stale``) count
  with the health they had.
* Each endpoint has one :class:`EndpointState` holding its load counters. ``update()``
  (an EDS push) keeps the state of every endpoint that stays, keyed by address and
  port, so a config change never resets in-flight counts; an endpoint that leaves and
  comes back starts from zero. Duplicate addresses in one update count once.
* The caller brackets each request with ``state.start()`` and ``state.finish(ok)``.
  A request that outlives an update finishes on its (possibly removed) state: harmless.
* Randomness comes from an injected ``random.Random``; nothing reads a clock.
* Policies: ``round_robin`` (rotation over healthy endpoints, from a random offset so
  that many proxies do not all start on the same endpoint) and ``least_request``
  (power of two choices: two distinct random healthy endpoints, the one with fewer
  in-flight requests wins; a tie goes to the first draw, itself random).
* ``pick()`` is the hot path: the list it picks from (healthy, or all in panic) is
  rebuilt on ``update()``, never per pick.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from plait.proxy.runtime import Endpoint, LbPolicy

DEFAULT_PANIC_THRESHOLD = 50.0  # percent, Envoy's default

__all__ = [
    "DEFAULT_PANIC_THRESHOLD",
    "Balancer",
    "EndpointState",
    "LeastRequest",
    "RoundRobin",
    "make_balancer",
]


class EndpointState:
    """One endpoint and its load: in-flight (``active``), ``total`` and ``failures``."""

    __slots__ = ("active", "endpoint", "failures", "total")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.active = 0
        self.total = 0
        self.failures = 0

    @property
    def healthy(self) -> bool:
        return self.endpoint.healthy

    def start(self) -> None:
        """A request was sent to this endpoint."""
        self.active += 1
        self.total += 1

    def finish(self, ok: bool) -> None:
        """That request ended; ``ok`` is False for a connect failure, reset or timeout."""
        if self.active > 0:
            self.active -= 1
        if not ok:
            self.failures += 1

    def snapshot(self) -> dict[str, object]:
        return {
            "address": self.endpoint.address,
            "port": self.endpoint.port,
            "healthy": self.endpoint.healthy,
            "stale": self.endpoint.stale,
            "active": self.active,
            "total": self.total,
            "failures": self.failures,
        }

    def __repr__(self) -> str:
        ep = self.endpoint
        return (
            f"EndpointState({ep.address}:{ep.port}, healthy={ep.healthy}, "
            f"active={self.active}, total={self.total}, failures={self.failures})"
        )


def in_panic(healthy: int, total: int, threshold: float) -> bool:
    """Envoy's rule: panic when the healthy share is below ``threshold`` percent."""
    return total > 0 and healthy * 100.0 < threshold * total


class Balancer:
    """What a cluster needs from a load balancer: the endpoint states of one cluster and
    the subset picks come from, shared by the policies, which subclass it for ``pick``.
    (A base class, not a Protocol: the request path's ``pick`` is then a direct call in
    the compiled build, not a method looked up by name.)

    ``_healthy`` is that subset: the healthy endpoints, or all of them in panic.
    """

    __slots__ = ("_by_key", "_healthy", "_panic", "_states", "_threshold")

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        previous: Sequence[EndpointState] = (),
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
    ) -> None:
        self._by_key: dict[tuple[str, int], EndpointState] = {
            (s.endpoint.address, s.endpoint.port): s for s in previous
        }
        self._states: tuple[EndpointState, ...] = ()
        self._healthy: list[EndpointState] = []
        self._panic = False
        self._threshold = panic_threshold
        self.update(endpoints)

    @property
    def panic(self) -> bool:
        """True while too few endpoints are healthy and every endpoint is picked."""
        return self._panic

    @property
    def states(self) -> Sequence[EndpointState]:
        """Every endpoint's state, healthy or not, in update order."""
        return self._states

    def pick(self) -> EndpointState | None:
        """A healthy endpoint for the next request, or ``None`` if there is none."""
        raise NotImplementedError

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the endpoint set, keeping the state of endpoints that stay."""
        old = self._by_key
        by_key: dict[tuple[str, int], EndpointState] = {}
        for ep in endpoints:
            key = (ep.address, ep.port)
            if key in by_key:
                continue
            state = old.get(key)
            if state is None:
                state = EndpointState(ep)
            else:
                state.endpoint = ep  # health may have changed; counters stay
            by_key[key] = state
        self._by_key = by_key
        self._states = tuple(by_key.values())
        healthy = [s for s in self._states if s.endpoint.healthy]
        self._panic = in_panic(len(healthy), len(self._states), self._threshold)
        self._healthy = list(self._states) if self._panic else healthy
        self._rebalanced()

    def _rebalanced(self) -> None:
        """Hook: the healthy list changed."""

    def snapshot(self) -> list[dict[str, object]]:
        """For the admin ``/clusters`` page: one dict per endpoint."""
        return [s.snapshot() for s in self._states]


class RoundRobin(Balancer):
    """Each healthy endpoint in turn."""

    __slots__ = ("_next",)

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        rng: random.Random,
        previous: Sequence[EndpointState] = (),
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
    ) -> None:
        self._next = 0
        super().__init__(endpoints, previous, panic_threshold)
        if self._healthy:
            self._next = int(rng.random() * len(self._healthy))

    def _rebalanced(self) -> None:
        n = len(self._healthy)
        if self._next >= n:
            self._next = 0

    def pick(self) -> EndpointState | None:
        healthy = self._healthy
        if not healthy:
            return None
        i = self._next
        self._next = i + 1 if i + 1 < len(healthy) else 0
        return healthy[i]


class LeastRequest(Balancer):
    """Power of two choices on in-flight requests."""

    __slots__ = ("_random",)

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        rng: random.Random,
        previous: Sequence[EndpointState] = (),
        panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
    ) -> None:
        self._random = rng.random
        super().__init__(endpoints, previous, panic_threshold)

    def pick(self) -> EndpointState | None:
        healthy = self._healthy
        n = len(healthy)
        if n <= 2:
            if n == 0:
                return None
            if n == 1:
                return healthy[0]
            i = 0 if self._random() < 0.5 else 1
            j = 1 - i
        else:
            # int(random() * n) < n for every n < 2**53, so no clamp is needed.
            i = int(self._random() * n)
            j = int(self._random() * (n - 1))
            if j >= i:
                j += 1
        a = healthy[i]
        b = healthy[j]
        return b if b.active < a.active else a


_POLICIES: dict[str, type[RoundRobin] | type[LeastRequest]] = {
    "round_robin": RoundRobin,
    "least_request": LeastRequest,
}


def make_balancer(
    policy: LbPolicy,
    endpoints: Sequence[Endpoint],
    rng: random.Random,
    previous: Balancer | None = None,
    panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
) -> Balancer:
    """A balancer for ``policy``; with ``previous`` (a cluster whose policy changed), the
    endpoint states and their counters carry over. ``panic_threshold``: percent, see above."""
    cls = _POLICIES.get(policy)
    if cls is None:
        raise ValueError(
            f"unknown load-balancing policy {policy!r}; use one of {sorted(_POLICIES)}"
        )
    carried = previous.states if previous is not None else ()
    return cls(endpoints, rng, carried, panic_threshold)
