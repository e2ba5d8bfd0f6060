"""The control plane's JSON HTTP API (docs/internals.md, "Control plane HTTP API").

A table of (method, path pattern, handler); each handler maps one request onto
:class:`~plait.control.plane.ControlPlane` and its answer back to JSON. Request bodies are
checked here and refused with a 400 that names the field; config errors keep their
structured form (``{"error", "errors": [{"file","document","field","line","message"}]}``).

The service CA's endpoints (docs/security.md) are here too: join tokens, the trust bundle,
issued certificates, rotation. CSRs are signed only on the HTTPS listener
(:class:`CaTlsApi`, the ready file's ``"ca"`` URL); the plain API answers 421 there.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from plait.ca.authority import CaError, iso
from plait.ca.profile import renew_at
from plait.control.ca_plane import CaPlane, SignRefused, TokenNotFound
from plait.control.guard import HoldNotFound
from plait.control.plane import ControlPlane, NotFound, lookup
from plait.jsonhttp import HttpError, Request, Response
from plait.model.errors import ConfigError, ResourceNotFoundError
from plait.model.load import config_to_documents, resource_to_dict
from plait.model.resources import parse_duration
from plait.xds.inputs import Instance

HISTORY_LIMIT = 50
DEFAULT_TOKEN_TTL = "1h"

Route = tuple[str, re.Pattern[str], Callable[..., Awaitable[Response]]]


class TextResponse(Response):
    """A plain-text answer (``GET /metrics``): ``body_obj`` is the text."""

    def encode(self, keep_alive: bool) -> bytes:
        body = str(self.body_obj or "").encode()
        head = [
            f"HTTP/1.1 {self.status} OK",
            "Content-Type: text/plain; version=0.0.4; charset=utf-8",
            f"Content-Length: {len(body)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            "Cache-Control: no-store",
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def metrics_text(plane: ControlPlane) -> str:
    """The control plane's Prometheus metrics (text exposition format)."""
    guard = plane.guard
    lines = [
        "# HELP plait_guard_held_total Registry changes the push guard has held back.",
        "# TYPE plait_guard_held_total counter",
        f"plait_guard_held_total {guard.held_total}",
        "# HELP plait_guard_holds Changes held back now, waiting for approval or recovery.",
        "# TYPE plait_guard_holds gauge",
        f"plait_guard_holds {len(guard.holds())}",
        "# HELP plait_control_syncing 1 while xDS waits for the registry to sync.",
        "# TYPE plait_control_syncing gauge",
        f"plait_control_syncing {1 if plane.syncing else 0}",
    ]
    return "\n".join(lines) + "\n"


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in obj:
        raise HttpError(400, f"{where}: '{name}' is required")
    value = obj[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise HttpError(400, f"{where}: '{name}' has the wrong type ({type(value).__name__})")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def parse_heartbeat(body: Any) -> tuple[str, float, list[Instance]]:
    """``{"node_id", "ttl", "instances": [...]}`` -> (node id, ttl, instances)."""
    if not isinstance(body, dict):
        raise HttpError(400, "heartbeat: the body must be a JSON object")
    node_id = _field(body, "node_id", str, "heartbeat")
    if not node_id:
        raise HttpError(400, "heartbeat: 'node_id' must not be empty")
    ttl = float(_field(body, "ttl", (int, float), "heartbeat"))
    if not 0 < ttl <= 3600:
        raise HttpError(400, "heartbeat: 'ttl' must be between 0 and 3600 seconds")
    raw = body.get("instances", [])
    if not isinstance(raw, list):
        raise HttpError(400, "heartbeat: 'instances' must be a list")
    instances = []
    for index, item in enumerate(raw):
        where = f"heartbeat: instances[{index}]"
        if not isinstance(item, dict):
            raise HttpError(400, f"{where} must be an object")
        port = _field(item, "port", int, where)
        if not 0 < port < 65536:
            raise HttpError(400, f"{where}: 'port' must be between 1 and 65535")
        labels = item.get("labels") or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise HttpError(400, f"{where}: 'labels' must map strings to strings")
        healthy = item.get("healthy", True)
        if not isinstance(healthy, bool):
            raise HttpError(400, f"{where}: 'healthy' must be true or false")
        instances.append(
            Instance(
                service=_field(item, "service", str, where),
                node_id=node_id,
                address=_field(item, "address", str, where),
                port=port,
                labels=dict(labels),
                healthy=healthy,
            )
        )
    return node_id, ttl, instances


class ControlApi:
    """``handle`` is the :func:`plait.jsonhttp.serve_json` handler."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        # node id -> where its proxy's config comes from, as its last heartbeat said
        # ({"source": "live"|"last-known-good", "version", "saved_at"}; docs/resilience.md)
        self.config_sources: dict[str, dict[str, str]] = {}
        self.routes: list[Route] = [
            ("GET", re.compile(r"/v1/health"), self.health),
            ("POST", re.compile(r"/v1/apply"), self.apply),
            ("GET", re.compile(r"/v1/config"), self.get_config),
            ("GET", re.compile(r"/v1/config/(?P<kind>[^/]+)/(?P<name>[^/]+)"), self.get_resource),
            ("DELETE", re.compile(r"/v1/config/(?P<kind>[^/]+)/(?P<name>[^/]+)"), self.delete),
            ("GET", re.compile(r"/v1/history"), self.history),
            ("POST", re.compile(r"/v1/registry/heartbeat"), self.heartbeat),
            ("GET", re.compile(r"/v1/registry"), self.registry),
            ("GET", re.compile(r"/v1/proxy-status"), self.proxy_status),
            ("GET", re.compile(r"/v1/status"), self.status),
            ("GET", re.compile(r"/metrics"), self.metrics),
            ("GET", re.compile(r"/v1/guard"), self.guard),
            ("POST", re.compile(r"/v1/guard/(?P<hold_id>[^/]+)/approve"), self.guard_approve),
            ("POST", re.compile(r"/v1/guard/(?P<hold_id>[^/]+)/discard"), self.guard_discard),
            ("POST", re.compile(r"/v1/tokens"), self.create_token),
            ("GET", re.compile(r"/v1/tokens"), self.list_tokens),
            ("DELETE", re.compile(r"/v1/tokens/(?P<token_id>[^/]+)"), self.revoke_token),
            ("GET", re.compile(r"/v1/ca/bundle"), self.ca_bundle),
            ("POST", re.compile(r"/v1/ca/sign"), self.sign_elsewhere),
            ("GET", re.compile(r"/v1/ca/certs"), self.ca_certs),
            ("POST", re.compile(r"/v1/ca/rotate"), self.ca_rotate),
            ("GET", re.compile(r"/v1/ca/status"), self.ca_status),
        ]
        self.ca_url: str | None = None  # the HTTPS listener, once it is bound

    async def handle(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        allowed = []
        for method, pattern, handler in self.routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if method == request.method:
                return await handler(request, **match.groupdict())
            allowed.append(method)
        if allowed:
            raise HttpError(
                405, f"{request.method} is not allowed on {path}; use {', '.join(allowed)}"
            )
        raise HttpError(404, f"no such endpoint: {path} (see docs/internals.md)")

    async def health(self, request: Request) -> Response:
        return Response(200, {"status": "ok"})

    async def apply(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "apply: the body must be a JSON object")
        filename = body.get("filename") or "<api>"
        text = _field(body, "yaml", str, "apply")
        if not isinstance(filename, str):
            raise HttpError(400, "apply: 'filename' must be a string")
        try:
            version, changed = self.plane.apply(filename, text)
        except ConfigError as exc:
            return Response(400, exc.to_dict())
        return Response(200, {"version": version, "changed": changed})

    async def get_config(self, request: Request) -> Response:
        version, cfg = self.plane.store.current()
        return Response(200, {"version": version, "resources": config_to_documents(cfg)})

    async def get_resource(self, request: Request, kind: str, name: str) -> Response:
        try:
            resource = lookup(self.plane.config, kind, name)
        except NotFound as exc:
            raise HttpError(404, str(exc)) from None
        return Response(200, resource_to_dict(resource))

    async def delete(self, request: Request, kind: str, name: str) -> Response:
        try:
            version = self.plane.delete(kind, name)
        except (NotFound, ResourceNotFoundError) as exc:
            raise HttpError(404, str(exc)) from None
        except ConfigError as exc:
            return Response(400, exc.to_dict())
        return Response(200, {"version": version})

    async def history(self, request: Request) -> Response:
        try:
            limit = int(request.query.get("limit", HISTORY_LIMIT))
        except ValueError:
            raise HttpError(400, "history: 'limit' must be a whole number") from None
        versions = [v.to_dict() for v in self.plane.store.history(limit)]
        return Response(200, {"versions": versions})

    async def heartbeat(self, request: Request) -> Response:
        body = request.json()
        node_id, ttl, instances = parse_heartbeat(body)
        leaving = body.get("leaving", False)
        if not isinstance(leaving, bool):
            raise HttpError(400, "heartbeat: 'leaving' must be true or false")
        if leaving:  # a proxy shutting down (docs/resilience.md, "Graceful shutdown")
            self.plane.leave(node_id)
            self.config_sources.pop(node_id, None)
            return Response(200, {"ok": True})
        self.plane.heartbeat(node_id, instances, ttl)
        bundle_version = body.get("bundle_version")
        if bundle_version is not None and not isinstance(bundle_version, str):
            raise HttpError(400, "heartbeat: 'bundle_version' must be a string")
        if bundle_version and self.plane.ca is not None:
            self.plane.ca.report_bundle(node_id, bundle_version)
        source = body.get("config_source")
        if isinstance(source, dict):
            self.config_sources[node_id] = {
                key: value
                for key in ("source", "version", "saved_at")
                if isinstance(value := source.get(key), str)
            }
        return Response(200, {"ok": True})

    async def registry(self, request: Request) -> Response:
        rows = self.plane.registry.snapshot_rows(self.plane.clock())
        return Response(200, {"instances": rows})

    async def proxy_status(self, request: Request) -> Response:
        rows = self.plane.cache.status_rows()
        for row in rows:
            source = self.config_sources.get(row["node_id"])
            if source:
                row["config_source"] = source
        return Response(200, {"nodes": rows})

    async def status(self, request: Request) -> Response:
        return Response(200, self.plane.status())

    async def metrics(self, request: Request) -> Response:
        return TextResponse(200, metrics_text(self.plane))

    # -- the push guard (docs/resilience.md) -------------------------------------------

    async def guard(self, request: Request) -> Response:
        return Response(200, self.plane.guard_status())

    async def guard_approve(self, request: Request, hold_id: str) -> Response:
        try:
            self.plane.approve_hold(hold_id)
        except HoldNotFound as exc:
            raise HttpError(404, str(exc)) from None
        return Response(200, {"approved": hold_id, **self.plane.guard_status()})

    async def guard_discard(self, request: Request, hold_id: str) -> Response:
        try:
            self.plane.discard_hold(hold_id)
        except HoldNotFound as exc:
            raise HttpError(404, str(exc)) from None
        return Response(200, {"discarded": hold_id, **self.plane.guard_status()})

    # -- service CA (docs/security.md) -----------------------------------------------

    def _ca(self) -> CaPlane:
        if self.plane.ca is None:
            raise HttpError(503, "this control plane runs without a CA")
        return self.plane.ca

    async def create_token(self, request: Request) -> Response:
        """``{"service", "ttl"}`` -> ``{"id", "token", ...}``: the secret is shown once."""
        ca = self._ca()
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "token: the body must be a JSON object")
        service = _field(body, "service", str, "token")
        ttl = body.get("ttl", DEFAULT_TOKEN_TTL)
        try:
            seconds = parse_duration(ttl)
            record, secret = ca.create_token(service, timedelta(seconds=seconds))
        except ValueError as exc:
            raise HttpError(400, f"token: {exc}") from None
        return Response(
            200,
            {
                "id": record.id,
                "token": secret,
                "service": record.service,
                "expires_at": iso(record.expires_at),
                "bundle_version": ca.ca.bundle_version(),
            },
        )

    async def list_tokens(self, request: Request) -> Response:
        ca = self._ca()
        now = ca.utcnow()
        return Response(200, {"tokens": [r.to_dict(now) for r in ca.tokens.list()]})

    async def revoke_token(self, request: Request, token_id: str) -> Response:
        ca = self._ca()
        try:
            record = ca.revoke_token(token_id)
        except TokenNotFound as exc:
            raise HttpError(404, str(exc)) from None
        return Response(200, record.to_dict(ca.utcnow()))

    async def ca_bundle(self, request: Request) -> Response:
        ca = self._ca().ca
        return Response(
            200,
            {
                "bundle": ca.trust_bundle().decode("ascii"),
                "version": ca.bundle_version(),
                "trust_domain": ca.trust_domain,
                "ca_url": self.ca_url,
            },
        )

    async def sign_elsewhere(self, request: Request) -> Response:
        where = f" at {self.ca_url}" if self.ca_url else " (the ready file's 'ca' URL)"
        raise HttpError(421, f"send CSRs to the control plane's HTTPS listener{where}")

    async def ca_sign(self, request: Request) -> Response:
        """``{"service", "csr", "token"?, "node"?}`` -> the certificate chain and bundle."""
        ca = self._ca()
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "sign: the body must be a JSON object")
        service = _field(body, "service", str, "sign")
        csr = _field(body, "csr", str, "sign")
        token, node = body.get("token"), body.get("node")
        for name, value in (("token", token), ("node", node)):
            if value is not None and not isinstance(value, str):
                raise HttpError(400, f"sign: '{name}' must be a string")
        try:
            issued = ca.sign(
                service,
                csr.encode("utf-8", "replace"),
                token=token,
                peer_cert=request.peer_cert,
                node=node,
                peer=request.peer,
            )
        except SignRefused as exc:
            raise HttpError(403, f"certificate refused: {exc.reason}", reason=exc.reason) from None
        return Response(
            200,
            {
                "certificate": issued.chain_pem.decode("ascii"),
                "bundle": ca.ca.trust_bundle().decode("ascii"),
                "bundle_version": ca.ca.bundle_version(),
                "spiffe_id": str(issued.spiffe_id),
                "serial": format(issued.serial, "x"),
                "not_before": iso(issued.not_before),
                "not_after": iso(issued.not_after),
                "renew_after": iso(renew_at(issued.not_before, issued.not_after)),
            },
        )

    async def ca_certs(self, request: Request) -> Response:
        ca = self._ca()
        include_expired = request.query.get("all", "") in ("1", "true", "yes")
        certs = ca.issued_certs(include_expired)
        return Response(200, {"certs": certs, "now": iso(ca.utcnow())})

    async def ca_rotate(self, request: Request) -> Response:
        """Begin a root rotation; ``{"force_switch": true}`` switches the issuer now even if
        some proxies have not reported the new bundle (they will reject new certificates)."""
        ca = self._ca()
        body = request.json() if request.body else {}
        if not isinstance(body, dict):
            raise HttpError(400, "rotate: the body must be a JSON object")
        try:
            if body.get("force_switch") is True:
                ca.switch_issuer()
            else:
                ca.begin_rotation()
        except CaError as exc:
            raise HttpError(409, str(exc)) from None
        self.plane.bundle_changed()  # the new root goes out to the proxies now
        return Response(200, ca.status())

    async def ca_status(self, request: Request) -> Response:
        return Response(200, self._ca().status())


class CaTlsApi(ControlApi):
    """The HTTPS listener: CSRs in, certificates out; the bundle; health. Nothing else."""

    def __init__(self, plane: ControlPlane) -> None:
        super().__init__(plane)
        self.routes = [
            ("GET", re.compile(r"/v1/health"), self.health),
            ("GET", re.compile(r"/v1/ca/bundle"), self.ca_bundle),
            ("POST", re.compile(r"/v1/ca/sign"), self.ca_sign),
        ]
