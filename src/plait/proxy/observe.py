"""What the proxy records of each finished request: a metrics sample and an access log line.

:class:`Observer` is the part of :class:`~plait.proxy.dataplane.DataPlane` that every
request passes through last (:meth:`Observer.observe`, called once per exchange by its
ending). The line is the bytes :meth:`~plait.proxy.accesslog.AccessLog.request` gives for
the same record, built in one f-string from pieces cached per (listener, destination,
status, error) together with the metrics series they count in, so that a request pays two
clock reads, a few dict lookups, a bisect and the formatting of the values that change
per request (tests/unit/proxy/test_observe.py holds the two to the reference). A custom
logger (any object with ``log(dict)``) gets the record as a dict instead.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from plait.proxy.accesslog import (
    AccessLog,
    decimal3,
    json_quote,
    json_str,
    request_prefix,
    request_suffix,
    trim3,
)
from plait.proxy.metrics import Metrics

if TYPE_CHECKING:
    from plait.proxy.dataplane import ListenerSlot
    from plait.proxy.http1_dispatch import Dispatch

__all__ = ["Observer"]

# Called as functions, not methods: compiled, f"{t:.3f}" is '{:{}}'.format(t, '.3f')
# and rid.isalnum() a method looked up by name (per request).
_format: Final = format
_isalnum: Final = bytes.isalnum
MAX_MIDDLES = 256  # (method, path, upstream) texts kept per entry; then start over

# What observe() keeps per (listener, destination, status, error): the metrics series and
# histogram bounds, the log line's prefix, status and error texts, and its middle texts.
_Entry = tuple[
    list[float] | None,
    tuple[float, ...],
    str | None,
    str,
    str,
    dict[tuple[bytes, str, tuple[str, int] | None], str],
]


def _middle_text(prefix: str, method: str, path: str, upstream: str, status: str) -> str:
    """A log line from its prefix to ``"duration_ms":`` (the arguments are JSON texts)."""
    return (
        f'{prefix}"method":{method},"path":{path},"upstream":{upstream},"status":{status},'
        '"duration_ms":'
    )


def _no_write(line: str) -> None:
    return None


def _method_path(ex: Dispatch) -> tuple[str | None, str | None]:
    """An exchange's method and path for its log line; of a rejected head, what
    identify_rejected() could tell (else None)."""
    head = ex.head
    if head is not None:
        return head.method.decode("latin-1"), head.path
    rejected = ex.rejection
    method = rejected.method.decode("latin-1") if rejected and rejected.method else None
    return method, rejected.path if rejected is not None else None


class Observer:
    """Metrics and access log for finished exchanges (a base of DataPlane)."""

    node_id: str
    clock: Callable[[], float]
    wall_clock: Callable[[], float]

    def _init_observer(self, node_id: str, metrics: Any, access_log: Any) -> None:
        self._metrics = metrics
        self._access_log = access_log
        # observe(): per (listener, destination, status, error) the metrics series and
        # the access log pieces (see _observe_entry); JSON texts of upstream addresses;
        # line endings per mTLS peer; the time text of the current millisecond
        self._observed: dict[tuple[ListenerSlot, str, int, str | None], _Entry] = {}
        self._log_write: Callable[[str], object] = _no_write
        self._log_suffix = request_suffix(node_id, None, None) + "}\n"
        self._addr_text: dict[tuple[str, int] | None, str] = {}
        self._peer_suffix: dict[str, str] = {}
        self._time_lo = self._time_hi = 0.0
        self._time_text = ""

    @property
    def metrics(self) -> Any:
        """The :class:`~plait.proxy.metrics.Metrics` requests are counted in (or None)."""
        return self._metrics

    @metrics.setter
    def metrics(self, metrics: Any) -> None:
        self._metrics = metrics
        self._observed = {}

    @property
    def access_log(self) -> Any:
        """The :class:`~plait.proxy.accesslog.AccessLog` (or any object with ``log(dict)``,
        or None) requests are logged to."""
        return self._access_log

    @access_log.setter
    def access_log(self, access_log: Any) -> None:
        self._access_log = access_log
        self._observed = {}

    def observe(self, ex: Dispatch) -> None:
        """One finished exchange: a metrics sample and an access log line.

        The line is the bytes ``AccessLog.request`` (and ``format_record``) gives for the
        same record, built here in one f-string from pieces cached per (listener,
        destination, status, error) with the metrics series they count in: a request
        pays two clock reads, a few dict lookups, a bisect and the formatting of the
        values that change per request (tests/unit/proxy/test_observe.py holds the
        two to the reference)."""
        duration = self.clock() - ex.started_at
        slot = ex.server.listener
        cluster = ex.cluster
        head = ex.head
        if cluster is not None:
            destination = cluster.service
        else:  # a rejected head: what identify_rejected() could tell of it (else None)
            rejected = ex.rejection if head is None else None
            destination = slot.service or (rejected and rejected.destination) or "unknown"
        status = ex.status
        error = ex.error
        entry = self._observed.get((slot, destination, status, error))
        if entry is None:
            entry = self._observe_entry(slot, destination, status, error)
        series, bounds, prefix, status_text, error_text, middles = entry
        if series is not None:  # Metrics.request, on the cached series
            sample = 0.0 if duration < 0.0 else duration
            series[0] += 1
            series[1] += sample
            series[2 + bisect_left(bounds, sample)] += 1
        elif self._metrics is not None:  # not a Metrics: its own request()
            self._metrics.request(
                slot.direction, slot.source, destination, status, error or "", duration
            )
        if prefix is None:  # no AccessLog: a custom logger (the record as a dict) or none
            if self._access_log is not None:
                self._log_record(ex, slot, destination, duration)
            return
        t = self.wall_clock()
        when = self._time_text if self._time_lo <= t < self._time_hi else self._time_of(t)
        took = decimal3(duration * 1000.0)
        rid_bytes = ex.request_id
        rid = rid_bytes.decode("latin-1")
        if not _isalnum(rid_bytes):  # ASCII letters and digits need no escaping
            rid = json_quote(rid)[1:-1]
        if head is not None:  # the line from its prefix to duration_ms, cached
            key = (head.method, head.path, ex.upstream_addr)
            middle = middles.get(key)
            if middle is None:
                middle = self._middle(middles, key, prefix, status_text)
        else:
            method, path = self._rejected_text(ex)
            middle = _middle_text(
                prefix, method, path, self._upstream_text(ex.upstream_addr), status_text
            )
        details = ex.details
        peer = ex.server.peer
        rbac = ex.rbac
        self._log_write(
            f'{{"time":{when},"request_id":"{rid}",{middle}{took},'
            f'"bytes_in":{ex.bytes_in},"bytes_out":{ex.bytes_out},"error":{error_text},"details":'
            f"{'null' if details is None else json_quote(details)},"
            f"{self._log_suffix if peer is None and rbac is None else self._suffix(peer, rbac)}"
        )

    def _observe_entry(
        self, slot: ListenerSlot, destination: str, status: int, error: str | None
    ) -> _Entry:
        """What observe() caches per (listener, destination, status, error)."""
        metrics = self._metrics
        series: list[float] | None = None
        bounds: tuple[float, ...] = ()
        if isinstance(metrics, Metrics):
            reason = error or ""
            series = metrics.request_series(
                slot.direction, slot.source, destination, status, reason
            )
            bounds = metrics.bounds
        access_log = self._access_log
        prefix: str | None = None
        if isinstance(access_log, AccessLog):
            prefix = request_prefix(slot.direction, slot.source, destination)
            self._log_write = access_log.write
        if len(self._observed) >= 4096:  # statuses and errors are few; bound it anyway
            self._observed.clear()
        entry: _Entry = (series, bounds, prefix, f"{status}", json_str(error), {})
        self._observed[(slot, destination, status, error)] = entry
        return entry

    def _time_of(self, t: float) -> str:
        """``repr(round(t, 3))``; the text is kept for the clock readings sure to round
        to the same millisecond (0.49 ms either side of it: float error here is below
        0.001 ms), so requests within one millisecond format the time once."""
        if 0.0 < t < 4e9:  # t * 1000 < 2**42: exact enough for the bounds below
            fixed = _format(t, ".3f")  # decimal3(t), inlined: one formatting gives both
            text = trim3(fixed) if fixed[-1] == "0" else fixed
            k = int(fixed[:-4] + fixed[-3:])  # round(t, 3) * 1000, exactly
            # never down to 0.0: -0.0 == 0.0, and round() keeps the sign of a zero
            lo = (k - 0.49) / 1000.0
            self._time_lo = lo if lo >= 5e-324 else 5e-324
            self._time_hi = (k + 0.49) / 1000.0
            self._time_text = text
            return text
        return decimal3(t)

    def _middle(
        self,
        middles: dict[tuple[bytes, str, tuple[str, int] | None], str],
        key: tuple[bytes, str, tuple[str, int] | None],
        prefix: str,
        status_text: str,
    ) -> str:
        """The line's text from ``prefix`` to ``"duration_ms":`` for a (method, path,
        upstream) of an entry, kept in the entry (bounded: paths vary)."""
        method, path, addr = key
        text = _middle_text(
            prefix,
            json_quote(method.decode("latin-1")),
            json_quote(path),
            self._upstream_text(addr),
            status_text,
        )
        if len(middles) >= MAX_MIDDLES:
            middles.clear()
        middles[key] = text
        return text

    def _rejected_text(self, ex: Dispatch) -> tuple[str, str]:
        """The method and path of a request whose head was rejected (JSON texts)."""
        method, path = _method_path(ex)
        return json_str(method), json_str(path)

    def _upstream_text(self, addr: tuple[str, int] | None) -> str:
        """The upstream address as a JSON string (``null`` for none), cached."""
        text = self._addr_text.get(addr)
        if text is None:
            if len(self._addr_text) >= 4096:
                self._addr_text.clear()
            text = json_quote(f"{addr[0]}:{addr[1]}") if addr else "null"
            self._addr_text[addr] = text
        return text

    def _suffix(self, peer: str | None, rbac: str | None) -> str:
        """The line's end for an mTLS peer (cached per peer) or an RBAC audit note."""
        if peer is None or rbac is not None:
            return request_suffix(self.node_id, peer, rbac) + "}\n"
        text = self._peer_suffix.get(peer)
        if text is None:
            if len(self._peer_suffix) >= 4096:
                self._peer_suffix.clear()
            text = self._peer_suffix[peer] = request_suffix(self.node_id, peer, None) + "}\n"
        return text

    def _log_record(
        self, ex: Dispatch, slot: ListenerSlot, destination: str, duration: float
    ) -> None:
        """A custom logger: the record as a dict."""
        method, path = _method_path(ex)
        upstream = ex.upstream_addr
        self._access_log.log(
            {
                "time": round(self.wall_clock(), 3),
                "request_id": ex.request_id.decode("latin-1"),
                "direction": slot.direction,
                "source": slot.source,
                "destination": destination,
                "method": method,
                "path": path,
                "upstream": f"{upstream[0]}:{upstream[1]}" if upstream else None,
                "status": ex.status,
                "duration_ms": round(duration * 1000.0, 3),
                "bytes_in": ex.bytes_in,
                "bytes_out": ex.bytes_out,
                "error": ex.error,
                "details": ex.details,
                "node": self.node_id,
                "peer": ex.server.peer,
                "rbac": ex.rbac,
            }
        )
