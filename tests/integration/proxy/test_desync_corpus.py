"""Request smuggling defence: the http-desync-guardian corpus against a running proxy.

Every case in /work/shared/conformance/http-desync/*.yaml is sent as raw bytes, one
connection per case, to a DataPlane whose outbound listener routes every host to a
recording upstream. The policy (shared/conformance/http-desync/SOURCE.md):

- Severe: answered 400 (Proxy-Status error=http_request_error), connection closed, and
  the upstream received nothing;
- Ambiguous (and Acceptable): rejected the same way, or forwarded only in a normalized
  form: one framing header, no obs-fold, no CR/LF/NUL inside a header value;
- Compliant: forwarded intact (method, target, and every end-to-end header).

Raw requests are built the way the corpus's own harness builds them
(``"{method} {uri} {version}\\r\\n"``, ``"{name}: {value}\\r\\n"`` per header, then
``"\\r\\n"``, UTF-8, ``\\xNN`` escapes in plain strings unescaped). One thing is added: a
``Host: case-N`` header after the case's own headers (unless it has a Host), because an
HTTP/1.1 request without Host is refused by RFC 9112 before framing matters; the unique
host also tells which upstream connection carried which case.

:data:`REJECTED_BY_POLICY` lists the corpus's Compliant cases plait refuses on purpose,
with the reason; they must be rejected like Severe ones (consistently, never half-way).
:data:`CODING_LISTS` are the Compliant cases whose Transfer-Encoding is a coding list
ending in chunked: forwarded with one normalized Transfer-Encoding field and the body
re-chunked intact.
"""

from __future__ import annotations

import glob
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from dataplane_harness import HOST, LoopThread, ProxyUnderTest, UpstreamServer, route

from plait.proxy import proxy_status
from plait.proxy.runtime import Cluster, Endpoint, Listener, ProxyConfig, RouteTable, VirtualHost

CORPUS = os.environ.get("PLAIT_DESYNC_CORPUS", "/work/shared/conformance/http-desync")

# Compliant in the corpus, refused by plait's documented policy (docs in http1_checks):
_CHUNKED_PARAM = (
    "'chunked;custom_param;' is not a valid transfer-coding (RFC 9112: a parameter is"
    " token=value; chunked defines none) and llhttp does not read such a body as chunked"
)
REJECTED_BY_POLICY = {
    "TE with custom parameters OK": _CHUNKED_PARAM,
    "Transfer-Encoding with a param: chunked;custom_param": _CHUNKED_PARAM,
    "International in URI": "raw non-ASCII bytes are not valid in a request-target (RFC 3986)",
    "Empty URI": "'GET  HTTP/1.1' has no request-target: the request line is malformed",
}
# Compliant cases with a coding list ending in chunked (RFC 9112 6.1): forwarded with one
# normalized Transfer-Encoding field, the codings in order, the body re-chunked.
CODING_LISTS = {
    "Correct TE OK": "gzip, chunked",
    "Transfer-Encoding: identity and chunked OK": "deflate, identity, chunked",
    "Multiple transfer encoding headers in a single request OK": (
        "gzip, deflate, identity, compress, chunked"
    ),
    "Different Transfer-Encoding headers": "gzip, deflate, identity, compress, chunked",
    "Different Transfer-Encoding headers combined": "gzip, deflate, identity, compress, chunked",
}
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",  # re-emitted normalized
}
_FRAMING = ("content-length", "transfer-encoding")


def unescape(text: str) -> str:
    """The corpus harness's unescaping of ``\\xNN``, ``\\n``, ``\\r``, ``\\t``..."""
    out: list[str] = []
    i = 0
    simple = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
    while i < len(text):
        ch = text[i]
        if ch != "\\" or i + 1 >= len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "x":
            out.append(chr(int(text[i + 2 : i + 4], 16)))
            i += 4
        else:
            out.append(simple.get(nxt, nxt))
            i += 2
    return "".join(out)


def _text(value: Any) -> str:
    return unescape(value) if isinstance(value, str) else str(value)


