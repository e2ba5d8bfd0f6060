"""The proxy's admin endpoints (127.0.0.1 only; docs/internals.md).

| path | answer |
|---|---|
| ``/ready`` | 200 once a config is applied (live or last-known-good), else 503 + reason |
| ``/config_dump`` | JSON: applied ProxyConfig, xDS versions, ACK/NACK, ``request_path`` |
| ``/clusters`` | JSON: per cluster, endpoints with health and LB state, connection pool |
| ``/listeners`` | JSON: bound listeners and whether the config names them |
| ``/stats/prometheus`` | Prometheus text exposition |
| ``/identities`` | JSON: per local service, its certificate (serial, expiry, alarm) |

:meth:`AdminServer.handle` is the dispatch (path in, status + content type + body out),
so it is testable without a socket; :meth:`AdminServer.start` puts a tiny HTTP/1.1
server in front of it (GET and HEAD, one request per connection). It is not on the
request path, so it favours being small over being fast. ``request_path`` says whether
the request path runs compiled, and if not why (:mod:`~plait.proxy.native`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from plait.proxy import native
from plait.proxy.dataplane import DataPlane

log = logging.getLogger("plait.proxy.admin")

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"

Answer = tuple[int, str, bytes]


def _json(obj: Any, status: int = 200) -> Answer:
    body = json.dumps(obj, indent=2, sort_keys=False, default=_plain) + "\n"
    return status, JSON, body.encode()


def _plain(obj: Any) -> Any:
    if isinstance(obj, frozenset | set):
        return sorted(obj)
    if isinstance(obj, bytes):  # PEM trust bundles: text
        return obj.decode("utf-8", "replace")
    return str(obj)


class AdminServer:
    """Serves a DataPlane's state; ``xds`` (an XdsClient) and ``metrics`` are optional."""

    def __init__(
        self,
        dp: DataPlane,
        *,
        xds: Any = None,
        metrics: Any = None,
        extra: Callable[[], dict[str, Any]] | None = None,
        identities: Any = None,
        source: Any = None,
    ) -> None:
        self.dp = dp
        self.source = source  # a ConfigSource (plait.proxy.main): live or last-known-good
        self.xds = xds
        self.metrics = metrics
        self.extra = extra
        self.identities = identities  # a ProxyIdentities, when the proxy has a CA
        self.server: asyncio.Server | None = None
        self._routes: dict[str, Callable[[], Answer]] = {
            "/": self._index,
            "/ready": self._ready,
            "/config_dump": self._config_dump,
            "/clusters": self._clusters,
            "/listeners": self._listeners,
            "/stats/prometheus": self._prometheus,
            "/identities": self._identities,
        }

    # -- dispatch ------------------------------------------------------------------------

    def handle(self, method: str, target: str) -> Answer:
        path = target.split("?", 1)[0]
        route = self._routes.get(path)
        if route is None:
            known = ", ".join(p for p in self._routes if p != "/")
            return 404, TEXT, f"no admin endpoint {path!r}; try {known}\n".encode()
        if method not in ("GET", "HEAD"):
            return 405, TEXT, b"admin endpoints answer GET only\n"
        return route()

    def _index(self) -> Answer:
        return 200, TEXT, ("\n".join(p for p in self._routes if p != "/") + "\n").encode()

    def _ready(self) -> Answer:
        source = self.source
        if self.dp.ready:
            if source is not None:
                return 200, TEXT, f"ready: {source.describe()}\n".encode()
            return 200, TEXT, b"ready\n"
        reason = "not ready: no config with listeners from the control plane yet"
        if source is not None and source.lkg_error:
            reason += f"; the last-known-good config was not loaded: {source.lkg_error}"
        return 503, TEXT, (reason + "\n").encode()

    def _config_dump(self) -> Answer:
        snap = self.dp.snapshot
        out: dict[str, Any] = {
            "node_id": self.dp.node_id,
            "ready": self.dp.ready,
            "versions": dict(snap.config.versions) if snap is not None else {},
            "source": self.source.name if self.source is not None else None,
            "request_path": native.STATE,  # compiled or interpreted, and why
            "config": self.dp.config_dump(),
        }
        xds = self.xds
        if xds is not None:
            out["xds"] = {
                "connected": xds.connected,
                "target": getattr(xds, "target", None),
                "acked": xds.acked,
                "last_nack": xds.last_nack,
                "last_error": getattr(xds, "last_error", None),
            }
        if self.source is not None:
            out["last_known_good"] = self.source.view()
        if self.identities is not None:
            out["identities"] = self.identities.view()["identities"]
        if self.extra is not None:
            out.update(self.extra())
        return _json(out)

    def _identities(self) -> Answer:
        if self.identities is None:
            return _json({"identities": [], "note": "no CA configured: plaintext only"})
        return _json(self.identities.view())

    def _clusters(self) -> Answer:
        return _json({"clusters": self.dp.clusters_view()})

    def _listeners(self) -> Answer:
        snap = self.dp.snapshot
        listeners = []
        for slot in self.dp.listeners.values():
            listeners.append(
                {
                    "name": slot.name,
                    "direction": slot.direction,
                    "service": slot.service,
                    "address": f"{slot.address}:{slot.port}",
                    "configured": snap is not None and slot.name in snap.routers,
                }
            )
        return _json({"listeners": listeners, "connections": len(self.dp.connections)})

    def _prometheus(self) -> Answer:
        if self.metrics is None:
            return 404, TEXT, b"metrics are not enabled\n"
        if self.identities is not None:
            self.identities.refresh_metrics()
        return 200, PROMETHEUS, self.metrics.render().encode()

    # -- the socket ----------------------------------------------------------------------

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        sockname = self.server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                status, ctype, body = 400, TEXT, b"bad request\n"
                method = "GET"
            else:
                method = parts[0]
                status, ctype, body = self.handle(method, parts[1])
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(status, "-")
            if status == 503:
                reason = "Service Unavailable"
            head_out = (
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\n"
                f"content-length: {len(body)}\r\ncache-control: no-store\r\n"
                "connection: close\r\n\r\n"
            ).encode("latin-1")
            writer.write(head_out if method == "HEAD" else head_out + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except ConnectionError:
            pass
        except Exception:
            log.exception("admin request failed")
        finally:
            writer.close()
