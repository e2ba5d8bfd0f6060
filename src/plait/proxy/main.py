"""``plait proxy --config bootstrap.yaml``: the data plane process, composed in one place.

The stack, one step per line in :func:`run_proxy`:

1. load and validate the bootstrap (docs/internals.md), in a short-lived child process
   (:mod:`plait.proxy.bootstrap_reader`: the proxy never imports PyYAML);
2. bind the outbound listener, and per local service an inbound listener and its own
   outbound listener ``outbound|<svc>`` (port 0 allowed), before anything talks to the
   control plane, so the real ports go into the node metadata; until a config arrives
   they answer 503 ``destination_unavailable``;
2b. per local service with a join token (or every one, with ``--ca``): an identity
   manager (:mod:`plait.proxy.identities`; keys made here, certificates renewed
   at half-life), its certificates feeding the TLS contexts;
3. start the admin server (``/ready``, ``/config_dump``, ``/clusters``,
   ``/stats/prometheus``);
4. a HealthChecker per local service that has a health check;
5. the Registrar: heartbeats each local service at its inbound address with its labels
   and current health, at once when a health check flips;
5b. the last-known-good config (:mod:`plait.proxy.lkg`, ``<data_dir>/lkg.dat``), if
   there is one: applied at once and served until the control plane answers (a corrupt
   file is reported and nothing of it is applied);
6. the XdsClient (round-robin over the control plane addresses), whose every accepted
   config goes through the proxy-side guard (:mod:`plait.proxy.guard`) to
   ``DataPlane.apply``; every ACK rewrites the last-known-good file, off the loop;
7. the ready file (atomically: temp file + rename), with the ports actually bound;
8. run until SIGTERM/SIGINT; then, if there are local services and ``drain_time`` > 0,
   deregister them (a last heartbeat with ``"leaving": true``) and keep serving for
   ``drain_time`` seconds (default 2) so peers get the EDS update; then stop accepting,
   let requests in flight finish (up to ``--grace`` seconds), flush the access log.

The access log is flushed about once a second and at shutdown.

With ``--workers N`` (N > 1) the process started is a supervisor
(:mod:`plait.proxy.workers`) that forks N workers, each running :func:`run_proxy` with a
:class:`~plait.proxy.workers.WorkerRole` on the same ports (SO_REUSEPORT).

Memory: the identity code is imported only when a local service has an identity
(:func:`make_identities`); nothing here imports pydantic, and no proxy imports
cryptography (keys and CSRs come from a child process, :mod:`plait.identity.keygen`;
docs/internals.md, "Memory").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from plait.fsutil import write_json_atomic
from plait.proxy import native
from plait.proxy.accesslog import AccessLog, BufferedWriter
from plait.proxy.admin import AdminServer
from plait.proxy.bootstrap import (
    Bootstrap,
    BootstrapError,
    BoundPorts,
    LocalService,
)
from plait.proxy.bootstrap import node_metadata as make_node_metadata
from plait.proxy.bootstrap_reader import read_bootstrap
from plait.proxy.dataplane import DataPlane
from plait.proxy.guard import EndpointGuard
from plait.proxy.health import HealthChecker
from plait.proxy.lkg import LkgError, LkgMeta, LkgWriter, iso_time, lkg_path, load_lkg
from plait.proxy.metrics import Metrics
from plait.proxy.registration import Registrar, instance_records, kick_on_change
from plait.proxy.runtime import ProxyConfig
from plait.proxy.xds_client import XdsClient

if TYPE_CHECKING:
    from plait.proxy.identities import ProxyIdentities  # only with mTLS
    from plait.proxy.workers import WorkerRole

log = logging.getLogger("plait.proxy")

FLUSH_INTERVAL = 1.0
STOP_TASKS_TIMEOUT = 2.0  # seconds the proxy waits for its cancelled tasks at shutdown
# a replaced worker listens once it has a config, or after this many seconds without one
# (no last-known-good, the control plane not answering): Envoy's initial_fetch_timeout
WARM_TIMEOUT = 15.0
GC_THRESHOLD = 20_000  # gen0 allocations between collections (CPython's default: 700)


@dataclass
class ConfigSource:
    """Where the served config came from: ``live`` (the control plane), ``last-known-good``
    (the file, while the control plane has not answered) or None (nothing yet)."""

    name: str | None = None
    lkg: LkgMeta | None = None
    lkg_error: str | None = None
    lkg_written_at: float | None = None

    def describe(self) -> str:
        if self.name == "last-known-good" and self.lkg is not None:
            return (
                f"serving last-known-good config version {self.lkg.version} "
                f"from {self.lkg.saved_at_iso}"
            )
        return "serving live config from the control plane"

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.name, "load_error": self.lkg_error}
        if self.lkg is not None:
            out.update(path=self.lkg.path, version=self.lkg.version, saved_at=self.lkg.saved_at_iso)
        if self.lkg_written_at is not None:
            out["last_written"] = iso_time(self.lkg_written_at)
        return out

    def heartbeat(self) -> dict[str, Any]:
        """The heartbeat's ``config_source`` field."""
        out: dict[str, Any] = {"source": self.name}
        if self.name == "last-known-good" and self.lkg is not None:
            out.update(version=self.lkg.version, saved_at=self.lkg.saved_at_iso)
        return {"config_source": out}


