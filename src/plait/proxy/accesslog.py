"""Access logs: one JSON line per request or TCP connection.

Every line has the same keys in the same order (:data:`KEYS`), so ``jq``, ``grep`` and a
person reading a terminal all find ``request_id`` in the same place on every hop; a
missing value is ``null``, and keys outside :data:`KEYS` follow in the caller's order.
``error`` is the Proxy-Status error type (DESIGN.md: the log line carries the same
error type as the header), ``""`` or ``null`` when the request succeeded.

The caller supplies ``time`` (the proxy's injected clock) and everything else; this
module formats and buffers, nothing more. Formatting is one ``json`` C-encoder call per
record; the request path's line (:meth:`AccessLog.request`) skips the dict and is
formatted from cached pieces, escaped by the same C encoder. The proxy's
``DataPlane.observe`` builds that same line itself (one f-string, no call per field,
times through :func:`decimal3`) and hands it to :attr:`AccessLog.write`;
tests/unit/proxy/test_observe.py holds it to :meth:`AccessLog.request`. :class:`BufferedWriter`
batches lines in memory and writes whole lines only, in
one ``write`` per flush, so lines never interleave or tear; the proxy flushes it on a
timer and at shutdown (``close``). Neither class is thread-safe: both belong to the
proxy's event loop.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping
from typing import IO, Any, Final, cast

__all__ = [
    "KEYS",
    "AccessLog",
    "BufferedWriter",
    "decimal3",
    "json_quote",
    "json_str",
    "request_prefix",
    "request_suffix",
    "trim3",
]

KEYS: tuple[str, ...] = (
    "time",
    "request_id",
    "direction",
    "source",
    "destination",
    "method",
    "path",
    "upstream",
    "status",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "error",
    "details",
    "node",
)
_KEYSET = frozenset(KEYS)

# allow_nan=False: "NaN" is not JSON; such a record is cleaned and encoded again.
_encode = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=True, check_circular=False, allow_nan=False, default=str
).encode


_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii
_format: Final = format


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def format_record(record: Mapping[str, Any]) -> str:
    """``record`` as one JSON line (with ``\\n``), keys in :data:`KEYS` order first."""
    ordered = {key: record.get(key) for key in KEYS}
    if not record.keys() <= _KEYSET:
        for key, value in record.items():
            if key not in _KEYSET:
                ordered[str(key)] = value
    try:
        return _encode(ordered) + "\n"
    except ValueError:  # a NaN or infinity somewhere
        return _encode(_finite(ordered)) + "\n"


def _str(value: str | None) -> str:
    """A JSON string (ASCII, escaped by the json C encoder), or ``null``."""
    return "null" if value is None else _quote(value)


json_str = _str  # public names for a caller that formats request lines itself
json_quote = _quote

# Below this, ``f"{x:.3f}"`` with trailing zeros dropped is ``repr(round(x, 3))``: both
# round correctly to 3 decimals (the same dtoa call), round() then yields the double
# nearest that decimal D, and repr() the shortest string that reads back as that double.
# D reads back as it; a different string of no more digits reads back to it only if
# within one ulp of D: any other multiple of 0.001 is at least 0.001 away, and the ulp
# is < 0.001 below 2**42; a string that is not a multiple of 0.001 has more significant
# digits than D. repr() writes fixed-point (at least one digit after the point) from 1e-4
# to 1e16 (and "-0.000" trims to "-0.0", as repr has it). test_observe.py checks
# ties, their neighbours and the bounds.
DECIMAL3_MAX = 1e12


def trim3(text: str) -> str:
    """``f"{x:.3f}"`` text without trailing zeros, keeping one digit after the point."""
    text = text.rstrip("0")
    return text + "0" if text[-1] == "." else text


# Below this, x * 1000 is under 2**30, so the product and the + 0.5 below are each
# within 2**-24 of exact: when the product's fraction is more than TIE_MARGIN away from
# one half, int(product + 0.5) is the integer nearest x * 1000 -- the number f"{x:.3f}"
# writes -- and its text is made from integers, with no float formatting. Nearer a tie
# (an exact one rounds half to even), the formatting decides.
FAST3_MAX = 1e6
TIE_MARGIN = 1e-6
# ".001" ... ".999" with trailing zeros dropped, and ".0": the text after the integer part
_FRACTIONS3: Final = tuple("." + f"{i:03d}".rstrip("0") if i else ".0" for i in range(1000))


def decimal3(x: float) -> str:
    """``repr(round(x, 3))``, byte for byte, at about a third of the cost."""
    if 0.0 < x < FAST3_MAX:  # (not a zero: -0.0 keeps its sign below)
        scaled = x * 1000.0
        fraction = scaled - int(scaled)
        if not -TIE_MARGIN < fraction - 0.5 < TIE_MARGIN:
            k = int(scaled + 0.5)
            return str(k // 1000) + _FRACTIONS3[k % 1000]
    if 0.0 <= x < DECIMAL3_MAX:
        text = _format(x, ".3f")  # f"{x:.3f}", without a str.format call compiled
        return trim3(text) if text[-1] == "0" else text
    return repr(round(x, 3))


class AccessLog:
    """Formats records and hands each line (ending in ``\\n``) to ``write``."""

    __slots__ = ("_write",)

    def __init__(self, write: Callable[[str], object]) -> None:
        self._write = write

    @property
    def write(self) -> Callable[[str], object]:
        """Where lines go: for a caller that formats request lines itself (the proxy's
        ``DataPlane.observe``, the same bytes as :meth:`request`)."""
        return self._write

    def log(self, record: Mapping[str, Any]) -> None:
        self._write(format_record(record))

    def request(
        self,
        time: float,
        request_id: str,
        prefix: str,
        method: str | None,
        path: str | None,
        upstream: str | None,
        status: int,
        duration_ms: float,
        bytes_in: int,
        bytes_out: int,
        error: str | None,
        details: str | None,
        suffix: str,
    ) -> None:
        """The request path's line, formatted without a dict: the same bytes as
        :meth:`log` of the same record (keys in :data:`KEYS` order, then ``peer`` and
        ``rbac`` from ``suffix``). ``prefix`` is ``request_prefix(...)``'s, ``suffix``
        ``request_suffix(...)``'s; both are cached by the caller."""
        self._write(
            f'{{"time":{time!r},"request_id":{_quote(request_id)},{prefix}'
            f'"method":{_str(method)},"path":{_str(path)},"upstream":{_str(upstream)},'
            f'"status":{status},"duration_ms":{duration_ms!r},"bytes_in":{bytes_in},'
            f'"bytes_out":{bytes_out},"error":{_str(error)},"details":{_str(details)},'
            f"{suffix}}}\n"
        )


