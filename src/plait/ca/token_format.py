"""The shape of a join token's secret text: ``plait-jt.<id>.<secret>`` (pure, tiny).

Split from :mod:`plait.ca.tokens` so that the proxy's bootstrap can check a token's shape
without importing the CA's token table (docs/internals.md, "Memory").
"""

from __future__ import annotations

PREFIX = "plait-jt"
ID_BYTES = 8


def token_id_of(secret: str) -> str | None:
    """The id part of a secret text, or None if it is not shaped like one."""
    parts = secret.split(".")
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != 2 * ID_BYTES:
        return None
    return parts[1]
