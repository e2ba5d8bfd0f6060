"""HPACK (RFC 7541) for the proxy's xDS transport (:mod:`plait.proxy.ads_h2_frames`):
a decoder with the static and dynamic tables and Huffman strings, and an encoder that
writes literals only (never indexed, so the peer's table is never touched by us).

Pure: no I/O. Malformed input raises :class:`HpackError`; the caller answers it as the
peer's HTTP/2 COMPRESSION_ERROR.
"""

from __future__ import annotations

from collections import deque

HEADER_TABLE_SIZE = 4096


class HpackError(Exception):
    """A header block the peer should not have sent (a COMPRESSION_ERROR)."""


# Huffman code lengths of symbols 0..256 (5 + letter offset); the code is canonical, so the
# codes follow from the lengths (RFC 7541 Appendix B).
_HUFFMAN_LENGTHS = (
    "ISXXXXXXXTZXXZXXXXXXXXZXXXXXXXXXBFFHIBDGFFDGDBBBAAABBBBBBBCDKBHFIBCCCCCCCCCCCCCCCCCCCCCC"
    "DCDIOIJBKABABABBBACCBBBABCBAABCCCCCKGJIXPRPPRRRSRSSSSSTSTTRSTSSSSQRSRSSTRQPRRSSQSRRTQRSS"
    "QQRQSRSSPRRRSRRSVVPORSRUVVVWWVTUOQVWWVWTQQVVXWWWPTPQRQQSRRUUTTVSVWVVWWWWWXWWWWWVZ"
)


def _huffman_decoding_table() -> dict[tuple[int, int], int]:
    lengths = [ord(c) - ord("A") + 5 for c in _HUFFMAN_LENGTHS]
    table: dict[tuple[int, int], int] = {}
    code, previous = -1, min(lengths)
    for symbol in sorted(range(257), key=lambda s: (lengths[s], s)):
        code = (code + 1) << (lengths[symbol] - previous)
        previous = lengths[symbol]
        table[(previous, code)] = symbol
    return table


_HUFFMAN = _huffman_decoding_table()
EOS = 256


def huffman_decode(data: bytes) -> bytes:
    out = bytearray()
    code = bits = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = code << 1 | (byte >> shift) & 1
            bits += 1
            symbol = _HUFFMAN.get((bits, code))
            if symbol is not None:
                if symbol == EOS:
                    raise HpackError("EOS in a Huffman string")
                out.append(symbol)
                code = bits = 0
            elif bits > 30:
                raise HpackError("invalid Huffman code")
    if bits > 7 or code != (1 << bits) - 1:
        raise HpackError("invalid Huffman padding")
    return bytes(out)


_STATIC = [
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
    (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"),
    (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
]  # fmt: skip
_EMPTY_VALUED = (
    "accept-language accept-ranges accept access-control-allow-origin age allow "
    "authorization cache-control content-disposition content-encoding content-language "
    "content-length content-location content-range content-type cookie date etag expect "
    "expires from host if-match if-modified-since if-none-match if-range "
    "if-unmodified-since last-modified link location max-forwards proxy-authenticate "
    "proxy-authorization range referer refresh retry-after server set-cookie "
    "strict-transport-security transfer-encoding user-agent vary via www-authenticate"
)
_STATIC += [(name, "") for name in str.split(_EMPTY_VALUED)]


def _integer(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """An HPACK integer whose prefix is the low ``prefix_bits`` of ``block[pos]``."""
    limit = (1 << prefix_bits) - 1
    value = block[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        if pos >= len(block) or shift > 28:
            raise HpackError("truncated or oversized integer")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _string(block: bytes, pos: int) -> tuple[str, int]:
    if pos >= len(block):
        raise HpackError("truncated string")
    huffman = block[pos] & 0x80
    length, pos = _integer(block, pos, 7)
    if pos + length > len(block):
        raise HpackError("truncated string")
    raw = block[pos : pos + length]
    return (huffman_decode(raw) if huffman else raw).decode("latin-1"), pos + length


class HpackDecoder:
    """Decodes header blocks; keeps the dynamic table (RFC 7541 section 4) between them."""

    def __init__(self, max_table_size: int = HEADER_TABLE_SIZE) -> None:
        self.max_allowed = max_table_size  # what we advertised
        self.max_size = max_table_size
        self.size = 0
        self.dynamic: deque[tuple[str, str]] = deque()

    def _lookup(self, index: int) -> tuple[str, str]:
        if 1 <= index <= len(_STATIC):
            return _STATIC[index - 1]
        if 0 < index - len(_STATIC) <= len(self.dynamic):
            return self.dynamic[index - len(_STATIC) - 1]
        raise HpackError(f"no header at index {index}")

    def _add(self, name: str, value: str) -> None:
        self.dynamic.appendleft((name, value))
        self.size += len(name) + len(value) + 32
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size:
            name, value = self.dynamic.pop()
            self.size -= len(name) + len(value) + 32

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        pos = 0
        while pos < len(block):
            first = block[pos]
            if first & 0x80:  # indexed
                index, pos = _integer(block, pos, 7)
                headers.append(self._lookup(index))
                continue
            if first & 0xE0 == 0x20:  # dynamic table size update
                size, pos = _integer(block, pos, 5)
                if size > self.max_allowed:
                    raise HpackError("table size above the limit")
                self.max_size = size
                self._evict()
                continue
            indexing = bool(first & 0x40)
            index, pos = _integer(block, pos, 6 if indexing else 4)
            if index:
                name = self._lookup(index)[0]
            else:
                name, pos = _string(block, pos)
            value, pos = _string(block, pos)
            headers.append((name, value))
            if indexing:
                self._add(name, value)
        return headers


def _encode_string(text: str) -> bytes:
    raw = text.encode("latin-1")
    if len(raw) < 127:
        return bytes([len(raw)]) + raw
    n, out = len(raw) - 127, bytearray([127])
    while n >= 128:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n]) + raw


def encode_headers(headers: list[tuple[str, str]]) -> bytes:
    """A header block of literals without indexing, new names, no Huffman."""
    return b"".join(b"\x00" + _encode_string(n) + _encode_string(v) for n, v in headers)
