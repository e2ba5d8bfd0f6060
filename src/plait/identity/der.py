"""Strict DER reading (ITU-T X.690), the part of :mod:`plait.identity.x509_reader` that
knows nothing of X.509: tag-length-value reading, nesting bounds and primitive values
(INTEGER, BOOLEAN, BIT STRING, OBJECT IDENTIFIER, the string types, UTCTime and
GeneralizedTime). Pure, no I/O. Anything not strict DER raises :class:`DerError` (a
``ValueError``) naming what was being read: one-byte tags, definite minimal lengths,
minimally encoded INTEGERs, BOOLEANs ``00``/``FF``, BIT STRINGs with zero padding, times
in the RFC 5280 form ``...SSZ``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

# universal tags
BOOLEAN = 0x01
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
UTF8_STRING = 0x0C
NUMERIC_STRING = 0x12
PRINTABLE_STRING = 0x13
T61_STRING = 0x14
IA5_STRING = 0x16
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
VISIBLE_STRING = 0x1A
UNIVERSAL_STRING = 0x1C
BMP_STRING = 0x1E
SEQUENCE = 0x30
SET = 0x31

MAX_DEPTH = 32  # nesting, far beyond any certificate (directoryName in a SAN: about 6)

_PRINTABLE = re.compile(rb"[A-Za-z0-9 '()+,\-./:=?]*")


class DerError(ValueError):
    """The bytes are not the strict DER structure expected; the message says where."""


# -- TLV reading ----------------------------------------------------------------------


class DerReader:
    """Sequential TLV reader over ``data[pos:end]``."""

    __slots__ = ("data", "end", "pos", "what")

    def __init__(self, data: bytes, what: str, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end
        self.what = what

    def at_end(self) -> bool:
        return self.pos >= self.end

    def peek(self) -> int | None:
        return None if self.pos >= self.end else self.data[self.pos]

    def read(self) -> tuple[int, bytes, bytes]:
        """``(tag, content, whole TLV)``; the next element, strictly checked."""
        data, start, end = self.data, self.pos, self.end
        if start >= end:
            raise DerError(f"{self.what}: truncated (an element is missing)")
        tag = data[start]
        if tag & 0x1F == 0x1F:
            raise DerError(f"{self.what}: multi-byte tags are not supported")
        if tag == 0:
            raise DerError(f"{self.what}: tag 0 (end-of-contents) in DER")
        if start + 1 >= end:
            raise DerError(f"{self.what}: truncated length")
        first = data[start + 1]
        pos = start + 2
        if first < 0x80:
            length = first
        elif first == 0x80:
            raise DerError(f"{self.what}: indefinite length is not DER")
        else:
            count = first & 0x7F
            if count > 4:
                raise DerError(f"{self.what}: length too large")
            if pos + count > end:
                raise DerError(f"{self.what}: truncated length")
            raw = data[pos : pos + count]
            if raw[0] == 0:
                raise DerError(f"{self.what}: non-minimal length encoding")
            length = int.from_bytes(raw, "big")
            if length < 0x80:
                raise DerError(f"{self.what}: non-minimal length encoding")
            pos += count
        if pos + length > end:
            raise DerError(f"{self.what}: truncated (length {length} past the end)")
        self.pos = pos + length
        return tag, data[pos : pos + length], data[start : pos + length]

    def expect(self, tag: int, name: str) -> bytes:
        got, content, _ = self.read()
        if got != tag:
            raise DerError(f"{self.what}: expected {name} (tag 0x{tag:02x}), got tag 0x{got:02x}")
        return content

    def expect_tlv(self, tag: int, name: str) -> tuple[bytes, bytes]:
        got, content, whole = self.read()
        if got != tag:
            raise DerError(f"{self.what}: expected {name} (tag 0x{tag:02x}), got tag 0x{got:02x}")
        return content, whole

    def done(self) -> None:
        if self.pos != self.end:
            raise DerError(f"{self.what}: {self.end - self.pos} unexpected trailing bytes")


def sub_reader(content: bytes, what: str) -> DerReader:
    return DerReader(content, what)


def check_nesting(data: bytes, what: str, depth: int = 0) -> None:
    """Every constructed element parses as TLVs all the way down (no junk hidden inside)."""
    if depth > MAX_DEPTH:
        raise DerError(f"{what}: nested too deeply")
    r = DerReader(data, what)
    while not r.at_end():
        tag, content, _ = r.read()
        if tag & 0x20:
            check_nesting(content, what, depth + 1)


# -- primitive values -----------------------------------------------------------------


def read_integer(content: bytes, what: str) -> int:
    if not content:
        raise DerError(f"{what}: empty INTEGER")
    if len(content) > 1 and (
        (content[0] == 0x00 and content[1] < 0x80) or (content[0] == 0xFF and content[1] >= 0x80)
    ):
        raise DerError(f"{what}: non-minimal INTEGER encoding")
    return int.from_bytes(content, "big", signed=True)


def read_boolean(content: bytes, what: str) -> bool:
    if content == b"\xff":
        return True
    if content == b"\x00":
        return False
    raise DerError(f"{what}: a DER BOOLEAN is one byte, 00 or FF")


def read_bit_string(content: bytes, what: str) -> bytes:
    """The bits as bytes; only whole bytes (no unused bits) are accepted."""
    if not content:
        raise DerError(f"{what}: empty BIT STRING")
    if content[0] != 0:
        raise DerError(f"{what}: BIT STRING with unused bits")
    return content[1:]


def check_named_bits(content: bytes, what: str) -> None:
    """A BIT STRING that may have unused bits (KeyUsage): they must be zero."""
    if not content or content[0] > 7 or (len(content) == 1 and content[0] != 0):
        raise DerError(f"{what}: malformed BIT STRING")
    if content[-1] & ((1 << content[0]) - 1):
        raise DerError(f"{what}: BIT STRING padding bits are not zero")


_OID_CACHE: dict[bytes, str] = {}  # the few OIDs certificates use, decoded once
_OID_CACHE_MAX = 512


def read_oid(content: bytes, what: str) -> str:
    cached = _OID_CACHE.get(content)
    if cached is not None:
        return cached
    text = decode_oid(content, what)
    if len(_OID_CACHE) < _OID_CACHE_MAX:
        _OID_CACHE[content] = text
    return text


def decode_oid(content: bytes, what: str) -> str:
    if not content:
        raise DerError(f"{what}: empty OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    started = False
    for byte in content:
        if not started and byte == 0x80:
            raise DerError(f"{what}: non-minimal OBJECT IDENTIFIER encoding")
        started = True
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
            started = False
    if started:
        raise DerError(f"{what}: truncated OBJECT IDENTIFIER")
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


def read_ascii(content: bytes, what: str) -> str:
    try:
        return content.decode("ascii")
    except UnicodeDecodeError:
        raise DerError(f"{what}: IA5String with a non-ASCII byte") from None


def read_string(tag: int, content: bytes, what: str) -> str:
    """A directory string attribute value as text."""
    try:
        if tag == UTF8_STRING:
            return content.decode("utf-8")
        if tag == PRINTABLE_STRING:
            if not _PRINTABLE.fullmatch(content):
                raise DerError(f"{what}: PrintableString with a character it cannot hold")
            return content.decode("ascii")
        if tag in (IA5_STRING, VISIBLE_STRING, NUMERIC_STRING):
            return read_ascii(content, what)
        if tag == T61_STRING:
            return content.decode("latin-1")
        if tag == BMP_STRING:
            return content.decode("utf-16-be")
        if tag == UNIVERSAL_STRING:
            return content.decode("utf-32-be")
    except UnicodeDecodeError:
        raise DerError(f"{what}: a string that does not decode") from None
    raise DerError(f"{what}: not a string type (tag 0x{tag:02x})")


def read_time(tag: int, content: bytes, what: str) -> datetime:
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError:
        raise DerError(f"{what}: a time with a non-ASCII byte") from None
    if tag == UTC_TIME:
        if len(text) != 13 or not text[:12].isdigit() or text[12] != "Z":
            raise DerError(f"{what}: UTCTime must be YYMMDDHHMMSSZ, got {text!r}")
        yy = int(text[0:2])
        year = 1900 + yy if yy >= 50 else 2000 + yy
        rest = text[2:12]
    elif tag == GENERALIZED_TIME:
        if len(text) != 15 or not text[:14].isdigit() or text[14] != "Z":
            raise DerError(f"{what}: GeneralizedTime must be YYYYMMDDHHMMSSZ, got {text!r}")
        year = int(text[0:4])
        rest = text[4:14]
    else:
        raise DerError(f"{what}: expected UTCTime or GeneralizedTime, got tag 0x{tag:02x}")
    try:
        return datetime(
            year,
            int(rest[0:2]),
            int(rest[2:4]),
            int(rest[4:6]),
            int(rest[6:8]),
            int(rest[8:10]),
            tzinfo=UTC,
        )
    except ValueError:
        raise DerError(f"{what}: not a valid date and time: {text!r}") from None
