"""A small etcd v3 client over etcd's gRPC-gateway JSON API (HTTP/1.1, stdlib only).

etcd serves its v3 API as JSON on the client port: ``POST /v3/kv/range``, ``/v3/kv/put``,
``/v3/kv/txn``, ``/v3/kv/deleterange``, ``/v3/lease/grant``, ``/v3/lease/keepalive``,
``/v3/maintenance/status`` and the streaming ``/v3/watch``. Keys and values are base64 in
JSON, 64-bit integers are JSON strings, and fields at their default value are left out
(a failed txn has no ``succeeded``, a PUT event has no ``type``).

:class:`EtcdClient` is synchronous (``http.client``, one short connection per call) because
plait's store interface is synchronous. It is given every member's client URL; a call
goes to the member that answered last and, on a connection error, a timeout or an
"unavailable" answer (no leader, leader changed, request timed out: the member cannot
serve a linearizable request right now), moves on to the next member, round robin, until
``deadline`` seconds have passed; then it raises :class:`EtcdUnavailable` naming every
member and its last error. Other errors (a bad request) raise :class:`EtcdError` at once.

:class:`Watch` streams the events of a key range from a revision in a thread of the
caller's choosing; :meth:`Watch.close` ends it from any thread.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("plait.control.etcd")

DEFAULT_PORT = 2379
# gRPC status codes that mean "this member cannot serve it now, another one may"
_RETRYABLE_CODES = {4, 10, 14}  # DEADLINE_EXCEEDED, ABORTED, UNAVAILABLE
_RETRYABLE_TEXT = ("no leader", "leader changed", "timed out", "not capable", "stopped")


class EtcdError(Exception):
    """etcd refused a request (it is not something another member would accept)."""


class EtcdUnavailable(EtcdError):
    """No etcd member could serve the request before the deadline."""


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def prefix_end(prefix: str) -> str:
    """The ``range_end`` that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw).decode("latin-1")
        raw.pop()
    return "\0"


