"""Prometheus metrics for one proxy: cheap to record, rendered on scrape.

One set for every link (DESIGN.md, Conventions): each request is counted in
``plait_requests_total`` and timed in ``plait_request_duration_seconds``, labelled
``direction``, ``source``, ``destination`` (service names), ``code`` (the response
status) and ``reason`` (``""`` for a response from the app, else the Proxy-Status error
type of the hop that failed it).

Hot path: :meth:`Metrics.request` is one tuple, one dict lookup, four list updates and a
bisect over the bucket bounds; a caller that caches the series list
(:meth:`Metrics.request_series`, as the proxy's ``DataPlane.observe`` does) skips the
tuple and the lookup. Counts live in plain lists keyed by the label-value
tuple; labels are escaped and lines sorted only in :meth:`Metrics.render`. The class is
not thread-safe: it belongs to the proxy's event loop.

Output follows the Prometheus text exposition format 0.0.4: ``# HELP`` and ``# TYPE``
per family, families sorted by name, series sorted by label values, label values
escaped (``\\``, ``"``, newline), histogram buckets cumulative with a final ``+Inf``.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping

__all__ = ["BUCKETS", "CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_REQUESTS = "plait_requests_total"
_DURATION = "plait_request_duration_seconds"
_CONNECTS = "plait_upstream_connections_total"
_REQUEST_LABELS = ("direction", "source", "destination", "code", "reason")
_HELP = {
    _REQUESTS: "Requests handled, by direction, source and destination service, "
    "response code and reason (the Proxy-Status error type, empty when the app answered).",
    _DURATION: "Time from the first byte of the request to the end of the response, seconds.",
    _CONNECTS: "Connection attempts to upstream endpoints, by cluster and result (ok, failed).",
}
_BUILTIN = frozenset(_HELP)

_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:")
_NAME_CHARS = _NAME_START | frozenset("0123456789")


def _check_name(name: str, what: str, colon: bool = True) -> None:
    ok = (
        bool(name)
        and name[0] in _NAME_START
        and all(c in _NAME_CHARS for c in name)
        and (colon or ":" not in name)
    )
    if not ok:
        raise ValueError(
            f"{what} {name!r} is not a valid Prometheus name: use [a-zA-Z_:][a-zA-Z0-9_:]*"
        )


def _escape_label(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _fmt(value: float) -> str:
    """A sample value or ``le`` bound: integers without ``.0``, else the shortest repr."""
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _labels(names: tuple[str, ...], values: tuple[object, ...]) -> str:
    return ",".join(f'{n}="{_escape_label(str(v))}"' for n, v in zip(names, values, strict=True))


class Metrics:
    """The proxy's metrics registry. See the module docstring for the families."""

    __slots__ = ("_bounds", "_connects", "_counters", "_gauges", "_help", "_le", "_requests")

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError("histogram buckets must be distinct and increasing")
        self._bounds = tuple(float(b) for b in buckets)
        self._le = (*(_fmt(b) for b in self._bounds), "+Inf")
        # (direction, source, destination, code, reason) -> [count, sum, bucket counts...]
        # (bucket counts are per bucket, the last one for > the highest bound)
        self._requests: dict[tuple[str, str, str, int, str], list[float]] = {}
        self._connects: dict[tuple[str, str], list[int]] = {}  # (cluster, result) -> [n]
        # name -> {sorted label pairs -> value}
        self._gauges: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._help: dict[str, str] = {}

    # --- recording (hot path) -------------------------------------------------------

    def request(
        self,
        direction: str,
        src_service: str,
        dst_service: str,
        code: int,
        reason: str,
        duration_s: float,
    ) -> None:
        """Count one request and observe its duration."""
        key = (direction, src_service, dst_service, code, reason)
        series = self._requests.get(key)
        if series is None:
            series = self.request_series(direction, src_service, dst_service, code, reason)
        if duration_s < 0.0:
            duration_s = 0.0
        series[0] += 1
        series[1] += duration_s
        series[2 + bisect_left(self._bounds, duration_s)] += 1

    def request_series(
        self, direction: str, src_service: str, dst_service: str, code: int, reason: str
    ) -> list[float]:
        """The live counts of one request series (created empty if new), for a caller
        that caches it and records samples itself, exactly as :meth:`request` does::

            s = 0.0 if duration_s < 0.0 else duration_s
            series[0] += 1
            series[1] += s
            series[2 + bisect_left(metrics.bounds, s)] += 1

        ``series[0]`` is the count, ``series[1]`` the sum of durations, then one count per
        bucket of :attr:`bounds` and a last one for durations above them all."""
        key = (direction, src_service, dst_service, code, reason)
        series = self._requests.get(key)
        if series is None:
            series = self._requests[key] = [0, 0.0] + [0] * (len(self._bounds) + 1)
        return series

    @property
    def bounds(self) -> tuple[float, ...]:
        """The duration histogram's bucket upper bounds (seconds), increasing."""
        return self._bounds

    def upstream_connect(self, cluster: str, ok: bool) -> None:
        """Count one connection attempt to an endpoint of ``cluster``."""
        key = (cluster, "ok" if ok else "failed")
        series = self._connects.get(key)
        if series is None:
            self._connects[key] = [1]
        else:
            series[0] += 1

    def set_gauge(
        self, name: str, labels: Mapping[str, str], value: float, help: str | None = None
    ) -> None:
        """Set gauge ``name{labels}`` to ``value`` (``help`` is kept from the first call
        that gives one)."""
        series = self._gauges.get(name)
        if series is None:
            series = self._new_family(name, help, self._gauges)
        key = tuple(sorted(labels.items()))
        if key not in series:
            for label, _ in key:
                _check_name(label, "label name", colon=False)
        series[key] = value

    def inc(
        self, name: str, labels: Mapping[str, str], amount: float = 1, help: str | None = None
    ) -> None:
        """Add ``amount`` to counter ``name{labels}`` (``name`` should end in ``_total``)."""
        if amount < 0:
            raise ValueError(f"counter {name!r} can only go up; got {amount}")
        series = self._counters.get(name)
        if series is None:
            series = self._new_family(name, help, self._counters)
        key = tuple(sorted(labels.items()))
        current = series.get(key)
        if current is None:
            for label, _ in key:
                _check_name(label, "label name", colon=False)
            series[key] = amount
        else:
            series[key] = current + amount

    def remove_gauge(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """Forget one series of gauge ``name`` (or all of them when ``labels`` is None)."""
        series = self._gauges.get(name)
        if series is None:
            return
        if labels is None:
            series.clear()
        else:
            series.pop(tuple(sorted(labels.items())), None)

    def _new_family(
        self,
        name: str,
        help: str | None,
        kind: dict[str, dict[tuple[tuple[str, str], ...], float]],
    ) -> dict[tuple[tuple[str, str], ...], float]:
        _check_name(name, "metric name")
        if name in _BUILTIN or name in self._gauges or name in self._counters:
            raise ValueError(f"metric {name!r} already exists with another type")
        if help is not None:
            self._help[name] = help
        series: dict[tuple[tuple[str, str], ...], float] = {}
        kind[name] = series
        return series

    # --- reading --------------------------------------------------------------------

    def requests_count(
        self, direction: str, src_service: str, dst_service: str, code: int, reason: str
    ) -> int:
        """How many requests were counted with these labels (for tests and the CLI)."""
        series = self._requests.get((direction, src_service, dst_service, code, reason))
        return int(series[0]) if series else 0

    def render(self) -> str:
        """Everything in the Prometheus text exposition format (version 0.0.4)."""
        families: list[tuple[str, list[str]]] = [
            (_REQUESTS, self._render_requests()),
            (_DURATION, self._render_durations()),
            (_CONNECTS, self._render_connects()),
        ]
        for name, gauges in self._gauges.items():
            families.append((name, self._render_simple(name, "gauge", gauges)))
        for name, counters in self._counters.items():
            families.append((name, self._render_simple(name, "counter", counters)))
        families.sort(key=lambda family: family[0])
        out: list[str] = []
        for _, lines in families:
            out.extend(lines)
        out.append("")
        return "\n".join(out)

    def _header(self, name: str, kind: str) -> list[str]:
        text = _HELP.get(name) or self._help.get(name) or name
        return [f"# HELP {name} {_escape_help(text)}", f"# TYPE {name} {kind}"]

    def _render_requests(self) -> list[str]:
        lines = self._header(_REQUESTS, "counter")
        for key in sorted(self._requests):
            count = int(self._requests[key][0])
            lines.append(f"{_REQUESTS}{{{_labels(_REQUEST_LABELS, key)}}} {count}")
        return lines

    def _render_durations(self) -> list[str]:
        lines = self._header(_DURATION, "histogram")
        for key in sorted(self._requests):
            series = self._requests[key]
            labels = _labels(_REQUEST_LABELS, key)
            cumulative = 0
            for le, n in zip(self._le, series[2:], strict=True):
                cumulative += int(n)
                lines.append(f'{_DURATION}_bucket{{{labels},le="{le}"}} {cumulative}')
            lines.append(f"{_DURATION}_sum{{{labels}}} {_fmt(series[1])}")
            lines.append(f"{_DURATION}_count{{{labels}}} {int(series[0])}")
        return lines

    def _render_connects(self) -> list[str]:
        lines = self._header(_CONNECTS, "counter")
        for key in sorted(self._connects):
            labels = _labels(("cluster", "result"), key)
            lines.append(f"{_CONNECTS}{{{labels}}} {self._connects[key][0]}")
        return lines

    def _render_simple(
        self, name: str, kind: str, series: dict[tuple[tuple[str, str], ...], float]
    ) -> list[str]:
        lines = self._header(name, kind)
        for key in sorted(series):
            if key:
                labels = _labels(tuple(k for k, _ in key), tuple(v for _, v in key))
                lines.append(f"{name}{{{labels}}} {_fmt(series[key])}")
            else:
                lines.append(f"{name} {_fmt(series[key])}")
        return lines
