"""Active health checks of the local apps a proxy fronts.

Two parts:

- :class:`HealthState`, pure: consecutive check results in, healthy or not out.
- :class:`HealthChecker`, the I/O shell: every ``interval`` it probes the app over a
  fresh connection (``http``: ``GET <path>``, a 2xx or 3xx status is a pass; ``tcp``: the
  connect succeeding is a pass), each probe bounded by ``timeout``, and feeds the result
  to a HealthState. ``on_change(healthy)`` is called when the verdict flips.

Rules of the verdict. A service starts **unhealthy** (unknown counts as unhealthy): its
instance is registered with ``healthy: false`` and gets no traffic until its app has
passed a check. The first pass marks it healthy at once (as Envoy does at startup, so a
proxy that starts next to a ready app serves within one interval); after that it takes
``unhealthy_threshold`` consecutive failures to mark it unhealthy and
``healthy_threshold`` consecutive passes to mark it healthy again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from plait import __version__
from plait.proxy.bootstrap import HealthCheck

log = logging.getLogger("plait.proxy.health")


class HealthState:
    """The threshold logic: ``record(ok)`` returns whether the service is now healthy."""

    def __init__(self, unhealthy_threshold: int, healthy_threshold: int) -> None:
        if unhealthy_threshold < 1 or healthy_threshold < 1:
            raise ValueError("thresholds must be at least 1")
        self.unhealthy_threshold = unhealthy_threshold
        self.healthy_threshold = healthy_threshold
        self.healthy = False
        self.checked = False  # any result recorded yet
        self._ever_healthy = False
        self._passes = 0  # consecutive
        self._failures = 0  # consecutive

    def record(self, ok: bool) -> bool:
        self.checked = True
        if ok:
            self._passes += 1
            self._failures = 0
            if not self._ever_healthy or self._passes >= self.healthy_threshold:
                self.healthy = True
                self._ever_healthy = True
        else:
            self._failures += 1
            self._passes = 0
            if self._failures >= self.unhealthy_threshold:
                self.healthy = False
        return self.healthy


class HealthChecker:
    """Checks one local app; ``healthy`` is False until its first passed check."""

    def __init__(
        self,
        spec: HealthCheck,
        app_address: str,
        app_port: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.spec = spec
        self.app_address = app_address
        self.app_port = app_port
        self.on_change = on_change
        self._clock = clock
        self._state = HealthState(spec.unhealthy_threshold, spec.healthy_threshold)
        self.last_error: str | None = None  # why the last check failed
        self.last_checked: float | None = None  # clock() at the end of the last check

    @property
    def healthy(self) -> bool:
        return self._state.healthy

    async def run(self) -> None:
        """Check every ``interval`` (measured start to start) until cancelled."""
        while True:
            started = self._clock()
            await self.check_once()
            elapsed = self._clock() - started
            await asyncio.sleep(max(0.0, self.spec.interval - elapsed))

    async def check_once(self) -> bool:
        """Probe once, record the result, call ``on_change`` on a flip; the probe's result."""
        error = await self.probe()
        self.last_error = error
        self.last_checked = self._clock()
        before = self._state.healthy
        after = self._state.record(error is None)
        if after != before:
            log.info(
                "app %s:%s is now %s%s",
                self.app_address,
                self.app_port,
                "healthy" if after else "unhealthy",
                f" ({error})" if error else "",
            )
            if self.on_change is not None:
                self.on_change(after)
        return error is None

    async def probe(self) -> str | None:
        """One check of the app: None if it passed, else what went wrong."""
        try:
            async with asyncio.timeout(self.spec.timeout):
                if self.spec.http is not None:
                    return await self._http(self.spec.http)
                return await self._tcp()
        except TimeoutError:
            return f"no answer within {self.spec.timeout:g}s"
        except OSError as exc:
            return f"cannot connect: {exc.strerror or exc}"

    async def _tcp(self) -> str | None:
        _reader, writer = await asyncio.open_connection(self.app_address, self.app_port)
        await _close(writer)
        return None

    async def _http(self, path: str) -> str | None:
        reader, writer = await asyncio.open_connection(self.app_address, self.app_port)
        try:
            host = self.app_address
            host = f"[{host}]" if ":" in host else host
            writer.write(
                (
                    f"GET {path} HTTP/1.1\r\n"
                    f"Host: {host}:{self.app_port}\r\n"
                    f"User-Agent: plait-health-check/{__version__}\r\n"
                    "Accept: */*\r\n"
                    "Connection: close\r\n\r\n"
                ).encode("latin-1")
            )
            await writer.drain()
            status_line = await reader.readline()
        finally:
            await _close(writer)
        return _http_verdict(status_line)


def _http_verdict(status_line: bytes) -> str | None:
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        shown = status_line[:60].decode("latin-1") or "nothing"
        return f"not an HTTP response: {shown!r}"
    status = int(parts[1])
    return None if 200 <= status < 400 else f"HTTP status {status}"


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
