"""Last-known-good config on disk: the xDS resources the proxy last ACKed (docs/resilience.md).

A proxy that restarts while the control plane is down still serves traffic: every
time the xDS client ACKs a response, the raw resources of every type (the
``google.protobuf.Any`` values exactly as the control plane sent them), their versions,
the time and the trust bundle are written to ``<data_dir>/lkg.dat``; at start, if the
control plane does not answer, that file is loaded and served.

The file: one ASCII header line, then the payload (UTF-8 JSON)::

    PLAIT-LKG 1 sha256=<64 lowercase hex digits of the payload> size=<payload bytes>\\n
    {"node_id": ..., "saved_at": <unix time>, "versions": {<type url>: <version>},
     "resources": {<type url>: [<base64 of a serialized Any>, ...]},
     "trust_bundle": <PEM or null>}

Rules:

- Loading validates exactly like a live config: each type's resources go through
  :func:`~plait.proxy.xds_decode.apply_response` in ``PUSH_ORDER``. A file that is empty,
  truncated, not ours, fails its checksum or holds resources outside the subset raises
  :class:`LkgError` naming the file; nothing of it is applied (all or nothing).
- Writing is atomic (temp file, fsync, rename, fsync of the directory): a crash leaves the
  old file or the new one, never a mix. :class:`LkgWriter` does it off the event loop
  (``asyncio.to_thread``) and coalesces bursts: only the newest state is written.

Everything but :class:`LkgWriter` and the two file functions is pure.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from plait import fsutil
from plait.proxy.runtime import ProxyConfig, UnsupportedConfig
from plait.proxy.xds_decode import apply_response
from plait.xds.types import PUSH_ORDER, short_name

log = logging.getLogger("plait.proxy.lkg")

LKG_FILE = "lkg.dat"
MAGIC = b"PLAIT-LKG "
FORMAT = 1
_HEADER_RE = re.compile(
    rb"PLAIT-LKG ([1-9][0-9]{0,3}) sha256=([0-9a-f]{64}) size=(0|[1-9][0-9]{0,11})"
)
_MAX_HEADER = 128

__all__ = [
    "LKG_FILE",
    "LkgError",
    "LkgMeta",
    "LkgWriter",
    "config_from_payload",
    "decode_file",
    "encode_file",
    "lkg_path",
    "load_lkg",
    "make_payload",
    "write_atomic",
]


class LkgError(ValueError):
    """A last-known-good file that cannot be used; ``str()`` starts with its path."""


@dataclass(frozen=True)
class LkgMeta:
    """What a loaded file says about itself."""

    path: str
    node_id: str
    saved_at: float  # unix time of the write
    versions: dict[str, str]  # type url -> version ACKed
    trust_bundle: str | None  # PEM
    resources: dict[str, list[bytes]]  # type url -> serialized Any, as stored

    @property
    def saved_at_iso(self) -> str:
        return iso_time(self.saved_at)

    @property
    def version(self) -> str:
        """One short label for the whole config: the versions in ``PUSH_ORDER``."""
        return version_label(self.versions)


def iso_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def version_label(versions: Mapping[str, str]) -> str:
    """``CDS=abc,EDS=def,...`` over the types present, in ``PUSH_ORDER``."""
    return ",".join(f"{short_name(t)}={versions[t]}" for t in PUSH_ORDER if t in versions)


def lkg_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / LKG_FILE


# --- pure: payload and envelope ----------------------------------------------------------


def make_payload(
    node_id: str,
    saved_at: float,
    versions: Mapping[str, str],
    resources: Mapping[str, Sequence[bytes]],
    trust_bundle: str | None,
) -> dict[str, Any]:
    """The JSON payload; ``resources`` are serialized ``Any`` messages per type url."""
    return {
        "node_id": node_id,
        "saved_at": saved_at,
        "versions": dict(versions),
        "resources": {
            t: [base64.b64encode(r).decode("ascii") for r in resources[t]]
            for t in PUSH_ORDER
            if t in resources
        },
        "trust_bundle": trust_bundle,
    }


def encode_file(payload: Mapping[str, Any]) -> bytes:
    """Header line + payload bytes."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    digest = hashlib.sha256(body).hexdigest()
    return b"%s%d sha256=%s size=%d\n" % (MAGIC, FORMAT, digest.encode("ascii"), len(body)) + body


