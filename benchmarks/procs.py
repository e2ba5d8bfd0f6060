"""Processes for the benchmark: start pinned to a CPU, stop by PID, read CPU time and peak RSS.

Every process the harness starts goes through :class:`Procs`, which remembers it and stops
it by its PID (SIGTERM, then SIGKILL) -- never by name. CPU time and peak RSS come from
``/proc/<pid>/stat`` and ``/proc/<pid>/status`` of the process and its descendants (nginx
runs a master and a worker).

The parsers (:func:`parse_proc_stat`, :func:`parse_vm_hwm`, :func:`parse_ctxt_switches`) are
pure and unit-tested.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- pure parsers ----------------------------------------------------------------------------


def parse_proc_stat(text: str) -> tuple[int, int, int]:
    """``/proc/<pid>/stat`` -> (ppid, utime ticks, stime ticks).

    The command name (field 2) is in parentheses and may hold spaces or ')', so fields
    are counted from the last ')'.
    """
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return int(rest[1]), int(rest[11]), int(rest[12])


def parse_vm_hwm(text: str) -> int | None:
    """``VmHWM`` (peak resident set size) in KiB from ``/proc/<pid>/status``; None if absent."""
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def parse_ctxt_switches(text: str) -> tuple[int, int]:
    """``/proc/<pid>/task/<tid>/status`` -> (voluntary, involuntary) context switches: a
    voluntary one is the task going to sleep (its event loop waits for I/O), an
    involuntary one the scheduler taking the CPU from it while it could still run."""
    counts = {"voluntary_ctxt_switches:": 0, "nonvoluntary_ctxt_switches:": 0}
    for line in text.splitlines():
        key, _, value = line.partition("\t")
        if key in counts:
            counts[key] = int(value)
    return counts["voluntary_ctxt_switches:"], counts["nonvoluntary_ctxt_switches:"]


CpuTicks = dict[int, tuple[int, int, int]]  # cpu -> (busy, total, steal) ticks


def parse_cpu_times(text: str) -> CpuTicks:
    """``/proc/stat`` -> {cpu: (busy ticks, total ticks, steal ticks)}; busy excludes idle
    and iowait, and includes steal (time the hypervisor ran someone else on this CPU)."""
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        ticks = [int(x) for x in rest.split()]
        # user nice system idle iowait irq softirq steal [guest guest_nice: inside user/nice]
        total = sum(ticks[:8])
        out[int(name[3:])] = (total - ticks[3] - ticks[4], total, ticks[7])
    return out


# -- /proc readers ---------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def descendants(pids: Sequence[int]) -> list[int]:
    """``pids`` and all their live descendants (by scanning ``/proc/*/stat`` once)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        text = _read(f"/proc/{entry}/stat")
        if text is None:
            continue
        ppid = parse_proc_stat(text)[0]
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], list(pids)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_times(pids: Sequence[int]) -> tuple[float, float]:
    """(utime, stime), in seconds, of ``pids`` and their descendants."""
    user = system = 0
    for p in descendants(pids):
        text = _read(f"/proc/{p}/stat")
        if text is not None:
            _, utime, stime = parse_proc_stat(text)
            user += utime
            system += stime
    return user / CLK_TCK, system / CLK_TCK


def ctxt_switches(pids: Sequence[int]) -> tuple[int, int]:
    """(voluntary, involuntary) context switches so far of every thread of ``pids`` and
    their descendants."""
    vol = invol = 0
    for p in descendants(pids):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            text = _read(f"/proc/{p}/task/{tid}/status")
            if text is not None:
                v, n = parse_ctxt_switches(text)
                vol += v
                invol += n
    return vol, invol


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime, in seconds, of ``pids`` and their descendants."""
    return sum(cpu_times(pids))


def ticks_spent(spans: Sequence[tuple[CpuTicks, CpuTicks]]) -> CpuTicks:
    """Per CPU, the (busy, total, steal) ticks spent over several ``(before, after)``
    spans of :func:`cpu_busy_ticks`, summed (the CPUs present at both ends of each)."""
    out: dict[int, tuple[int, int, int]] = {}
    for before, after in spans:
        for cpu in before.keys() & after.keys():
            b = out.get(cpu, (0, 0, 0))
            d = tuple(x - y for x, y in zip(after[cpu], before[cpu], strict=True))
            out[cpu] = (b[0] + d[0], b[1] + d[1], b[2] + d[2])
    return out


def steal_share(spent: CpuTicks, cpu: int) -> float | None:
    """The share of ``cpu``'s ticks in :func:`ticks_spent` sums that the hypervisor
    stole; None if no tick of it passed."""
    if cpu not in spent or spent[cpu][1] <= 0:
        return None
    return spent[cpu][2] / spent[cpu][1]


def quiet_windows(
    samples: Sequence[tuple[float, CpuTicks]], cpus: Sequence[int]
) -> list[tuple[float, float]]:
    """The time spans between consecutive ``samples`` ``(time, ticks)`` in which the
    hypervisor stole no tick from any of ``cpus``; adjacent spans are merged."""
    out: list[tuple[float, float]] = []
    for (t0, a), (t1, b) in itertools.pairwise(samples):
        if any(c not in a or c not in b or b[c][2] != a[c][2] for c in cpus):
            continue
        if out and out[-1][1] == t0:
            out[-1] = (out[-1][0], t1)
        else:
            out.append((t0, t1))
    return out


class TickSampler:
    """``with TickSampler(0.1) as s: ...``: :func:`cpu_busy_ticks` with the wall time,
    on entry, every ``interval`` seconds on a thread, and on exit (``s.samples``)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: list[tuple[float, CpuTicks]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tick-sampler", daemon=True)

    def _sample(self) -> None:
        self.samples.append((time.time(), cpu_busy_ticks()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> TickSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def cpu_busy_ticks() -> CpuTicks:
    """Per CPU (busy, total, steal) ticks since boot, from ``/proc/stat``."""
    return parse_cpu_times(_read("/proc/stat") or "")


def peak_rss_kib(pids: Sequence[int]) -> int:
    """Sum of VmHWM over ``pids`` and their descendants, KiB."""
    total = 0
    for p in descendants(pids):
        text = _read(f"/proc/{p}/status")
        if text is not None:
            total += parse_vm_hwm(text) or 0
    return total


# -- ports and readiness ---------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for peers that cannot report what they bound)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def http_get(
    host: str, port: int, path: str = "/", headers: Mapping[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=3.0)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# -- starting and stopping -------------------------------------------------------------------


class StartError(RuntimeError):
    pass


@dataclass
class Proc:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path
    cpu: int | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def failure(self, what: str) -> StartError:
        return StartError(f"{self.name} (pid {self.pid}) {what}; log {self.log}:\n{self.tail()}")


@dataclass
class Procs:
    """Starts processes (optionally pinned with ``taskset -c CPU``) and stops them by PID."""

    log_dir: Path
    started: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        full = [*(["taskset", "-c", str(cpu)] if cpu is not None else []), *argv]
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # a Ctrl-C in the terminal reaches only the harness
            )
        proc = Proc(name, list(full), popen, log, cpu)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 5.0) -> None:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.popen.wait(timeout)
        with contextlib.suppress(ValueError):
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.started)):
            self.stop(proc)


def wait_until(check, timeout: float, what: str, procs: Sequence[Proc] = ()) -> None:  # type: ignore[no-untyped-def]
    """Poll ``check()`` until true; StartError on timeout or if one of ``procs`` exits."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        for p in procs:
            if not p.alive():
                raise p.failure(f"exited with code {p.popen.returncode} while waiting for {what}")
        try:
            if check():
                return
        except (OSError, http.client.HTTPException, ValueError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise StartError(f"timed out after {timeout:g}s waiting for {what} (last: {last})")
        time.sleep(0.1)


def wait_http_ok(
    host: str,
    port: int,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 20.0,
    procs: Sequence[Proc] = (),
    what: str = "",
) -> None:
    wait_until(
        lambda: http_get(host, port, "/", headers)[0] == 200,
        timeout,
        what or f"HTTP 200 from {host}:{port}",
        procs,
    )
