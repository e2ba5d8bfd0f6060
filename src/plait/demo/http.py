"""Just enough HTTP/1.1 over asyncio streams for the demo apps.

The demo apps are test peers, not the hot path, so this favours being short and strict
over being fast: a message head is read whole (at most ``MAX_HEAD`` bytes), a body is
framed by ``Content-Length`` or ``chunked`` (requests without either have no body;
responses without either run to the end of the connection), and anything else is a
:class:`HttpError` -- the peer's fault, so a server answers 400 and a client reports the
downstream as broken. :class:`ConnectionPool` is the client side: kept-alive
connections per address.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
MAX_IDLE_PER_ADDRESS = 16


class HttpError(Exception):
    """The peer sent something that is not the HTTP/1.1 we read."""


@dataclass(frozen=True)
class Head:
    """A request or response head.

    ``start`` is ``(method, target, version)`` for a request and
    ``(version, status, reason)`` for a response. Header names keep their case.
    """

    start: tuple[str, str, str]
    headers: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        """The last value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        found = None
        for key, value in self.headers:
            if key.lower() == name:
                found = value
        return found

    @property
    def version(self) -> str:
        """``HTTP/1.1`` or ``HTTP/1.0`` (a method never starts with ``HTTP/``)."""
        return self.start[0] if self.start[0].startswith("HTTP/") else self.start[2]

    @property
    def status(self) -> int:
        """The status code of a response head."""
        return int(self.start[1])

    def keep_alive(self) -> bool:
        """Whether the connection may carry another message after this one."""
        tokens = {t.strip().lower() for t in (self.get("connection") or "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


def parse_head(data: bytes, *, response: bool) -> Head:
    """Parse the bytes of a head (up to and including the blank line)."""
    lines = data.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) == 2 and response:
        parts.append("")
    if len(parts) != 3:
        raise HttpError(f"malformed start line {lines[0]!r}")
    version = parts[0] if response else parts[2]
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(f"unsupported protocol version {version!r}")
    if response and not (parts[1].isdigit() and len(parts[1]) == 3):
        raise HttpError(f"malformed status code {parts[1]!r}")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(f"malformed header line {line!r}")
        headers.append((name, value.strip()))
    return Head(start=(parts[0], parts[1], parts[2]), headers=tuple(headers))


async def read_head(reader: asyncio.StreamReader, *, response: bool) -> Head | None:
    """Read one head; None if the peer closed the connection cleanly before it."""
    try:
        data = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise HttpError("connection closed in the middle of a message head") from exc
    except asyncio.LimitOverrunError as exc:
        raise HttpError(f"message head larger than {MAX_HEAD} bytes") from exc
    return parse_head(data.lstrip(b"\r\n"), response=response)


async def read_body(
    reader: asyncio.StreamReader, head: Head, *, request_method: str | None = None
) -> tuple[bytes, bool]:
    """Read the body that follows ``head``; returns ``(body, framed)``.

    ``request_method`` is given when ``head`` is a response (to the request with that
    method). ``framed`` is False when the body ran to the end of the connection, which
    then cannot be reused.
    """
    if request_method is not None and (
        request_method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200
    ):
        return b"", True
    if "chunked" in (head.get("transfer-encoding") or "").lower():
        return await _read_chunked(reader), True
    length = head.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > MAX_BODY:
            raise HttpError(f"bad Content-Length {length!r}")
        try:
            return await reader.readexactly(int(length)), True
        except asyncio.IncompleteReadError as exc:
            raise HttpError("connection closed in the middle of a body") from exc
    if request_method is None:
        return b"", True
    return await reader.read(MAX_BODY), False


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    try:
        while True:
            line = await reader.readuntil(b"\r\n")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise HttpError(f"bad chunk size {size_text!r}") from exc
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers are read and dropped
                return bytes(body)
            if len(body) + size > MAX_BODY:
                raise HttpError(f"body larger than {MAX_BODY} bytes")
            chunk = await reader.readexactly(size + 2)
            body += chunk[:-2]
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise HttpError("connection closed in the middle of a chunked body") from exc


def encode(start_line: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    """Serialise a message; ``Content-Length`` is added unless a header sets it."""
    lines = [start_line]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if not any(name.lower() == "content-length" for name, _ in headers):
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


@dataclass
class ConnectionPool:
    """A client that keeps connections alive per address and reuses them (LIFO).

    A request whose reused connection turns out closed by the peer before any answer is
    sent once more on a new connection; any other failure is raised.
    """

    idle: dict[tuple[str, int], list[_Conn]] = field(default_factory=dict)

    async def request(
        self,
        address: tuple[str, int],
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes = b"",
    ) -> tuple[Head, bytes]:
        data = encode(f"{method} {target} HTTP/1.1", headers, body)
        for attempt in range(2):
            conn, reused = await self._acquire(address)
            try:
                conn.writer.write(data)
                await conn.writer.drain()
                head = await read_head(conn.reader, response=True)
                if head is None:
                    raise ConnectionResetError(f"{address[0]}:{address[1]} closed the connection")
            except (OSError, HttpError):
                conn.close()
                if reused and attempt == 0:
                    continue
                raise
            try:
                reply, framed = await read_body(conn.reader, head, request_method=method)
            except BaseException:
                conn.close()
                raise
            if framed and head.keep_alive():
                self._release(address, conn)
            else:
                conn.close()
            return head, reply
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _acquire(self, address: tuple[str, int]) -> tuple[_Conn, bool]:
        pool = self.idle.get(address, [])
        while pool:
            conn = pool.pop()
            if conn.usable():
                return conn, True
            conn.close()
        reader, writer = await asyncio.open_connection(*address, limit=MAX_HEAD)
        return _Conn(reader, writer), False

    def _release(self, address: tuple[str, int], conn: _Conn) -> None:
        pool = self.idle.setdefault(address, [])
        if len(pool) < MAX_IDLE_PER_ADDRESS:
            pool.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for pool in self.idle.values():
            for conn in pool:
                conn.close()
        self.idle.clear()
