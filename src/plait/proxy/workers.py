"""``plait proxy --workers N``: N worker processes behind the same listener ports.

One proxy process runs one event loop on one core. With ``--workers N`` (N > 1) the
process started is a small supervisor that forks N workers, each a whole proxy
(:func:`plait.proxy.main.run_proxy`: its own uvloop, data plane, admin server and xDS
client), all accepting on the same ports; the kernel spreads new connections over them
(``SO_REUSEPORT``). ``--workers 1`` (the default) does none of this: the proxy runs in
the process started, as before.

**Ports.** The supervisor binds every listener of the bootstrap (``outbound``, and per
local service ``inbound|<svc>`` and ``outbound|<svc>``) with ``SO_REUSEPORT``, port 0
included, and keeps these sockets bound but *not listening* for its whole life: so a
port 0 becomes a fixed port that every worker (and every restarted worker) binds again
with ``SO_REUSEPORT``, and nobody else can take it in between. A bound socket that does
not listen gets no connections; only the workers' listening sockets do. Each worker's
own ``SO_REUSEPORT`` socket has its own accept queue, so a worker killed drops only the
connections queued at it (and those it was serving).

**Workers.** Worker ``i`` runs the bootstrap with the ports fixed and:

- xDS node id ``<node_id>`` for worker 0, ``<node_id>.w<i>`` for the others: each is its
  own xDS node to the control plane (the same node metadata: the same ports); the proxy's
  name in ``Via``, ``Proxy-Status`` and the access log stays ``<node_id>`` in all;
- data dir ``<data_dir>`` for worker 0, ``<data_dir>/worker-<i>`` for the others (the
  last-known-good file is per xDS node; with mTLS each worker has its own key and
  certificate, from the same join token, which is reusable);
- registration (heartbeats of the local service instances, their health checks, and the
  deregistration when draining) in worker 0 only, so the control plane sees one node
  with one instance per local service, not N;
- admin: worker 0 on the bootstrap's admin address and port, the others on port 0;
  the ready file lists each worker's pid, node id and admin address (``workers``).

**Supervision.** The ready file (``--ready-file`` or the bootstrap's; ``pid`` is the
supervisor's) is written by the supervisor once every worker is ready, and rewritten
when a worker was replaced; each worker hands its own ready info to the supervisor as
``<data_dir>/workers/worker-<i>.json``. A worker that exits is started again after a backoff (0.5 s,
doubling up to 30 s; back to 0.5 s once a worker has run for a minute). The replacement
binds its ports but listens only once it has a config (its last-known-good, or the
control plane's; at most ``main.WARM_TIMEOUT`` seconds): a socket that does not listen
gets no connections, so until then the running workers take them all, rather than the
replacement answering 503 "no config". SIGTERM or
SIGINT to the supervisor sends SIGTERM to every worker, which drains as a single proxy
does (worker 0 deregisters; all keep serving ``drain_time``, then finish requests in
flight); workers still alive after ``drain_time + grace + 5`` seconds are killed. Every
worker asks the kernel for SIGTERM when the supervisor dies (``PR_SET_PDEATHSIG``), so
a supervisor killed with SIGKILL leaves no worker behind.
"""

from __future__ import annotations

import contextlib
import ctypes  # here, not in the worker: imported before the fork, its pages are shared
import gc
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plait.fsutil import write_json_atomic
from plait.model.errors import FieldError
from plait.proxy.bootstrap import (
    NODE_ID_RE,
    Address,
    Bootstrap,
    BootstrapError,
    LocalService,
)
from plait.proxy.bootstrap_reader import read_bootstrap

log = logging.getLogger("plait.proxy.workers")

PR_SET_PDEATHSIG = 1
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
HEALTHY_RUN = 60.0  # a worker that ran this long restarts with the first backoff again
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)


@dataclass
class WorkerRole:
    """What :func:`plait.proxy.main.run_proxy` needs to know to run as worker ``index``."""

    index: int
    boot: Bootstrap  # ports fixed, this worker's node id, data dir and admin port
    hop_node_id: str  # the proxy's name in Via / Proxy-Status / the access log
    register: bool  # heartbeats and health checks of the local services
    ready: Callable[[dict[str, Any]], None]  # called with the ready info once serving
    # a replacement for a worker that exited: it listens only once it has a config
    # (stored or from the control plane), so the running workers take its share meanwhile
    replacement: bool = False


def worker_node_id(node_id: str, index: int) -> str:
    return node_id if index == 0 else f"{node_id}.w{index}"