def decode_file(data: bytes, path: str) -> dict[str, Any]:
    """The payload of a file's bytes, or :class:`LkgError` saying what is wrong."""
    if not data:
        raise LkgError(f"{path}: empty file (a write was interrupted, or it was truncated)")
    end = data.find(b"\n", 0, _MAX_HEADER)
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):
            raise LkgError(f"{path}: truncated ({len(data)} bytes, inside the header)")
        raise LkgError(
            f"{path}: not a plait last-known-good file (no {MAGIC.decode().strip()} header)"
        )
    if end < 0:
        if len(data) < _MAX_HEADER:
            raise LkgError(f"{path}: truncated ({len(data)} bytes, inside the header)")
        raise LkgError(f"{path}: not a plait last-known-good file (header too long)")
    match = _HEADER_RE.fullmatch(data[:end])
    if match is None:
        raise LkgError(f"{path}: not a plait last-known-good file (malformed header)")
    fmt, digest, size = int(match[1]), match[2].decode("ascii"), int(match[3])
    if fmt != FORMAT:
        raise LkgError(f"{path}: format {fmt} is not supported (this proxy reads format {FORMAT})")
    body = data[end + 1 :]
    if len(body) < size:
        raise LkgError(f"{path}: truncated ({len(body)} of {size} payload bytes)")
    if len(body) > size:
        raise LkgError(f"{path}: {len(body) - size} bytes of trailing data after the payload")
    actual = hashlib.sha256(body).hexdigest()
    if actual != digest:
        raise LkgError(
            f"{path}: checksum mismatch (header sha256 {digest[:12]}..., payload "
            f"{actual[:12]}...): the file is corrupt"
        )
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise LkgError(f"{path}: payload is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise LkgError(f"{path}: payload is not a JSON object")
    return payload


def config_from_payload(payload: Mapping[str, Any], path: str) -> tuple[ProxyConfig, LkgMeta]:
    """Rebuild the config through the live decode path, all types or nothing."""
    versions = payload.get("versions")
    resources = payload.get("resources")
    saved_at = payload.get("saved_at")
    node_id = payload.get("node_id", "")
    bundle = payload.get("trust_bundle")
    if (
        not isinstance(versions, dict)
        or not isinstance(resources, dict)
        or not isinstance(saved_at, int | float)
        or not isinstance(node_id, str)
        or not (bundle is None or isinstance(bundle, str))
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in versions.items())
    ):
        raise LkgError(f"{path}: payload lacks node_id, saved_at, versions or resources")
    unknown = sorted(set(resources) - set(PUSH_ORDER))
    if unknown:
        raise LkgError(f"{path}: unknown resource type {unknown[0]!r}")
    cfg = ProxyConfig()
    raw: dict[str, list[bytes]] = {}
    for type_url in PUSH_ORDER:
        if type_url not in resources:
            continue
        items = resources[type_url]
        if not isinstance(items, list):
            raise LkgError(f"{path}: {short_name(type_url)} resources are not a list")
        anys = []
        raw[type_url] = []
        for i, item in enumerate(items):
            try:
                if not isinstance(item, str):
                    raise ValueError("not a string")
                raw[type_url].append(base64.b64decode(item, validate=True))
                anys.append(any_pb2.Any.FromString(raw[type_url][-1]))
            except (ValueError, binascii.Error, DecodeError) as exc:
                raise LkgError(f"{path}: {short_name(type_url)} resource {i}: {exc}") from None
        try:
            cfg = apply_response(cfg, type_url, anys, version=versions.get(type_url, ""))
        except UnsupportedConfig as exc:
            raise LkgError(f"{path}: stored {short_name(type_url)} refused: {exc}") from None
    meta = LkgMeta(path, node_id, float(saved_at), dict(versions), bundle, raw)
    return cfg, meta


def trust_bundle_of(config: ProxyConfig) -> str | None:
    secret = config.secrets.get("trust-bundle")
    if secret is None:
        return None
    return secret.trusted_ca.decode("ascii", errors="replace")


# --- the file ----------------------------------------------------------------------------


def load_lkg(path: str | os.PathLike[str]) -> tuple[ProxyConfig, LkgMeta]:
    """Read and validate a last-known-good file; FileNotFoundError if there is none."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise LkgError(f"{name}: cannot read: {exc}") from None
    return config_from_payload(decode_file(data, name), name)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Temp file in the same directory, fsync, rename over ``path``, fsync the directory."""
    fsutil.write_atomic(path, data, 0o600, make_parents=True, fsync_dir=True)


class LkgWriter:
    """Writes the newest ACKed state off the event loop; a burst becomes one or two writes.

    :meth:`submit` is cheap (it keeps a reference); a single task serializes and writes in
    a thread. ``on_error`` (e.g. a metric) hears about failed writes; they never raise.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        node_id: str,
        *,
        clock: Callable[[], float],
        on_written: Callable[[float], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.node_id = node_id
        self._clock = clock
        self._on_written = on_written
        self._on_error = on_error
        self._pending: tuple[ProxyConfig, dict[str, list[Any]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.writes = 0
        self.last_error: str | None = None

    def submit(self, config: ProxyConfig, resources: Mapping[str, Sequence[Any]]) -> None:
        """Write ``config``'s versions and ``resources`` (``Any`` protos or their bytes)."""
        self._pending = (config, {t: list(r) for t, r in resources.items()})
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="lkg-write")

    async def _drain(self) -> None:
        while self._pending is not None:
            config, resources = self._pending
            self._pending = None
            saved_at = self._clock()
            try:
                await asyncio.to_thread(self._write, config, resources, saved_at)
            except OSError as exc:
                self.last_error = f"{self.path}: {exc}"
                log.error("cannot write the last-known-good config: %s", self.last_error)
                if self._on_error is not None:
                    self._on_error(self.last_error)
                continue
            self.writes += 1
            self.last_error = None
            if self._on_written is not None:
                self._on_written(saved_at)

    def _write(self, config: ProxyConfig, resources: dict[str, list[Any]], saved_at: float) -> None:
        """In a worker thread: serialize, encode, write."""
        blobs = {t: serialized(r) for t, r in resources.items()}
        payload = make_payload(
            self.node_id, saved_at, config.versions, blobs, trust_bundle_of(config)
        )
        write_atomic(self.path, encode_file(payload))

    async def flush(self) -> None:
        """Wait for the pending write (at shutdown, in tests)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)


def serialized(resources: Sequence[Any]) -> list[bytes]:
    """``Any`` protos (or bytes already) as bytes."""
    return [r if isinstance(r, bytes) else r.SerializeToString() for r in resources]
