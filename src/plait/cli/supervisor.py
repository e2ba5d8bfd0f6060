"""Start, watch and stop the processes of a local mesh, by PID.

Every process gets its own session (``start_new_session``): a Ctrl-C in the terminal
reaches only the supervisor, which then stops its children itself -- SIGTERM by PID,
a wait, SIGKILL after the timeout. Output goes to one log file per process.

A :class:`Process` can be written to JSON and read back by another command (``plait
down``); it records the process start time from ``/proc`` so that a PID reused by an
unrelated process after the mesh died is never signalled. A zombie counts as gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POLL_INTERVAL = 0.05


class StartError(Exception):
    """A process exited, or did not become ready in time; the text includes its log tail."""


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, if given, started at ``start_time``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _is_zombie(pid):
        return False
    return start_time is None or process_start_time(pid) in (None, start_time)


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@dataclass
class Process:
    """One supervised process. ``popen`` is set only in the process that started it."""

    name: str
    role: str
    pid: int
    argv: list[str]
    log: Path
    start_time: int | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return pid_alive(self.pid, self.start_time)

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "pid": self.pid,
            "start_time": self.start_time,
            "argv": self.argv,
            "log": str(self.log),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Process:
        return cls(
            name=str(obj["name"]),
            role=str(obj.get("role", "")),
            pid=int(obj["pid"]),
            argv=list(obj.get("argv") or []),
            log=Path(obj.get("log") or "-"),
            start_time=obj.get("start_time"),
        )

    def failure(self, what: str) -> StartError:
        return StartError(
            f"{self.name} (pid {self.pid}) {what}; last lines of {self.log}:\n{tail(self.log)}"
        )


def signal_pid(proc: Process, signum: int) -> None:
    if not proc.alive():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signum)


def stop_processes(procs: Iterable[Process], timeout: float = 5.0) -> dict[str, str]:
    """Stop every process: SIGTERM all, wait up to ``timeout``, SIGKILL the rest.

    Returns ``{name: how}`` with how = ``stopped``, ``killed`` or ``not running``.
    """
    procs = list(procs)
    outcome = {p.name: "stopped" if p.alive() else "not running" for p in procs}
    running = [p for p in procs if outcome[p.name] == "stopped"]
    for proc in running:
        signal_pid(proc, signal.SIGTERM)
    running = _wait_gone(running, timeout)
    for proc in running:
        outcome[proc.name] = "killed"
        signal_pid(proc, signal.SIGKILL)
    for proc in _wait_gone(running, 5.0):
        outcome[proc.name] = "still running after SIGKILL"
    return outcome


def _wait_gone(procs: list[Process], timeout: float) -> list[Process]:
    deadline = time.monotonic() + timeout
    while procs:
        procs = [p for p in procs if p.alive()]
        if not procs or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    return procs


@dataclass
class Supervisor:
    """Starts processes with logs under ``log_dir`` and stops them, newest first."""

    log_dir: Path
    env: Mapping[str, str] | None = None
    processes: list[Process] = field(default_factory=list)

    def start(
        self,
        name: str,
        role: str,
        argv: Sequence[str],
        *,
        pass_fds: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
    ) -> Process:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / (name.replace("/", "-").replace(":", "-") + ".log")
        child_env = {**os.environ, **(self.env or {}), **(env or {}), "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=tuple(pass_fds),
                start_new_session=True,
                env=child_env,
            )
        proc = Process(name, role, popen.pid, list(argv), log, process_start_time(popen.pid), popen)
        self.processes.append(proc)
        return proc

    def get(self, name: str) -> Process:
        for proc in self.processes:
            if proc.name == name:
                return proc
        raise KeyError(name)

    def exited(self) -> list[Process]:
        """The processes that are no longer running."""
        return [p for p in self.processes if not p.alive()]

    def stop(self, names: Iterable[str] | None = None, timeout: float = 5.0) -> dict[str, str]:
        """Stop the named processes (all if None) and forget them."""
        wanted = set(names) if names is not None else {p.name for p in self.processes}
        chosen = [p for p in reversed(self.processes) if p.name in wanted]
        outcome = stop_processes(chosen, timeout)
        self.processes = [p for p in self.processes if p.name not in wanted]
        return outcome

    def wait_ready_file(self, proc: Process, path: Path, timeout: float) -> dict[str, Any]:
        """Wait for ``proc`` to write its ready file; its JSON. StartError if it exits first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = json.loads(path.read_text())
                if isinstance(info, dict):
                    return info
            except (OSError, ValueError):
                pass
            if not proc.alive():
                raise proc.failure(f"exited with code {proc.returncode} before it was ready")
            if time.monotonic() >= deadline:
                raise proc.failure(f"did not write {path} within {timeout:g}s")
            time.sleep(POLL_INTERVAL)