def request_prefix(direction: str, source: str, destination: str) -> str:
    """The ``direction``, ``source``, ``destination`` members of a request line."""
    return (
        f'"direction":{_quote(direction)},"source":{_quote(source)},'
        f'"destination":{_quote(destination)},'
    )


def request_suffix(node: str, peer: str | None, rbac: str | None) -> str:
    """The ``node``, ``peer``, ``rbac`` members closing a request line."""
    return f'"node":{_quote(node)},"peer":{_str(peer)},"rbac":{_str(rbac)}'


class BufferedWriter:
    """Buffers whole lines; writes them to ``fileobj`` in one call per flush.

    ``fileobj`` is a text file (``sys.stdout``) or a binary one (``open(p, "ab")``).
    A flush happens when the buffer reaches ``max_buffer`` bytes, on :meth:`flush` and on
    :meth:`close`. A write error drops that batch (counted in ``dropped_lines``, the
    error kept in ``last_error``) rather than failing the request that triggered it.
    """

    __slots__ = (
        "_binary",
        "_buffer",
        "_closed",
        "_fileobj",
        "_max",
        "_owns",
        "_size",
        "_text",
        "dropped_lines",
        "last_error",
        "written_lines",
    )

    def __init__(
        self, fileobj: IO[str] | IO[bytes], max_buffer: int = 64 * 1024, owns_file: bool = False
    ) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1 byte")
        self._fileobj = fileobj
        self._binary: IO[bytes] | None = None
        self._text: IO[str] | None = None
        if isinstance(fileobj, io.TextIOBase) or "b" not in getattr(fileobj, "mode", "b"):
            self._text = cast("IO[str]", fileobj)
        else:
            self._binary = cast("IO[bytes]", fileobj)
        self._max = max_buffer
        self._owns = owns_file
        self._buffer: list[str] = []
        self._size = 0
        self._closed = False
        self.dropped_lines = 0
        self.written_lines = 0
        self.last_error: OSError | None = None

    def write(self, line: str) -> None:
        """Queue one line (a missing trailing newline is added)."""
        if self._closed:
            raise ValueError("write to a closed BufferedWriter")
        if line[-1:] != "\n":
            line += "\n"
        self._buffer.append(line)
        size = self._size = self._size + len(line)
        if size >= self._max:
            self.flush()

    @property
    def pending(self) -> int:
        """Characters buffered and not yet written."""
        return self._size

    def flush(self) -> None:
        """Write every buffered line now, in one call, then flush ``fileobj``."""
        if not self._buffer:
            return
        lines = self._buffer
        self._buffer = []
        self._size = 0
        data = "".join(lines)
        try:
            if self._binary is not None:
                self._binary.write(data.encode("utf-8"))
            elif self._text is not None:
                self._text.write(data)
            self._fileobj.flush()
        except OSError as exc:
            self.dropped_lines += len(lines)
            self.last_error = exc
        else:
            self.written_lines += len(lines)

    def close(self) -> None:
        """Flush, then close ``fileobj`` if this writer owns it. Idempotent."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._owns:
            self._fileobj.close()

    def __enter__(self) -> BufferedWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