def _with(model: Any, **changes: Any) -> Any:
    """A copy of a bootstrap model with some fields replaced (and checked again)."""
    values = {name: getattr(model, name) for name in type(model).FIELDS}
    values.update(changes)
    return type(model)(**values)


def worker_bootstrap(boot: Bootstrap, index: int, ports: dict[str, int]) -> Bootstrap:
    """Worker ``index``'s bootstrap: listener ports fixed to ``ports`` (by listener
    name), its node id and data dir, its admin port (0 for all but worker 0)."""

    def fixed(addr: Address, name: str) -> Address:
        moved: Address = _with(addr, port=ports[name])
        return moved

    services: list[LocalService] = [
        _with(
            svc,
            inbound=fixed(svc.inbound, f"inbound|{svc.name}"),
            outbound=fixed(svc.outbound, f"outbound|{svc.name}"),
        )
        for svc in boot.services
    ]
    worker: Bootstrap = _with(
        boot,
        node_id=worker_node_id(boot.node_id, index),
        outbound=fixed(boot.outbound, "outbound"),
        services=tuple(services),
        admin=boot.admin if index == 0 else _with(boot.admin, port=0),
        data_dir=boot.data_dir if index == 0 else str(Path(boot.data_dir) / f"worker-{index}"),
        ready_file=None,
    )
    return worker


def listener_addresses(boot: Bootstrap) -> dict[str, tuple[str, int]]:
    """Every listener of the bootstrap by name (as :func:`main.bind_listeners` names them)."""
    out = {"outbound": (boot.outbound.address, boot.outbound.port)}
    for svc in boot.services:
        out[f"inbound|{svc.name}"] = (svc.inbound.address, svc.inbound.port)
        out[f"outbound|{svc.name}"] = (svc.outbound.address, svc.outbound.port)
    return out


