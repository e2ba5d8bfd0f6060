"""The demo HTTP service: each instance answers with the chain of services a request took.

    python -m plait.demo --name orders --version v1 --next inventory \\
        --proxy http://127.0.0.1:15001 --listen-fd 3 --ready-file orders.ready

On ``GET /anything`` (or ``POST``) it calls every ``--next`` service -- through the proxy
as an HTTP proxy request (absolute form, ``GET http://inventory/anything``), on kept-alive
connections, forwarding ``x-request-id`` and ``traceparent`` -- and answers

    {"service": "orders", "version": "v1", "path": "/anything", "request_id": "...",
     "chain": ["orders/v1", "inventory/v1"]}

where ``chain`` is its own hop followed by each downstream's chain. If a downstream
cannot be reached or answers anything but 2xx with a chain, the answer is 502 with
``error`` and ``downstream`` (its service, status, ``Proxy-Status`` header and reply), and
``chain`` says how far the request got. ``POST`` adds ``method`` and ``body_length`` and
sends its body on. ``/healthz`` answers 200 ``ok``, or 503 while ``--fail-health-file``
exists (tests use this to make an instance fail its health check).

``--next name=host:port`` calls that address directly instead of through the proxy
(a mesh-free chain for comparisons). The listening socket is ``--port`` or an inherited
``--listen-fd`` (so a supervisor knows the port before the app starts); once serving,
``{"pid": ..., "port": ...}`` is written to ``--ready-file`` atomically. SIGTERM and
SIGINT stop it.

The decisions (:func:`compose_reply`, :func:`propagated_headers`, :func:`request_path`)
are plain functions; the asyncio server and client around them are thin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import uuid
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from plait.demo.http import (
    MAX_HEAD,
    ConnectionPool,
    Head,
    HttpError,
    encode,
    read_body,
    read_head,
)
from plait.fsutil import write_json_atomic

PROPAGATED = ("x-request-id", "traceparent", "tracestate")


@dataclass(frozen=True)
class NextHop:
    """A service this app calls; ``address`` set means directly, bypassing the proxy."""

    service: str
    address: tuple[str, int] | None = None


@dataclass(frozen=True)
class AppConfig:
    name: str
    version: str = "v1"
    next: tuple[NextHop, ...] = ()
    proxy: tuple[str, int] | None = None
    fail_health_file: Path | None = None
    timeout: float = 10.0

    @property
    def hop(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class DownstreamResult:
    """What one call to a next service gave: a status (None if no answer) and body."""

    service: str
    status: int | None
    proxy_status: str | None = None
    body: bytes = b""
    error: str | None = None

    def reply(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def chain(self) -> list[str] | None:
        reply = self.reply()
        chain = reply.get("chain") if isinstance(reply, dict) else None
        if isinstance(chain, list) and all(isinstance(h, str) for h in chain):
            return chain
        return None


def parse_next(text: str) -> NextHop:
    """``inventory`` or ``inventory=127.0.0.1:9002``."""
    service, sep, address = text.partition("=")
    if not sep:
        return NextHop(service)
    return NextHop(service, parse_address(address))


def parse_address(text: str) -> tuple[str, int]:
    """``http://127.0.0.1:15001`` or ``127.0.0.1:15001`` -> ``("127.0.0.1", 15001)``."""
    url = urlsplit(text if "://" in text else f"http://{text}")
    if not url.hostname or not url.port:
        raise ValueError(f"expected host:port, got {text!r}")
    return url.hostname, url.port


def request_path(target: str) -> str:
    """The origin-form path of a request target (absolute form is accepted too)."""
    if target.startswith(("http://", "https://")):
        url = urlsplit(target)
        path = url.path or "/"
        return f"{path}?{url.query}" if url.query else path
    return target or "/"


def propagated_headers(head: Head, request_id: str) -> list[tuple[str, str]]:
    """The tracing headers a downstream call carries on (``x-request-id`` always)."""
    out = [("x-request-id", request_id)]
    for name in PROPAGATED[1:]:
        value = head.get(name)
        if value is not None:
            out.append((name, value))
    return out


def compose_reply(
    cfg: AppConfig,
    *,
    method: str,
    path: str,
    request_id: str,
    body_length: int,
    results: list[DownstreamResult],
) -> tuple[int, dict[str, Any]]:
    """The status and JSON answer, given what every downstream call returned."""
    reply: dict[str, Any] = {
        "service": cfg.name,
        "version": cfg.version,
        "path": path,
        "request_id": request_id,
    }
    if method != "GET":
        reply["method"] = method
        reply["body_length"] = body_length
    chain = [cfg.hop]
    for result in results:
        sub_chain = result.chain()
        ok = result.status is not None and 200 <= result.status < 300 and sub_chain is not None
        chain.extend(sub_chain or [])
        if ok:
            continue
        if result.status is None:
            error = f"cannot reach {result.service}: {result.error}"
        elif sub_chain is None and 200 <= result.status < 300:
            error = f"{result.service} answered {result.status} without a chain"
        else:
            error = f"{result.service} answered {result.status}"
        downstream: dict[str, Any] = {
            "service": result.service,
            "status": result.status,
            "proxy_status": result.proxy_status,
        }
        sub_reply = result.reply()
        if sub_reply is not None:
            downstream["reply"] = sub_reply
        elif result.body:
            downstream["body"] = result.body[:1000].decode("utf-8", "replace")
        reply.update(error=error, downstream=downstream, chain=chain)
        return 502, reply
    reply["chain"] = chain
    return 200, reply


