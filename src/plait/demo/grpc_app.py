"""A tiny gRPC demo server for proxyless-gRPC tests, with no generated code.

It serves one unary method, ``/plait.demo.Echo/Who``, through a generic handler:
request and response are raw bytes, and the response is the JSON
``{"service": ..., "version": ..., "port": ...}`` that says which instance answered.

    python -m plait.demo.grpc_app --name greeter --version v1 --port 0 --ready-file F

Once serving it writes ``{"pid": ..., "port": ...}`` to the ready file atomically
(temp file + rename), so callers can ask for port 0. SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from concurrent import futures

import grpc

from plait.fsutil import write_json_atomic

SERVICE = "plait.demo.Echo"
METHOD = "Who"
FULL_METHOD = f"/{SERVICE}/{METHOD}"


def _identity(data: bytes) -> bytes:
    return data


def build_server(
    name: str, version: str, port: int, host: str = "127.0.0.1"
) -> tuple[grpc.Server, int]:
    """Create and start the server; returns it with the port it actually bound."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    answer: dict[str, object] = {"service": name, "version": version, "port": 0}

    def who(_request: bytes, _context: grpc.ServicerContext) -> bytes:
        return json.dumps(answer, sort_keys=True).encode()

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            METHOD: grpc.unary_unary_rpc_method_handler(
                who, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"grpc_app: cannot bind {host}:{port}")
    answer["port"] = bound
    server.start()
    return server, bound


def write_ready_file(path: str, data: dict[str, object]) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temp file + rename)."""
    write_json_atomic(path, data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plait.demo.grpc_app", description=__doc__)
    parser.add_argument("--name", required=True, help="service name reported in answers")
    parser.add_argument("--version", default="v1", help="version label reported in answers")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ready-file", default=None)
    args = parser.parse_args(argv)

    server, port = build_server(args.name, args.version, args.port, args.host)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.ready_file:
        write_ready_file(args.ready_file, {"pid": os.getpid(), "port": port})
    while not stop.wait(0.5):
        pass
    server.stop(grace=0.5).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
