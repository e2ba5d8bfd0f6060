"""`plait control`: the process. Wires store, registry, cache, ADS server and HTTP API.

Start-up order: open the store, reload config and leases (leases get a fresh ttl), start
the gRPC ADS server and the HTTP API, then write the ready file (docs/internals.md) with
the ports actually bound. A background task sweeps expired leases every
``lease_sweep_interval`` seconds. Runs until cancelled (SIGTERM/SIGINT in :func:`main`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from typing import Any

import grpc

from plait.control.ads import add_to_server
from plait.control.api import ControlApi
from plait.control.plane import ControlPlane
from plait.control.store import Store
from plait.jsonhttp import serve_json, server_port

log = logging.getLogger("plait.control")

DEFAULT_DATA_DIR = "./.plait/control"
DEFAULT_XDS_PORT = 18000
DEFAULT_API_PORT = 18001

GRPC_OPTIONS = [
    ("grpc.so_reuseport", 0),  # a second control plane on the same port must fail to bind
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
]


def write_ready_file(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (temp file in the same dir + rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ready-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _reachable(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def _sweep_leases(plane: ControlPlane, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            plane.sweep()
        except Exception:
            log.exception("lease sweep failed")


async def run_control(
    data_dir: str,
    xds_host: str = "127.0.0.1",
    xds_port: int = 0,
    api_host: str = "127.0.0.1",
    api_port: int = 0,
    ready_file: str | None = None,
    lease_sweep_interval: float = 1.0,
) -> None:
    """Run the control plane until cancelled."""
    store = Store(data_dir)
    plane = ControlPlane(store)
    version, _ = store.current()
    log.info(
        "store %s: config version %d, %d lease(s) reloaded",
        store.path,
        version,
        len(plane.registry.node_ids()),
    )
    grpc_server = grpc.aio.server(options=GRPC_OPTIONS)
    add_to_server(grpc_server, plane.cache)
    api_server: asyncio.Server | None = None
    sweeper: asyncio.Task[None] | None = None
    try:
        bound_xds = grpc_server.add_insecure_port(f"{xds_host}:{xds_port}")
        if not bound_xds:
            raise OSError(f"could not bind the xDS port {xds_host}:{xds_port}")
        await grpc_server.start()
        api_server = await serve_json(ControlApi(plane).handle, api_host, api_port)
        bound_api = server_port(api_server)
        xds_addr = f"{_reachable(xds_host)}:{bound_xds}"
        api_url = f"http://{_reachable(api_host)}:{bound_api}"
        log.info("serving xDS (ADS) on %s, HTTP API on %s", xds_addr, api_url)
        if ready_file:
            write_ready_file(ready_file, {"pid": os.getpid(), "xds": xds_addr, "api": api_url})
        sweeper = asyncio.create_task(_sweep_leases(plane, lease_sweep_interval))
        await asyncio.Event().wait()
    finally:
        if sweeper is not None:
            sweeper.cancel()
        if api_server is not None:
            api_server.close()
        await grpc_server.stop(grace=0.5)
        store.close()
        log.info("control plane stopped")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plait control", description="Run the plait control plane (xDS server + HTTP API)."
    )
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="where plait.db lives")
    p.add_argument("--host", default="127.0.0.1", help="address to bind both servers on")
    p.add_argument("--xds-port", type=int, default=DEFAULT_XDS_PORT, help="gRPC ADS port (0=any)")
    p.add_argument("--api-port", type=int, default=DEFAULT_API_PORT, help="HTTP API port (0=any)")
    p.add_argument("--ready-file", default=None, help="write bound ports here once serving")
    p.add_argument("--lease-sweep-interval", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional here
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        await run_control(
            args.data_dir,
            xds_host=args.host,
            xds_port=args.xds_port,
            api_host=args.host,
            api_port=args.api_port,
            ready_file=args.ready_file,
            lease_sweep_interval=args.lease_sweep_interval,
        )

    with asyncio.Runner(loop_factory=_new_event_loop) as runner:
        try:
            runner.run(run())
        except asyncio.CancelledError:
            pass
        except OSError as exc:
            log.error("%s", exc)
            return 1
    return 0