@dataclass
class Case:
    file: str
    name: str
    tier: str
    method: str
    uri: str
    version: str
    headers: list[tuple[str, str]]

    def raw(self, host: str) -> bytes:
        lines = [f"{self.method} {self.uri} {self.version}\r\n"]
        lines += [f"{n}: {v}\r\n" for n, v in self.headers]
        if not any(n.lower() == "host" for n, _ in self.headers):
            lines.append(f"Host: {host}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("utf-8")


def load_cases() -> list[Case]:
    cases = []
    for path in sorted(glob.glob(os.path.join(CORPUS, "*.yaml"))):
        with open(path, encoding="utf-8") as f:
            docs = yaml.safe_load(f) or []
        for c in docs:
            headers = [(_text(h["name"]), _text(h["value"])) for h in c.get("headers") or []]
            cases.append(
                Case(
                    os.path.basename(path),
                    c["name"],
                    c["expected"]["tier"],
                    _text(c["method"]),
                    _text(c["uri"]),
                    _text(c["version"]),
                    headers,
                )
            )
    return cases


CASES = load_cases() if os.path.isdir(CORPUS) else []


@dataclass
class Outcome:
    response: bytes
    closed: bool
    forwarded: bytes | None  # the request head (and what followed) the upstream received


class Bench:
    def __init__(self) -> None:
        self.lt = LoopThread()
        self.up = UpstreamServer("origin")
        port = self.lt.run(self.up.start())
        self.proxy = ProxyUnderTest(self.lt, node_id="desync")
        name = "outbound|origin"
        table = RouteTable("outbound", (VirtualHost("all", ("*",), (route("all", name),)),))
        self.proxy.apply(
            ProxyConfig(
                listeners={
                    "outbound": Listener(
                        "outbound", HOST, 0, "outbound", route_config_name="outbound"
                    )
                },
                route_tables={"outbound": table},
                clusters={name: Cluster(name, "round_robin", 1.0, "eds")},
                endpoints={name: (Endpoint(HOST, port),)},
            )
        )
        self.count = 0

    def forwarded(self, marker: bytes) -> bytes | None:
        def find() -> bytes | None:
            for conn in self.up.raw:
                at = conn.find(marker)
                if at != -1:  # the head starts after the previous (bodyless) message
                    end = conn.rfind(b"\r\n\r\n", 0, at)
                    return bytes(conn[end + 4 if end != -1 else 0 :])
            return None

        return self.lt.call(find)

    def send(self, case: Case, body: bytes = b"") -> Outcome:
        """Send ``case`` (then ``body``, raw) on a new connection; see what happened."""
        self.count += 1
        host = f"case-{self.count}"
        marker = f"\r\nhost: {host}\r\n".encode()
        response = b""
        closed = False
        with socket.create_connection((HOST, self.proxy.port), timeout=3) as s:
            s.sendall(case.raw(host) + body)
            deadline = time.monotonic() + 3
            seen_at = None
            while time.monotonic() < deadline:
                s.settimeout(0.02)
                try:
                    got = s.recv(65536)
                    if not got:
                        closed = True
                        break
                    response += got
                except TimeoutError:
                    pass
                except ConnectionResetError:
                    closed = True
                    break
                if seen_at is None and self.forwarded(marker) is not None:
                    seen_at = time.monotonic()
                if seen_at is not None and (
                    b"\r\n\r\n" in response or time.monotonic() - seen_at > 0.1
                ):
                    break
        return Outcome(response, closed, self.forwarded(marker))

    def close(self) -> None:
        self.proxy.close()
        self.lt.run(self.up.stop())
        self.lt.stop()


@pytest.fixture(scope="module")
def bench() -> Iterator[Bench]:
    b = Bench()
    yield b
    b.close()


def assert_rejected(out: Outcome) -> None:
    assert out.response.startswith(b"HTTP/1.1 400 "), out.response[:200]
    head = out.response.partition(b"\r\n\r\n")[0].decode("latin-1")
    value = next(
        line.split(":", 1)[1] for line in head.split("\r\n") if line.startswith("proxy-status:")
    )
    [(hop, params)] = proxy_status.parse(value.strip())
    assert hop == "desync/outbound" and params["error"] == "http_request_error"
    assert out.closed
    assert out.forwarded is None


def forwarded_head(out: Outcome) -> list[str]:
    assert out.forwarded is not None
    head = out.forwarded.partition(b"\r\n\r\n")[0].decode("latin-1")
    return head.split("\r\n")


def assert_normalized(out: Outcome) -> None:
    lines = forwarded_head(out)
    framing = 0
    for line in lines[1:]:
        assert line[:1] not in (" ", "\t"), f"obs-fold forwarded: {line!r}"
        assert not any(c in line for c in "\r\n\x00"), f"CR/LF/NUL forwarded: {line!r}"
        name, sep, _ = line.partition(":")
        assert sep and name and name == name.strip(), f"bad header line forwarded: {line!r}"
        if name.lower() in ("content-length", "transfer-encoding"):
            framing += 1
    assert framing <= 1, lines


def assert_intact(case: Case, out: Outcome) -> None:
    lines = forwarded_head(out)
    assert lines[0] == f"{case.method} {case.uri} HTTP/1.1".encode().decode("latin-1")
    forwarded = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        forwarded.setdefault(name.lower(), []).append(value.strip(" \t"))
    for name, value in case.headers:
        if name.lower() in _HOP_BY_HOP:
            continue
        want = value.strip(" \t").encode().decode("latin-1")
        assert want in forwarded.get(name.lower(), []), (name, value, lines)
    assert_normalized(out)


@pytest.mark.skipif(not CASES, reason=f"no corpus at {CORPUS}")
@pytest.mark.parametrize("case", CASES, ids=[f"{c.file}:{c.name}" for c in CASES])
def test_desync_case(bench: Bench, case: Case) -> None:
    out = bench.send(case)
    if case.tier == "Severe" or case.name in REJECTED_BY_POLICY:
        assert_rejected(out)
    elif case.tier in ("Ambiguous", "Acceptable"):
        if out.forwarded is None:
            assert_rejected(out)
        else:
            assert_normalized(out)
    else:
        assert case.tier == "Compliant"
        assert out.forwarded is not None, out.response[:200]
        assert_intact(case, out)
        if case.name in CODING_LISTS:
            want = f"transfer-encoding: {CODING_LISTS[case.name]}"
            framing = [ln for ln in forwarded_head(out)[1:] if ln.split(":")[0] in _FRAMING]
            assert framing == [want], forwarded_head(out)


@pytest.mark.skipif(not CASES, reason=f"no corpus at {CORPUS}")
@pytest.mark.parametrize("name", sorted(CODING_LISTS))
def test_coding_lists_are_forwarded_normalized_with_the_body_intact(
    bench: Bench, name: str
) -> None:
    [case] = [c for c in CASES if c.name == name]
    # Pieces that look like framing themselves, and a bigger one.
    pieces = [b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n", b"x" * 70000, b"5;ext=1\r\n"]
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    body += b"0\r\nx-trailer: t\r\n\r\n"
    out = bench.send(case, body)
    assert out.response.startswith(b"HTTP/1.1 200 "), out.response[:200]
    assert_intact(case, out)
    lines = forwarded_head(out)
    framing = [ln for ln in lines[1:] if ln.split(":")[0].lower() in _FRAMING]
    assert framing == [f"transfer-encoding: {CODING_LISTS[name]}"], lines
    host = f"case-{bench.count}"
    [got] = bench.lt.call(lambda: [r for r in bench.up.requests if r.header("host") == host])
    assert got.complete and got.method == "POST"
    assert got.header_count("transfer-encoding") == 1
    assert got.body_len == sum(map(len, pieces))
    assert got.body_sha256 == hashlib.sha256(b"".join(pieces)).hexdigest()
    assert not any(r.target == "/smuggled" for r in bench.lt.call(lambda: list(bench.up.requests)))


def test_policy_exceptions_are_corpus_cases() -> None:
    if not CASES:
        pytest.skip("no corpus")
    compliant = {c.name for c in CASES if c.tier == "Compliant"}
    assert set(REJECTED_BY_POLICY) <= compliant
    assert set(CODING_LISTS) <= compliant - set(REJECTED_BY_POLICY)
    severe = [c for c in CASES if c.tier == "Severe"]
    assert len(severe) == 58  # SOURCE.md: HAProxy 2.6 rejects 46 of these; plait all