def boot_from_lkg(path: Path, node_id: str, metrics: Metrics, source: ConfigSource) -> Any:
    """The last-known-good config and its raw resources, or None (no file, or a bad one:
    logged, counted, kept in ``source.lkg_error`` for ``/ready``)."""
    try:
        config, meta = load_lkg(path)
        if meta.node_id and meta.node_id != node_id:
            raise LkgError(f"{path}: written by node {meta.node_id!r}, not {node_id!r}")
    except FileNotFoundError:
        return None
    except LkgError as exc:
        source.lkg_error = str(exc)
        log.error("last-known-good config not loaded: %s", exc)
        metrics.inc(
            "plait_lkg_load_errors_total",
            {},
            help="Last-known-good files found unusable at start (corrupt, truncated, ...).",
        )
        return None
    source.lkg = meta
    log.warning(
        "loaded the last-known-good config %s (version %s from %s); serving it until the "
        "control plane answers",
        path,
        meta.version,
        meta.saved_at_iso,
    )
    return config, meta


def write_ready_file(path: str, info: dict[str, Any]) -> None:
    """Write ``info`` as JSON to ``path`` atomically (temp file in the same dir + rename)."""
    write_json_atomic(path, info, 0o600, make_parents=True)


def open_access_log(spec: str) -> BufferedWriter:
    if spec == "-":
        return BufferedWriter(sys.stdout)
    path = Path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    fileobj: IO[bytes] = open(path, "ab")  # noqa: SIM115 - owned by the writer
    return BufferedWriter(fileobj, owns_file=True)


