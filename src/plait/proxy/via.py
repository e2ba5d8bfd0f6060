"""The ``Via`` header (RFC 9110 section 7.6.3): every plait hop appends itself.

An entry is ``<received-protocol> <pseudonym>``, e.g. ``1.1 host-a``: the protocol
version of the message as the proxy received it, then the node id made into a token
(characters outside RFC 9110 ``tchar`` become ``-``) so that a node id can never break
the header's syntax. Build the entry once per node and protocol (at startup), then
append it per message with :func:`append_via`.
"""

from __future__ import annotations

from typing import overload

__all__ = ["append_via", "pseudonym", "via_entry"]

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def pseudonym(node_id: str) -> str:
    """``node_id`` as an RFC 9110 token; ``plait`` if nothing is left of it."""
    token = "".join(c if c in _TCHAR else "-" for c in node_id[:128]).strip("-")
    return token or "plait"


def via_entry(node_id: str, protocol: str = "1.1") -> str:
    """This hop's Via entry: ``"1.1 <pseudonym>"`` (``protocol`` is ``"2"`` for HTTP/2)."""
    return f"{protocol} {pseudonym(node_id)}"


@overload
def append_via(existing: str | None, ours: str) -> str: ...
@overload
def append_via(existing: bytes | None, ours: bytes) -> bytes: ...
def append_via(existing: str | bytes | None, ours: str | bytes) -> str | bytes:
    """The Via value with ``ours`` appended (``existing, ours``), or ``ours`` alone."""
    if not existing:
        return ours
    if isinstance(existing, bytes) and isinstance(ours, bytes):
        return existing + b", " + ours
    if isinstance(existing, str) and isinstance(ours, str):
        return f"{existing}, {ours}"
    raise TypeError("append_via(): existing and ours must both be str or both be bytes")
