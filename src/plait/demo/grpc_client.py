"""A proxyless gRPC client for the demo Echo service: counts which version answered.

    GRPC_XDS_BOOTSTRAP=bootstrap.json \\
        python -m plait.demo.grpc_client --target xds:///greeter --calls 1000

Each call is ``/plait.demo.Echo/Who`` (see :mod:`plait.demo.grpc_app`). It prints one JSON
line: ``{"target", "calls", "ok", "failed", "versions": {"v1": n, ...}, "ports": {...},
"errors": {"<code>: <details>": n}}`` and exits 0 when every call succeeded, 1 otherwise.

``GRPC_XDS_BOOTSTRAP`` must be set before ``grpc`` is loaded, which is why tests run this
as a subprocess. The first call waits (``wait_for_ready``) for the xDS resolver to get
its listener, route, cluster and endpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

import grpc

METHOD = "/plait.demo.Echo/Who"


def _identity(data: bytes) -> bytes:
    return data


def run(target: str, calls: int, timeout: float, first_timeout: float) -> dict[str, object]:
    """Make ``calls`` unary calls on one channel and tally the answers."""
    versions: Counter[str] = Counter()
    ports: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    ok = 0
    started = time.monotonic()
    with grpc.insecure_channel(target) as channel:
        who = channel.unary_unary(
            METHOD, request_serializer=_identity, response_deserializer=_identity
        )
        for i in range(calls):
            try:
                raw = who(b"", timeout=first_timeout if i == 0 else timeout, wait_for_ready=True)
            except grpc.RpcError as exc:
                code = exc.code()
                name = code.name if code is not None else "UNKNOWN"
                errors[f"{name}: {exc.details()}"] += 1
                continue
            answer = json.loads(raw)
            versions[str(answer.get("version"))] += 1
            ports[str(answer.get("port"))] += 1
            ok += 1
    return {
        "target": target,
        "calls": calls,
        "ok": ok,
        "failed": calls - ok,
        "versions": dict(versions),
        "ports": dict(ports),
        "errors": dict(errors),
        "seconds": round(time.monotonic() - started, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plait.demo.grpc_client", description=__doc__)
    parser.add_argument("--target", required=True, help="e.g. xds:///greeter")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=5.0, help="per-call deadline, seconds")
    parser.add_argument(
        "--first-timeout",
        type=float,
        default=20.0,
        help="deadline of the first call, which waits for xDS resolution",
    )
    args = parser.parse_args(argv)
    result = run(args.target, args.calls, args.timeout, args.first_timeout)
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
