#!/usr/bin/env python3
"""User-space instructions per request of running proxies under callgrind: plait vs HAProxy.

    .venv/bin/python benchmarks/proxy_instructions.py [--requests 4000] [--tree DIR ...]
        [--no-haproxy]

The one-hop layout of ``run.py`` (the upstream nginx and h2load on CPU 1, the proxy on
CPU 0). Each proxy runs under ``valgrind --tool=callgrind --instr-atstart=no``: after
:data:`WARMUP` requests (h2load ``--h1 -c 10``, as fast as the proxy answers), its
counters are zeroed and instrumentation switched on (``callgrind_control -z``, ``-i on``)
for ``--requests`` requests, then off, and the counts dumped (``-d``). The dump's total
divided by the requests is the figure: every instruction the process ran in user space
for them -- the interpreter, the compiled request path, uvloop and libc for plait --
and none of the kernel's.

Unlike times on a shared virtual machine, the count is the same from run to run within
a few percent (what varies: under valgrind plait formats its access log's time text,
once per millisecond at full speed, on most requests), so it is the A/B for a change
to the request path; and, set
against HAProxy's, it says how much work each proxy does per request. What it cannot
say is what that work costs when the caches are cold, as at 1000 req/s on a vCPU that
halts between bursts (RESULTS.md, Twelfth and Thirteenth rounds).
``benchmarks/instructions.sh`` counts the request path alone (``hotpath.py``, no
sockets); this counts the whole proxy, event loop and all.

``--tree DIR`` also measures plait from another checkout (``PYTHONPATH=DIR/src``; its
compiled modules when built and current there, else its sources interpreted): e.g. a
``git worktree`` of the commit before a change. Needs valgrind (Debian ``valgrind``)
besides the tools ``run.py`` installs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import load  # noqa: E402
import plait_case  # noqa: E402
from peers import SERVICE, PeerSet  # noqa: E402
from procs import Procs  # noqa: E402

PROXY_CPU, SIDE_CPU = 0, 1
WARMUP = 1000  # requests before counting: connections open, memos filled, code loaded
CLIENTS = 10


# -- pure ---------------------------------------------------------------------------------


def callgrind_argv(out_dir: Path) -> list[str]:
    """The command a measured proxy runs under; one output file per process and dump."""
    return [
        "valgrind",
        "-q",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_dir}/callgrind.%p",
    ]


def callgrind_total(text: str) -> int:
    """The instruction count of a callgrind output file (its ``summary:`` or ``totals:``
    line); a file with neither is an error."""
    found = re.findall(r"^(?:summary|totals): (\d+)", text, re.M)
    if not found:
        raise ValueError("no 'summary:' or 'totals:' line in the callgrind output")
    return max(int(n) for n in found)


def h2load_count_argv(url: str, requests: int) -> list[str]:
    """h2load sending ``requests`` requests over HTTP/1.1 as fast as they are answered."""
    if requests <= 0:
        raise ValueError(f"requests must be positive, not {requests}")
    argv = ["h2load", "--h1", "-n", str(requests), "-c", str(CLIENTS), "-t", "1"]
    return [*argv, "-H", f":authority: {SERVICE}", url]


def table(counts: dict[str, float]) -> str:
    """Markdown: instructions per request, and × HAProxy when it was measured."""
    base = counts.get("haproxy")
    lines = ["| proxy | instructions per request | × HAProxy |", "| --- | ---: | ---: |"]
    for name, n in counts.items():
        ratio = f"{n / base:.2f}×" if base else "—"
        lines.append(f"| {name} | {n:,.0f} | {ratio} |")
    return "\n".join(lines)


# -- I/O ----------------------------------------------------------------------------------


def _send(url: str, requests: int) -> None:
    argv = h2load_count_argv(url, requests)
    pinned = ["taskset", "-c", str(SIDE_CPU), *argv]
    r = subprocess.run(pinned, capture_output=True, text=True, timeout=900)
    summary = load.parse_h2load(r.stdout) if r.returncode == 0 else None
    if summary is None or summary["errors"] or summary["requests"]["succeeded"] != requests:
        raise RuntimeError(f"{' '.join(argv)}: not every request succeeded:\n{r.stdout}{r.stderr}")


def _control(pid: int, *args: str) -> None:
    r = subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"callgrind_control {' '.join(args)} {pid}: {r.stdout}{r.stderr}")


def count(port: int, pid: int, out_dir: Path, requests: int) -> float:
    """Instructions per request of the callgrind process ``pid`` behind ``port``."""
    url = f"http://127.0.0.1:{port}/"
    _send(url, WARMUP)
    _control(pid, "-z")
    _control(pid, "-i", "on")
    _send(url, requests)
    _control(pid, "-i", "off")
    before = set(out_dir.glob(f"callgrind.{pid}.*"))
    _control(pid, "-d")
    dumped = set(out_dir.glob(f"callgrind.{pid}.*")) - before
    if len(dumped) != 1:
        raise RuntimeError(f"expected one new dump of process {pid} in {out_dir}: {dumped}")
    return callgrind_total(dumped.pop().read_text()) / requests


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="benchmarks/proxy_instructions.py", description=__doc__.splitlines()[0]
    )
    p.add_argument("--requests", type=int, default=4000, help="requests counted (default 4000)")
    p.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="DIR",
        help="also measure plait from this checkout (repeatable)",
    )
    p.add_argument("--no-haproxy", action="store_true", help="measure plait only")
    a = p.parse_args(argv)
    if a.requests <= 0:
        p.error("--requests must be positive")
    tools = ("valgrind", "callgrind_control", "h2load", "nginx", "haproxy", "taskset")
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        p.error(f"not installed: {', '.join(missing)}")
    try:
        tree_envs = [(f"plait@{tree}", plait_case.tree_env(tree)) for tree in a.tree]
    except ValueError as exc:
        p.error(str(exc))
    os.sched_setaffinity(0, {SIDE_CPU})
    counts: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="plait-instructions-") as tmp:
        work = Path(tmp)
        procs = Procs(work / "logs")
        cases: list[plait_case.PlaitCase] = []
        try:
            peers = PeerSet(procs, work, PROXY_CPU, SIDE_CPU, wrap=callgrind_argv(work))
            upstream = peers.start_upstream()
            if not a.no_haproxy:
                ep = peers.chain("haproxy", 1, False)
                counts["haproxy"] = count(ep.port, ep.procs[0].pid, work, a.requests)
            for i, (name, env) in enumerate([("plait", {}), *tree_envs]):
                case = plait_case.PlaitCase(
                    procs,
                    work / f"plait-{i}",
                    hops=1,
                    upstream_port=upstream,
                    proxy_cpu=PROXY_CPU,
                    side_cpu=SIDE_CPU,
                    proxy_wrap=callgrind_argv(work),
                    env=env,
                )
                cases.append(case)
                ep = case.start()
                counts[name] = count(ep.port, ep.procs[0].pid, work, a.requests)
                print(f"{name}: {counts[name]:,.0f} instructions per request", flush=True)
        finally:
            for case in cases:
                case.stop()
            procs.stop_all()
    print()
    print(table(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
