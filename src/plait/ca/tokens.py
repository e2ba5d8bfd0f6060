"""Join tokens: how a new workload proves it may get a certificate for a service.

An operator creates a token for one service (``plait token create orders --ttl 1h``) and
hands the secret to the host that runs it; the proxy sends it with its first CSR. A token
is reusable until it expires or is revoked (several instances of a service may join with
one token); renewals later authenticate with the current certificate instead.

The secret text is ``plait-jt.<id>.<secret>``: the public token id (16 hex digits) and
32 random bytes (256 bits, base64url). It is shown once, at creation; the CA keeps only
``sha256(secret text)``. No salt and no slow hash are needed, and that is deliberate:
salts and key stretching protect *low-entropy* human passwords against precomputed tables
and guessing. A uniformly random 256-bit secret cannot be guessed or tabulated
(2^256 candidates), two tokens never share a hash, and the id is in the text anyway, so a
plain SHA-256 is already a one-way, collision-free verifier; a stolen store yields no
usable secret.

:meth:`JoinTokens.verify` answers a :class:`TokenCheck`: ``ok``, or a reason. A secret
whose hash does not match anything is ``unknown`` whatever its id says, so the reasons
``revoked``, ``expired`` and ``wrong service`` are only told to someone holding the real
secret. Hashes are compared in constant time.

Pure: time (``now``) and randomness (``rng(n) -> n bytes``) are passed in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from plait.ca.spiffe import CONTROL_SERVICE, check_service
from plait.ca.token_format import ID_BYTES, PREFIX, token_id_of

if TYPE_CHECKING:  # plait.ca.profile needs cryptography; the control plane imports this
    from plait.ca.profile import Rng

SECRET_BYTES = 32
MIN_TTL = timedelta(minutes=1)
MAX_TTL = timedelta(days=30)
RESERVED_SERVICES = frozenset({CONTROL_SERVICE})

OK, UNKNOWN, EXPIRED, REVOKED, WRONG_SERVICE = (
    "ok",
    "unknown",
    "expired",
    "revoked",
    "wrong service",
)
ACTIVE = "active"


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    """What is stored for a token: never the secret, only its hash."""

    id: str
    service: str
    secret_hash: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return REVOKED
        return EXPIRED if now >= self.expires_at else ACTIVE

    def to_dict(self, now: datetime) -> dict[str, Any]:
        """The public view (no hash): id, service, times, state."""
        return {
            "id": self.id,
            "service": self.service,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "revoked_at": None if self.revoked_at is None else _iso(self.revoked_at),
            "state": self.state(now),
        }


@dataclass(frozen=True)
class TokenCheck:
    """The answer of :meth:`JoinTokens.verify`: ``reason`` is ``"ok"`` or why not."""

    reason: str
    token_id: str | None = None  # set once the secret matched a token

    @property
    def ok(self) -> bool:
        return self.reason == OK


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class JoinTokens:
    """The token table, in memory; the caller persists records it gets back."""

    def __init__(self, records: Iterable[TokenRecord] = ()) -> None:
        self._records = {r.id: r for r in records}

    def create(self, service: str, ttl: timedelta, now: datetime, rng: Rng) -> tuple[str, str]:
        """A new token for ``service``: ``(token id, secret text)``. The secret is not
        kept; show it once. Raises ValueError for a bad service name or ttl."""
        check_service(service)
        if service in RESERVED_SERVICES:
            raise ValueError(f"{service!r} is reserved for the control plane itself")
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise ValueError(f"a token ttl must be between {MIN_TTL} and {MAX_TTL}, got {ttl}")
        token_id = rng(ID_BYTES).hex()
        if token_id in self._records:
            raise ValueError("token id collision: try again")
        raw = base64.urlsafe_b64encode(rng(SECRET_BYTES)).rstrip(b"=").decode("ascii")
        secret = f"{PREFIX}.{token_id}.{raw}"
        self._records[token_id] = TokenRecord(
            token_id, service, secret_hash(secret), now, now + ttl
        )
        return token_id, secret

    def verify(self, secret: str, service: str, now: datetime) -> TokenCheck:
        """Whether ``secret`` allows a certificate for ``service`` at ``now``."""
        token_id = token_id_of(secret)
        record = None if token_id is None else self._records.get(token_id)
        if record is None or not hmac.compare_digest(record.secret_hash, secret_hash(secret)):
            return TokenCheck(UNKNOWN)
        if record.revoked_at is not None:
            return TokenCheck(REVOKED, record.id)
        if now >= record.expires_at:
            return TokenCheck(EXPIRED, record.id)
        if record.service != service:
            return TokenCheck(WRONG_SERVICE, record.id)
        return TokenCheck(OK, record.id)

    def revoke(self, token_id: str, now: datetime) -> TokenRecord:
        """Revoke a token (idempotent). Raises KeyError for an unknown id."""
        record = self._records[token_id]
        if record.revoked_at is None:
            record = replace(record, revoked_at=now)
            self._records[token_id] = record
        return record

    def get(self, token_id: str) -> TokenRecord | None:
        return self._records.get(token_id)

    def list(self) -> list[TokenRecord]:
        """Every token, oldest first."""
        return sorted(self._records.values(), key=lambda r: (r.created_at, r.id))