def reserve_ports(boot: Bootstrap) -> tuple[dict[str, int], list[socket.socket]]:
    """Bind (not listen) every listener address with SO_REUSEPORT; the ports by listener
    name and the sockets, which the supervisor keeps open so the ports stay ours."""
    ports: dict[str, int] = {}
    socks: list[socket.socket] = []
    try:
        for name, (address, port) in listener_addresses(boot).items():
            family, _, _, _, sockaddr = socket.getaddrinfo(
                address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(sockaddr)
            ports[name] = sock.getsockname()[1]
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return ports, socks


def _die_with_parent(parent: int) -> None:
    """SIGTERM to this process when the supervisor dies (Linux), and exit at once if it
    is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


@dataclass
class Slot:
    """One worker position: its current process and its restart bookkeeping."""

    index: int
    pid: int | None = None
    started: float = 0.0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None
    restarts: int = 0
    info: dict[str, Any] | None = None
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        boot: Bootstrap,
        count: int,
        run_worker: Callable[[WorkerRole], int],
        *,
        ready_file: str | None,
        grace: float,
    ) -> None:
        self.boot = boot
        self.count = count
        self.run_worker = run_worker
        self.ready_file = ready_file or boot.ready_file
        self.grace = grace
        self.slots = [Slot(i) for i in range(count)]
        self.ports: dict[str, int] = {}
        self.socks: list[socket.socket] = []
        # where each worker writes its ready info for the supervisor (in the data dir,
        # the proxy's own: a supervisor killed with SIGKILL leaves nothing in /tmp)
        self.tmp = Path(boot.data_dir) / "workers"
        self.stopping = False
        self.written: tuple[int | None, ...] | None = None  # worker pids in the ready file

    # -- the workers -------------------------------------------------------------------

    def start(self, slot: Slot) -> None:
        role_boot = worker_bootstrap(self.boot, slot.index, self.ports)
        ready_path = self.tmp / f"worker-{slot.index}.json"
        ready_path.unlink(missing_ok=True)
        slot.info = None
        slot.restart_at = None
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = 1
            try:
                _die_with_parent(parent)
                for sig in SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
                for sock in self.socks:
                    sock.close()
                _tag_logs(slot.index)
                code = self.run_worker(
                    WorkerRole(
                        index=slot.index,
                        boot=role_boot,
                        hop_node_id=self.boot.node_id,
                        register=slot.index == 0,
                        ready=lambda info: write_json_atomic(ready_path, info, 0o600),
                        replacement=slot.restarts > 0,
                    )
                )
            except KeyboardInterrupt:
                code = 130
            except Exception:  # reported, then the worker exits (and is started again)
                logging.getLogger("plait.proxy").exception("worker %d failed", slot.index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        slot.pid = pid
        slot.started = time.monotonic()
        log.info("worker %d started: pid %d, node %s", slot.index, pid, role_boot.node_id)

    def reap(self) -> None:
        """Collect exited workers; schedule their restart unless stopping."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            slot.exit_codes.append(code)
            slot.pid = None
            slot.info = None
            if self.stopping:
                continue
            now = time.monotonic()
            if now - slot.started >= HEALTHY_RUN:
                slot.backoff = BACKOFF_FIRST
            slot.restart_at = now + slot.backoff
            log.warning(
                "worker %d (pid %d) exited with %s; restarting it in %.1fs",
                slot.index,
                pid,
                f"signal {-code}" if code < 0 else f"code {code}",
                slot.backoff,
            )
            slot.backoff = min(slot.backoff * 2, BACKOFF_MAX)
            slot.restarts += 1

    def poll_ready(self) -> None:
        for slot in self.slots:
            if slot.pid is not None and slot.info is None:
                path = self.tmp / f"worker-{slot.index}.json"
                with contextlib.suppress(OSError, ValueError):
                    slot.info = json.loads(path.read_text())
        pids = tuple(s.pid for s in self.slots)
        if all(s.info is not None for s in self.slots) and pids != self.written:
            self.written = pids
            if self.ready_file:
                write_json_atomic(self.ready_file, self.ready_info(), 0o600, make_parents=True)
            log.info("proxy %s serving with %d workers", self.boot.node_id, self.count)

    def ready_info(self) -> dict[str, Any]:
        first = self.slots[0].info or {}
        return {
            **first,
            "pid": os.getpid(),
            "node_id": self.boot.node_id,
            "workers": [
                {
                    "index": s.index,
                    "pid": s.pid,
                    "node_id": worker_node_id(self.boot.node_id, s.index),
                    "admin": (s.info or {}).get("admin"),
                    "restarts": s.restarts,
                }
                for s in self.slots
            ],
        }

    # -- the supervisor's life -----------------------------------------------------------

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            self.tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.ports, self.socks = reserve_ports(self.boot)
            # what the imports built stays shared with the workers: a collection in a
            # worker does not touch (and so copy) the frozen objects' pages
            gc.collect()
            gc.freeze()
            for slot in self.slots:
                self.start(slot)
            while not self.stopping:
                self.reap()
                now = time.monotonic()
                for slot in self.slots:
                    if slot.pid is None and slot.restart_at is not None and now >= slot.restart_at:
                        self.start(slot)
                self.poll_ready()
                got = signal.sigtimedwait(SIGNALS, 0.1)
                if got is not None and got.si_signo in (signal.SIGTERM, signal.SIGINT):
                    log.info("proxy %s stopping its workers", self.boot.node_id)
                    self.stopping = True
            return self.stop_all()
        finally:
            for sock in self.socks:
                sock.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)

    def stop_all(self) -> int:
        """SIGTERM every worker, wait for them to drain, SIGKILL what is left."""
        for slot in self.slots:
            if slot.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.boot.drain_time + self.grace + 5.0
        while any(s.pid is not None for s in self.slots) and time.monotonic() < deadline:
            self.reap()
            signal.sigtimedwait(SIGNALS, 0.1)
        for slot in self.slots:
            if slot.pid is not None:
                log.warning("worker %d (pid %d) did not stop: killing it", slot.index, slot.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(slot.pid, 0)
                slot.pid = None
                slot.exit_codes.append(-int(signal.SIGKILL))
        last = [s.exit_codes[-1] for s in self.slots if s.exit_codes]
        return 0 if all(code == 0 for code in last) else 1


def _tag_logs(index: int) -> None:
    """Worker log lines say which worker wrote them."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)s %(name)s[worker {index} pid %(process)d]: %(message)s"
            )
        )


def check_worker_node_ids(boot: Bootstrap, count: int) -> None:
    """The workers' node ids must be valid node ids (a long node_id may not fit)."""
    last = worker_node_id(boot.node_id, count - 1)
    if not NODE_ID_RE.match(last):
        message = (
            f"with --workers {count}, the worker node ids (such as {last!r}) must be at "
            "most 128 characters: shorten node_id"
        )
        raise BootstrapError([FieldError("", 0, None, None, "node_id", None, message)])


def supervise(
    bootstrap_path: str,
    count: int,
    run_worker: Callable[[WorkerRole], int],
    *,
    ready_file: str | None,
    grace: float,
) -> int:
    """Run ``count`` workers of the proxy in ``bootstrap_path`` until SIGTERM/SIGINT."""
    boot = read_bootstrap(bootstrap_path)
    check_worker_node_ids(boot, count)
    return Supervisor(boot, count, run_worker, ready_file=ready_file, grace=grace).run()
