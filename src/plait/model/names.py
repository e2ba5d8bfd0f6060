"""Names, label keys, SPIFFE ids and durations: the small pure pieces of the model.

No pydantic here: the proxy (:mod:`plait.proxy.bootstrap`, :mod:`plait.proxy.xds_decode`)
imports these without pulling in the resource models (docs/internals.md, "Memory");
:mod:`plait.model.resources` re-exports them and wraps :func:`parse_duration` into its
pydantic ``Duration`` type.
"""

from __future__ import annotations

import math
import re

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62})$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

SPIFFE_ID_RE = re.compile(
    r"^spiffe://([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?)/svc/([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)$"
)
"""``spiffe://<trust domain>/svc/<service>``: the only SPIFFE id shape plait issues."""


def parse_duration(value: object, *, allow_zero: bool = False) -> float:
    """Parse ``"250ms"``/``"5s"``/``"1m"``/``"2h"`` or a number of seconds into seconds;
    zero only with ``allow_zero`` (for "off", e.g. a proxy's ``drain_time: 0s``)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '250ms' or '5s'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"expected a duration such as '250ms' or '5s', got {value!r}")
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError("expected a duration such as '250ms' or '5s'")
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number, got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(
            "a duration must not be negative"
            if allow_zero
            else "a duration must be greater than zero"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """The inverse of :func:`parse_duration`: ``0.25`` -> ``"250ms"``, ``60.0`` -> ``"1m"``.

    Picks the largest unit that gives a whole count and reads back to exactly the same
    float; otherwise plain decimal seconds (``"0.0015s"``), which always reads back exactly.
    """
    for unit in ("h", "m", "s", "ms"):
        count = seconds / _UNIT_SECONDS[unit]
        if count >= 1 and count.is_integer():
            text = f"{int(count)}{unit}"
            if parse_duration(text) == seconds:
                return text
    from decimal import Decimal  # rarely needed; the proxy imports this module (memory)

    return f"{Decimal(repr(seconds)):f}s"