def parse_endpoints(spec: str | Sequence[str]) -> list[tuple[str, int]]:
    """``"127.0.0.1:2379,http://10.0.0.2:2379"`` (or ``etcd://`` a list) as (host, port)s."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[tuple[str, int]] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        if item.startswith("etcd://"):
            item = item[len("etcd://") :]
        if item.startswith("https://"):
            raise ValueError(f"{item}: TLS to etcd is not supported yet; use http://")
        if "://" not in item:
            item = "http://" + item
        parts = urlsplit(item)
        if not parts.hostname:
            raise ValueError(f"{item!r} is not an etcd endpoint (want host:port)")
        out.append((parts.hostname, parts.port or DEFAULT_PORT))
    if not out:
        raise ValueError("no etcd endpoints given (want host:port[,host:port...])")
    return out


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    lease: int

    @classmethod
    def from_json(cls, kv: dict[str, Any]) -> KeyValue:
        return cls(
            key=unb64(kv.get("key")).decode(),
            value=unb64(kv.get("value")),
            mod_revision=int(kv.get("mod_revision", 0)),
            lease=int(kv.get("lease", 0)),
        )


@dataclass(frozen=True)
class Event:
    type: str  # "PUT" or "DELETE"
    kv: KeyValue


def _retryable(status: int, body: Any) -> bool:
    if status in (502, 503, 504):
        return True
    if isinstance(body, dict):
        if int(body.get("code", 0) or 0) in _RETRYABLE_CODES:
            return True
        text = str(body.get("error") or body.get("message") or "").lower()
        return any(t in text for t in _RETRYABLE_TEXT)
    return False


class EtcdClient:
    """See the module docstring."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        timeout: float = 2.0,
        deadline: float = 15.0,
    ) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self.deadline = deadline
        self._index = 0
        self._lock = threading.Lock()

    def describe(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.endpoints)

    # -- transport ---------------------------------------------------------------------

    def _post_once(self, endpoint: tuple[str, int], path: str, body: dict[str, Any]) -> Any:
        conn = http.client.HTTPConnection(*endpoint, timeout=self.timeout)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = raw.decode("utf-8", "replace")
        if isinstance(decoded, dict) and "result" in decoded and path.endswith("keepalive"):
            decoded = decoded["result"]
        if resp.status == 200 and not (isinstance(decoded, dict) and "error" in decoded):
            return decoded
        if _retryable(resp.status, decoded):
            raise _MemberUnavailable(f"HTTP {resp.status}: {_error_text(decoded)}")
        raise EtcdError(f"etcd {path}: HTTP {resp.status}: {_error_text(decoded)}")

    def post(self, path: str, body: dict[str, Any], deadline: float | None = None) -> Any:
        """POST ``body`` to ``path`` on a member that can serve it (see module docstring)."""
        limit = time.monotonic() + (self.deadline if deadline is None else deadline)
        errors: dict[str, str] = {}
        delay = 0.05
        with self._lock:
            index = self._index
        tried = 0
        while True:
            endpoint = self.endpoints[index % len(self.endpoints)]
            try:
                result = self._post_once(endpoint, path, body)
            except (OSError, http.client.HTTPException, _MemberUnavailable) as exc:
                errors[f"{endpoint[0]}:{endpoint[1]}"] = str(exc) or type(exc).__name__
                log.debug("etcd %s on %s:%d failed: %s", path, *endpoint, exc)
            else:
                with self._lock:
                    self._index = index
                return result
            index += 1
            tried += 1
            if time.monotonic() >= limit:
                detail = "; ".join(f"{k}: {v}" for k, v in errors.items())
                raise EtcdUnavailable(
                    f"no etcd member could serve {path} (tried {self.describe()}): {detail}"
                )
            if tried % len(self.endpoints) == 0:  # a whole round failed: back off a little
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    # -- KV ----------------------------------------------------------------------------

    def range(
        self,
        key: str,
        range_end: str | None = None,
        revision: int = 0,
        limit: int = 0,
        sort_descending: bool = False,
    ) -> tuple[list[KeyValue], int]:
        """The key (or ``[key, range_end)``) and the store revision it was read at."""
        body: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end.encode("latin-1"))
        if revision:
            body["revision"] = revision
        if limit:
            body["limit"] = limit
        if sort_descending:
            body.update(sort_order="DESCEND", sort_target="KEY")
        resp = self.post("/v3/kv/range", body)
        kvs = [KeyValue.from_json(kv) for kv in resp.get("kvs", [])]
        return kvs, int(resp.get("header", {}).get("revision", 0))

    def get(self, key: str) -> KeyValue | None:
        kvs, _ = self.range(key)
        return kvs[0] if kvs else None

    def put(self, key: str, value: str | bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        resp = self.post("/v3/kv/put", body)
        return int(resp.get("header", {}).get("revision", 0))

    def delete(self, key: str, range_end: str | None = None) -> int:
        body: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end.encode("latin-1"))
        return int(self.post("/v3/kv/deleterange", body).get("deleted", 0))

    def txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]] | None = None,
    ) -> tuple[bool, list[dict[str, Any]]]:
        """Run a transaction (build the parts with :func:`compare_value` etc.); returns
        whether the compares held, and the responses of the branch that ran."""
        resp = self.post(
            "/v3/kv/txn", {"compare": compare, "success": success, "failure": failure or []}
        )
        return bool(resp.get("succeeded", False)), list(resp.get("responses", []))

    # -- leases ------------------------------------------------------------------------

    def grant(self, ttl: float) -> int:
        resp = self.post("/v3/lease/grant", {"TTL": max(1, round(ttl))})
        return int(resp["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew ``lease`` once; its new TTL in seconds, 0 if it has already expired."""
        resp = self.post("/v3/lease/keepalive", {"ID": str(lease)})
        return int(resp.get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self.post("/v3/lease/revoke", {"ID": str(lease)})

    # -- cluster -----------------------------------------------------------------------

    def member_status(self, endpoint: tuple[str, int]) -> dict[str, Any]:
        """``/v3/maintenance/status`` of one member (no failover): its ``member_id`` is in
        ``header``, the leader's id in ``leader``."""
        return dict(self._post_once(endpoint, "/v3/maintenance/status", {}))

    def watch(self, key: str, range_end: str | None, start_revision: int) -> Watch:
        return Watch(self, key, range_end, start_revision)


class _MemberUnavailable(Exception):
    pass


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)
    return str(body)[:200]


# -- transaction parts (pure) ----------------------------------------------------------


def compare_value(key: str, value: str) -> dict[str, Any]:
    return {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)}


def compare_absent(key: str) -> dict[str, Any]:
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def compare_mod_revision(key: str, revision: int) -> dict[str, Any]:
    """The key was last written at ``revision`` (0: the key is absent)."""
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def op_delete(key: str, range_end: str | None = None) -> dict[str, Any]:
    rng: dict[str, Any] = {"key": b64(key)}
    if range_end is not None:
        rng["range_end"] = b64(range_end.encode("latin-1"))
    return {"request_delete_range": rng}


def op_put(key: str, value: str | bytes, lease: int = 0) -> dict[str, Any]:
    put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        put["lease"] = str(lease)
    return {"request_put": put}


def op_range(key: str, range_end: str | None = None) -> dict[str, Any]:
    rng: dict[str, Any] = {"key": b64(key)}
    if range_end is not None:
        rng["range_end"] = b64(range_end.encode("latin-1"))
    return {"request_range": rng}


class Watch:
    """A ``/v3/watch`` stream on one member. Iterate for lists of events; the iteration
    ends (raising OSError/EtcdError) when the member goes away or etcd cancels the watch
    (``compacted`` is then set if the start revision was compacted): re-read and watch
    again from a newer revision, on any member."""

    def __init__(
        self, client: EtcdClient, key: str, range_end: str | None, start_revision: int
    ) -> None:
        self.client = client
        self.request: dict[str, Any] = {"key": b64(key), "start_revision": str(start_revision)}
        if range_end is not None:
            self.request["range_end"] = b64(range_end.encode("latin-1"))
        self.compacted = False
        self._conn: http.client.HTTPConnection | None = None
        self._closed = False

    def close(self) -> None:
        self._closed = True
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(2)

    def events(self, endpoint: tuple[str, int], idle: float = 30.0) -> Iterator[list[Event]]:
        conn = http.client.HTTPConnection(*endpoint, timeout=self.client.timeout)
        self._conn = conn
        try:
            conn.request(
                "POST",
                "/v3/watch",
                json.dumps({"create_request": self.request}),
                {"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            if resp.status != 200:
                raise EtcdError(f"etcd watch: HTTP {resp.status}: {resp.read()[:200]!r}")
            if conn.sock is not None:
                conn.sock.settimeout(idle)
            buf = b""
            decoder = json.JSONDecoder()
            while not self._closed:
                chunk = resp.read1(65536)
                if not chunk:
                    raise OSError("the etcd member closed the watch stream")
                buf += chunk
                text = buf.decode("utf-8", "replace")
                pos = 0
                batches: list[list[Event]] = []
                while True:
                    while pos < len(text) and text[pos] in " \r\n\t":
                        pos += 1
                    if pos >= len(text):
                        break
                    try:
                        msg, end = decoder.raw_decode(text, pos)
                    except ValueError:
                        break
                    pos = end
                    batches.append(self._parse(msg))
                buf = text[pos:].encode()
                for batch in batches:
                    if batch:
                        yield batch
        finally:
            self._conn = None
            conn.close()

    def _parse(self, msg: dict[str, Any]) -> list[Event]:
        if "error" in msg:
            raise EtcdError(f"etcd watch: {_error_text(msg['error'])}")
        result = msg.get("result", {})
        if result.get("canceled"):
            self.compacted = bool(result.get("compact_revision"))
            raise EtcdError(f"etcd cancelled the watch: {result.get('cancel_reason', '')}")
        return [
            Event(e.get("type", "PUT"), KeyValue.from_json(e.get("kv", {})))
            for e in result.get("events", [])
        ]