@dataclass
class DownstreamClient:
    """Calls next services: through the proxy, or directly for ``name=host:port`` hops."""

    proxy: tuple[str, int] | None
    timeout: float = 10.0
    pool: ConnectionPool = field(default_factory=ConnectionPool)

    async def call(
        self, hop: NextHop, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> DownstreamResult:
        if hop.address is not None:
            address, target = hop.address, path
        elif self.proxy is not None:
            address, target = self.proxy, f"http://{hop.service}{path}"
        else:
            address, target = (hop.service, 80), path
        all_headers = [("host", hop.service), *headers]
        if method == "POST" and body:
            all_headers.append(("content-type", "application/octet-stream"))
        try:
            head, reply = await asyncio.wait_for(
                self.pool.request(address, method, target, all_headers, body), self.timeout
            )
        except TimeoutError:
            return DownstreamResult(hop.service, None, error=f"no answer in {self.timeout}s")
        except (OSError, HttpError, ValueError) as exc:
            return DownstreamResult(hop.service, None, error=str(exc) or type(exc).__name__)
        return DownstreamResult(hop.service, head.status, head.get("proxy-status"), reply)

    def close(self) -> None:
        self.pool.close()


async def handle(
    cfg: AppConfig, client: DownstreamClient, head: Head, body: bytes
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Answer one request: ``(status, headers, body)``."""
    method, target, _ = head.start
    path = request_path(target)
    if path.split("?", 1)[0] == "/healthz":
        failing = cfg.fail_health_file is not None and cfg.fail_health_file.exists()
        text = b"unhealthy" if failing else b"ok"
        return (503 if failing else 200), [("content-type", "text/plain")], text
    if method not in ("GET", "POST"):
        return 405, [("allow", "GET, POST"), ("content-type", "text/plain")], b"use GET or POST"
    request_id = head.get("x-request-id") or uuid.uuid4().hex
    forwarded = propagated_headers(head, request_id)
    results = await asyncio.gather(
        *(client.call(hop, method, path, forwarded, body) for hop in cfg.next)
    )
    status, reply = compose_reply(
        cfg,
        method=method,
        path=path,
        request_id=request_id,
        body_length=len(body),
        results=list(results),
    )
    if status != 200:
        print(f"{cfg.hop}: {path}: {reply['error']}", file=sys.stderr, flush=True)
    headers = [("content-type", "application/json"), ("x-request-id", request_id)]
    return status, headers, json.dumps(reply).encode() + b"\n"


async def _serve_connection(
    cfg: AppConfig,
    client: DownstreamClient,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    try:
        while True:
            try:
                head = await read_head(reader, response=False)
                if head is None:
                    return
                body, _ = await read_body(reader, head)
            except HttpError as exc:
                writer.write(
                    encode(
                        "HTTP/1.1 400 Bad Request",
                        [("content-type", "text/plain"), ("connection", "close")],
                        str(exc).encode(),
                    )
                )
                await writer.drain()
                return
            status, headers, reply = await handle(cfg, client, head, body)
            keep_alive = head.keep_alive()
            headers.append(("connection", "keep-alive" if keep_alive else "close"))
            start_line = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"
            writer.write(encode(start_line, headers, reply))
            await writer.drain()
            if not keep_alive:
                return
    except (OSError, asyncio.CancelledError):
        return  # the client went away, or the app is stopping: nothing to answer
    finally:
        writer.close()


def write_ready_file(path: Path, info: dict[str, Any]) -> None:
    """Write ``info`` as JSON atomically (temp file + rename)."""
    write_json_atomic(path, info)


async def serve(cfg: AppConfig, sock: socket.socket, ready_file: Path | None) -> None:
    """Serve on ``sock`` until SIGTERM or SIGINT."""
    client = DownstreamClient(cfg.proxy, cfg.timeout)
    sock.setblocking(False)
    server = await asyncio.start_server(
        partial(_serve_connection, cfg, client), sock=sock, limit=MAX_HEAD, backlog=512
    )
    host, port = sock.getsockname()[:2]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if ready_file is not None:
        write_ready_file(ready_file, {"pid": os.getpid(), "port": port})
    print(f"demo app {cfg.hop} listening on {host}:{port}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        client.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plait demo-app", description="Demo HTTP service that reports its call chain."
    )
    parser.add_argument("--name", required=True, help="service name, e.g. orders")
    parser.add_argument("--version", default="v1", help="version label (default v1)")
    parser.add_argument(
        "--next",
        action="append",
        default=[],
        metavar="SERVICE[=HOST:PORT]",
        help="a service to call on every request (repeatable)",
    )
    parser.add_argument("--proxy", help="HTTP proxy for --next calls, e.g. http://127.0.0.1:15001")
    listen = parser.add_mutually_exclusive_group(required=True)
    listen.add_argument("--port", type=int, help="port to listen on (0 = any free port)")
    listen.add_argument("--listen-fd", type=int, help="inherited listening socket to serve on")
    parser.add_argument("--host", default="127.0.0.1", help="address for --port")
    parser.add_argument("--ready-file", type=Path, help="write {pid, port} here once serving")
    parser.add_argument("--fail-health-file", type=Path, help="/healthz is 503 while it exists")
    parser.add_argument("--timeout", type=float, default=10.0, help="downstream timeout (s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = AppConfig(
            name=args.name,
            version=args.version,
            next=tuple(parse_next(n) for n in args.next),
            proxy=parse_address(args.proxy) if args.proxy else None,
            fail_health_file=args.fail_health_file,
            timeout=args.timeout,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if args.listen_fd is not None:
        sock = socket.socket(fileno=args.listen_fd)
    else:
        sock = socket.create_server((args.host, args.port), backlog=512)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.Runner()
    with runner, contextlib.suppress(KeyboardInterrupt):
        runner.run(serve(cfg, sock, args.ready_file))
    return 0