async def _flush_every(writer: BufferedWriter, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        writer.flush()


async def run_proxy(
    bootstrap_path: str,
    *,
    ready_file: str | None = None,
    stop: asyncio.Event | None = None,
    grace: float = 5.0,
    ca: str | None = None,
    ca_bundle: str | None = None,
    tokens: dict[str, str] | None = None,
    worker: WorkerRole | None = None,
) -> None:
    """Run a proxy from its bootstrap file until ``stop`` is set or SIGTERM/SIGINT.

    ``worker``: this process is one worker of ``plait proxy --workers N``
    (:mod:`plait.proxy.workers`): it runs the bootstrap given there, under its own xDS
    node id, registers the local services only if it is the registering worker, and
    reports its ready info to the supervisor."""
    boot = worker.boot if worker is not None else read_bootstrap(bootstrap_path)
    # the proxy's name in Via, Proxy-Status and the access log: the same for every worker
    hop_node = worker.hop_node_id if worker is not None else boot.node_id
    register = worker is None or worker.register
    # a replaced worker binds now and listens once configured (plait.proxy.workers)
    warm = worker is not None and worker.replacement
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    writer = open_access_log(boot.access_log)
    metrics = Metrics()
    dp = DataPlane(
        hop_node,
        local_services=[svc.name for svc in boot.services],
        metrics=metrics,
        access_log=AccessLog(writer.write),
        panic_threshold=boot.guard.panic_threshold,
        reuse_port=worker is not None,
    )
    source = ConfigSource()
    guard = EndpointGuard(time.monotonic, boot.guard.confirm_after)
    lkg_file = lkg_path(boot.data_dir)
    tasks: list[asyncio.Task[Any]] = []
    admin: AdminServer | None = None
    xds: XdsClient | None = None
    try:
        bound = await bind_listeners(dp, boot, listen=not warm)
        identities = make_identities(dp, boot, metrics, ca, ca_bundle, tokens or {})
        checkers: dict[str, HealthChecker] = {}
        registrar = Registrar(
            boot.control_plane.api_urls,
            boot.node_id,
            lambda: instance_records(boot, bound, {n: c.healthy for n, c in checkers.items()}),
            boot.heartbeat_interval,
            boot.lease_ttl,
            identities=identities.heartbeat if identities is not None else None,
            extra=source.heartbeat,
        )
        for svc in boot.services if register else ():  # health feeds registration only
            if svc.health_check is not None:
                checkers[svc.name] = HealthChecker(
                    svc.health_check,
                    svc.app.address,
                    svc.app.port,
                    on_change=kick_on_change(registrar),
                )
        lkg_writer = LkgWriter(
            lkg_file,
            boot.node_id,
            clock=time.time,
            on_written=lambda t: setattr(source, "lkg_written_at", t),
        )
        configured = asyncio.Event()  # set once a config with listeners is applied
        stored = boot_from_lkg(lkg_file, boot.node_id, metrics, source)
        if stored is not None:
            dp.apply(guard.filter(stored[0]))
            source.name = "last-known-good"
            if dp.ready:
                configured.set()

        def on_config(config: ProxyConfig) -> None:
            dp.apply(guard.filter(config))
            if source.name != "live":
                log.info("serving live config from the control plane")
            source.name = "live"
            if dp.ready:
                configured.set()

        xds = XdsClient(
            boot.control_plane.xds_addresses,
            boot.node_id,
            make_node_metadata(boot, bound),
            on_config=on_config,
            initial_config=stored[0] if stored is not None else None,
            initial_resources=stored[1].resources if stored is not None else None,
            on_ack=lkg_writer.submit,
        )
        admin = AdminServer(dp, xds=xds, metrics=metrics, identities=identities, source=source)
        admin_address = await admin.start(boot.admin.address, boot.admin.port)

        def spawn(coro: Coroutine[Any, Any, Any], name: str) -> None:
            tasks.append(loop.create_task(coro, name=name))

        for name, checker in checkers.items():
            spawn(checker.run(), f"health:{name}")
        if identities is not None:
            for name, coro in identities.tasks():
                spawn(coro, name)
        registrar_task: asyncio.Task[Any] | None = None
        if register:
            registrar_task = loop.create_task(registrar.run(), name="registrar")
            tasks.append(registrar_task)
        spawn(xds.run(), "xds")
        spawn(_flush_every(writer, FLUSH_INTERVAL), "access-log-flush")

        def report_ready() -> None:
            ready_path = ready_file or boot.ready_file
            if ready_path:
                write_ready_file(ready_path, ready_info(boot, bound, admin_address))
            if worker is not None:
                worker.ready(ready_info(boot, bound, admin_address))
            log.info(
                "proxy %s serving: outbound %s:%s, admin http://%s:%s; request path %s",
                boot.node_id,
                *bound.outbound,
                *admin_address,
                native.STATE,
            )

        if warm:
            spawn(serve_when_configured(dp, configured, WARM_TIMEOUT, report_ready), "warm")
        else:
            report_ready()
        settle_gc()
        await stop.wait()
        log.info("proxy %s stopping", boot.node_id)
        if boot.services and boot.drain_time > 0:
            if registrar_task is not None:
                await stop_tasks([registrar_task])
                await registrar.leave()
            log.info("proxy %s draining for %gs", boot.node_id, boot.drain_time)
            await asyncio.sleep(boot.drain_time)
    finally:
        if xds is not None:
            xds.stop()
        await dp.close(grace)
        await stop_tasks(tasks)
        if admin is not None:
            await admin.close()
        writer.close()


async def stop_tasks(tasks: list[asyncio.Task[Any]], timeout: float = STOP_TASKS_TIMEOUT) -> None:
    """Cancel ``tasks`` and wait for them, at most ``timeout`` seconds: a task that
    swallowed its cancellation (Python 3.11's ``wait_for`` can, when the awaited future
    completes at the same moment) must not keep the proxy from stopping."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in done:
        if not task.cancelled():
            task.exception()  # retrieved, as gather(return_exceptions=True) did
    for task in pending:
        log.warning("task %s did not stop within %gs of its cancellation", task.get_name(), timeout)


def settle_gc() -> None:
    """Startup is over: move what it built (modules, protos, the bootstrap) out of the
    collector's sight, and collect the young generation less often. The request path
    makes short-lived objects that reference counting frees; cycles are rare, and a
    collection that scanned the whole startup heap cost more than the request itself."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 100)


async def bind_listeners(dp: DataPlane, boot: Bootstrap, *, listen: bool = True) -> BoundPorts:
    """Bind ``outbound``, and ``inbound|<svc>`` and ``outbound|<svc>`` per local service
    (``listen=False``: bound only, until ``dp.start_serving()``)."""
    outbound = await dp.bind(
        "outbound", boot.outbound.address, boot.outbound.port, "outbound", listen=listen
    )
    inbound = {}
    own_outbound = {}
    for svc in boot.services:
        address = svc.inbound.address
        inbound[svc.name] = await dp.bind(
            f"inbound|{svc.name}", address, svc.inbound.port, "inbound", svc.name, listen=listen
        )
        own_outbound[svc.name] = await dp.bind(
            f"outbound|{svc.name}",
            svc.outbound.address,
            svc.outbound.port,
            "outbound",
            svc.name,
            listen=listen,
        )
    return BoundPorts(outbound=outbound, inbound=inbound, service_outbound=own_outbound)


async def serve_when_configured(
    dp: DataPlane, configured: asyncio.Event, timeout: float, on_serving: Callable[[], None]
) -> None:
    """Listen once ``configured`` is set, or after ``timeout`` seconds without a config
    (then requests are answered 503 "no config" until one comes, as a proxy that just
    started); then ``on_serving()``."""
    try:
        await asyncio.wait_for(configured.wait(), timeout)
    except TimeoutError:
        log.warning(
            "no config within %gs (none stored, the control plane not answering): "
            "listening without one",
            timeout,
        )
    await dp.start_serving()
    on_serving()


def service_token(svc: LocalService, tokens: dict[str, str]) -> str | None:
    """A service's join token: ``--token svc=T``, bootstrap ``token``, or ``token_file``."""
    if svc.name in tokens:
        return tokens[svc.name]
    if svc.token:
        return svc.token
    if svc.token_file:
        try:
            return Path(svc.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise OSError(f"service {svc.name}: cannot read token_file: {exc}") from None
    return None


def make_identities(
    dp: DataPlane,
    boot: Bootstrap,
    metrics: Metrics,
    ca: str | None,
    ca_bundle: str | None,
    tokens: dict[str, str],
) -> ProxyIdentities | None:
    """Identity managers for the local services with a join token (all of them with
    ``--ca``); None when there are none: the proxy then speaks plaintext only."""
    wanted = {svc.name: service_token(svc, tokens) for svc in boot.services}
    if ca is None:
        wanted = {name: token for name, token in wanted.items() if token}
    if not wanted:
        return None
    from plait.proxy.identities import ProxyIdentities  # only with mTLS

    return ProxyIdentities(
        dp,
        ca,
        wanted,
        boot.data_dir,
        bundle_file=ca_bundle,
        metrics=metrics,
        api_url=boot.control_plane.api_urls[0],
    )


def ready_info(boot: Bootstrap, bound: BoundPorts, admin: tuple[str, int]) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "node_id": boot.node_id,
        "admin": f"http://{admin[0]}:{admin[1]}",
        "outbound": f"{bound.outbound[0]}:{bound.outbound[1]}",
        "inbound": {svc: f"{a}:{p}" for svc, (a, p) in bound.inbound.items()},
        "outbound_services": {s: f"{a}:{p}" for s, (a, p) in bound.service_outbound.items()},
    }


def _help_formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's formatter with the width given: without it, argparse imports shutil
    (with bz2 and lzma, about 0.3 MB for the life of the proxy) to ask for the terminal's
    width, already when an argument is added."""
    try:
        columns = int(os.environ.get("COLUMNS", "0")) or os.get_terminal_size(1).columns
    except (ValueError, OSError):
        columns = 80
    return argparse.HelpFormatter(prog, width=max(columns - 2, 40))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="plait proxy",
        formatter_class=_help_formatter,
        description="Run the plait data-plane proxy: listeners from the bootstrap, config "
        "over xDS from the control plane (docs/internals.md).",
    )
    parser.add_argument("--config", required=True, help="bootstrap YAML (docs/internals.md)")
    parser.add_argument("--ready-file", default=None, help="overrides the bootstrap ready_file")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds to drain on stop")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--ca", default=None, help="the CA's https URL (default: ask the control plane's API)"
    )
    parser.add_argument(
        "--ca-bundle", default=None, help="PEM roots that verify the CA (see plait.identity)"
    )
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="SERVICE=TOKEN",
        help="a local service's join token (overrides the bootstrap's); repeatable",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes, each with its own event loop, sharing the listener ports "
        "(SO_REUSEPORT; docs/internals.md). Default 1: one process, no supervisor",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    tokens = dict(t.split("=", 1) for t in args.token if "=" in t)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    def run(loop_factory: Any, worker: WorkerRole | None = None) -> None:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(
                run_proxy(
                    args.config,
                    ready_file=None if worker is not None else args.ready_file,
                    grace=args.grace,
                    ca=args.ca,
                    ca_bundle=args.ca_bundle,
                    tokens=tokens,
                    worker=worker,
                )
            )

    try:
        import uvloop

        if args.workers > 1:
            from plait.proxy import workers

            def run_worker(role: WorkerRole) -> int:
                try:
                    run(uvloop.new_event_loop, role)
                except OSError as exc:
                    print(f"plait proxy: worker {role.index} cannot start: {exc}", file=sys.stderr)
                    return 1
                return 0

            return workers.supervise(
                args.config,
                args.workers,
                run_worker,
                ready_file=args.ready_file,
                grace=args.grace,
            )
        run(uvloop.new_event_loop)
    except BootstrapError as exc:
        print(f"plait proxy: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"plait proxy: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
