"""Where a plait proxy's resident memory goes: per import step, and for running proxies.

Two reports (both by default):

* ``imports``: a fresh interpreter imports the proxy's dependencies one step at a time,
  in the order the proxy pulls them in, and prints ``VmRSS`` after each step and the
  difference to the step before; then which heavy packages ``plait.proxy.main`` left in
  ``sys.modules`` (pydantic and cryptography should be absent: no proxy imports them, not
  even with an identity, see docs/internals.md, "Memory"), and again after the mTLS-only
  step.
* ``running``: real proxies in front of an nginx upstream, started by the benchmark
  harness (:mod:`plait_case`): the 1-hop plaintext proxy and, with ``--mtls``, the two
  proxies of the 2-hop mTLS case. Prints ``VmRSS`` idle (ready, config received), then
  after ``wrk -t1 -c50 -dNs`` through the proxy (``VmRSS`` and the peak ``VmHWM``).
  ``--workers N`` starts the 1-hop proxy with ``--workers N`` and reports the supervisor
  (the first row) and every worker.
* ``churn`` (not in ``all``: it takes minutes): the two proxies of the 2-hop mTLS case
  under ``--rounds`` rounds of ``wrk -t1 -c50 -dNs``, ``--gap`` seconds apart. With a
  gap past the pool's idle timeout (60 s) every pooled TLS connection between the two
  is closed and a new one handshaken each round: ``VmHWM`` (the peak), ``VmRSS`` and
  its anonymous and file-backed parts after each round show what connection churn
  leaves behind.

Run::

    .venv/bin/python benchmarks/rss_breakdown.py                  # both reports
    .venv/bin/python benchmarks/rss_breakdown.py imports
    .venv/bin/python benchmarks/rss_breakdown.py running --mtls --duration 5
    .venv/bin/python benchmarks/rss_breakdown.py churn --rounds 5 --gap 62 --duration 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# (label, statement) in the order the proxy imports them; each step's delta is its own cost.
STEPS: list[tuple[str, str]] = [
    ("python", "pass"),
    ("asyncio + ssl", "import asyncio, ssl"),
    ("uvloop + httptools", "import uvloop, httptools"),
    ("plait.proxy.bootstrap", "import plait.proxy.bootstrap"),
    ("plait.proxy.dataplane", "import plait.proxy.dataplane"),
    ("protobuf", "import google.protobuf.message"),
    ("plait.proxy.xds_decode (xds schema)", "import plait.proxy.xds_decode"),
    ("grpc", "import grpc"),
    ("plait.proxy.xds_client", "import plait.proxy.xds_client"),
    ("plait.proxy.main", "import plait.proxy.main"),
    ("(mTLS only) plait.proxy.identities", "import plait.proxy.identities"),
    # the bootstrap is parsed by a child (plait.proxy.bootstrap_reader), not the proxy
    ("(not in the proxy) yaml + plait.model.source", "import plait.model.source"),
    ("(not in the proxy) pydantic", "import pydantic"),
]

HEAVY = ("pydantic", "pydantic_core", "cryptography", "plait.model.resources", "typer")

_CHILD = """
import json, sys
def rss():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
out = []
steps = json.loads(sys.argv[1])
heavy = json.loads(sys.argv[2])
for label, stmt in steps:
    exec(stmt)
    if label == 'plait.proxy.main':
        present = [m for m in heavy if m in sys.modules]
    if label.startswith('(mTLS only)'):
        present_mtls = [m for m in heavy if m in sys.modules]
    out.append([label, rss()])
print(json.dumps({'steps': out, 'present_after_main': present, 'present_with_mtls': present_mtls}))
"""


def import_steps(python: str = sys.executable) -> dict[str, Any]:
    """Run :data:`STEPS` in a fresh interpreter; ``{"steps": [[label, kib]], ...}``."""
    r = subprocess.run(
        [python, "-c", _CHILD, json.dumps(STEPS), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return dict(json.loads(r.stdout))


def format_steps(result: dict[str, Any]) -> str:
    lines = [f"{'step':44} {'VmRSS MiB':>10} {'+MiB':>7}"]
    prev = 0
    for label, kib in result["steps"]:
        lines.append(f"{label:44} {kib / 1024:10.1f} {(kib - prev) / 1024:+7.1f}")
        prev = kib
    present = result["present_after_main"]
    lines.append(f"heavy modules after plait.proxy.main: {', '.join(present) or 'none'}")
    with_mtls = result.get("present_with_mtls", [])
    lines.append(f"heavy modules with mTLS (identities): {', '.join(with_mtls) or 'none'}")
    return "\n".join(lines)


def status_kib(pid: int) -> dict[str, int]:
    """``VmRSS``, ``VmHWM``, ``RssAnon``, ``RssFile`` (``/proc/<pid>/status``) and ``Pss``
    (``/proc/<pid>/smaps_rollup``: shared pages divided among the processes mapping them)
    of ``pid``, in KiB."""
    out = {}
    for path, keys in (
        (f"/proc/{pid}/status", ("VmRSS", "VmHWM", "RssAnon", "RssFile")),
        (f"/proc/{pid}/smaps_rollup", ("Pss",)),
    ):
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in keys:
                    out[key] = int(value.split()[0])
    return out


def worker_pids(pid: int) -> list[int]:
    """``pid`` and its children (the supervisor and workers of ``--workers N``)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        kids = []
    return [pid, *kids]


@contextlib.contextmanager
def _harness(prefix: str) -> Iterator[tuple[Any, Path, int]]:
    """The harness's processes, a work folder and the upstream nginx (CPU 1); every
    process stopped by PID at the end."""
    from peers import PeerSet
    from procs import Procs

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        procs = Procs(work / "logs")
        try:
            yield procs, work, PeerSet(procs, work, proxy_cpu=0, side_cpu=1).start_upstream()
        finally:
            procs.stop_all()


def _started(
    procs: Any, folder: Path, upstream: int, hops: int, mtls: bool, proxy_args: list[str]
) -> tuple[Any, int]:
    """A plait case on CPU 0, ready for load, and the port the load goes to."""
    from plait_case import PlaitCase

    case = PlaitCase(
        procs,
        folder,
        hops=hops,
        upstream_port=upstream,
        proxy_cpu=0,
        side_cpu=1,
        mtls=mtls,
        proxy_args=proxy_args,
    )
    endpoint = case.start()
    time.sleep(1.0)
    return case, endpoint.port


def _wrk(port: int, connections: int, duration: float) -> tuple[dict[str, Any], str]:
    """``wrk -t1`` (on CPU 1) through ``port``: its parsed report and its command line."""
    from load import parse_wrk
    from peers import SERVICE

    argv = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s"]
    argv += ["-H", f"Host: {SERVICE}", f"http://127.0.0.1:{port}/"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    return parse_wrk(r.stdout), " ".join(argv)


def running(duration: float, mtls: bool, workers: int, connections: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with _harness("plait-rss-") as (procs, work, upstream):
        cases = [("plaintext 1 hop", 1, False)]
        if mtls:
            cases.append(("mTLS 2 hops", 2, True))
        for label, hops, with_mtls in cases:
            workers_args = ["--workers", str(workers)] if workers > 1 else []
            folder = work / label.replace(" ", "-")
            case, port = _started(procs, folder, upstream, hops, with_mtls, workers_args)
            idle = {
                (proc.name, pid): status_kib(pid)
                for proc in case.proxies
                for pid in worker_pids(proc.pid)
            }
            wrk, command = _wrk(port, connections, duration)
            for proc in case.proxies:
                for pid in worker_pids(proc.pid):
                    after = status_kib(pid)
                    rows.append(
                        {
                            "case": label,
                            "proxy": proc.name,
                            "pid": pid,
                            "idle_rss_kib": idle[(proc.name, pid)]["VmRSS"],
                            "loaded_rss_kib": after["VmRSS"],
                            "peak_kib": after["VmHWM"],
                            "loaded_anon_kib": after["RssAnon"],
                            "loaded_file_kib": after["RssFile"],
                            "loaded_pss_kib": after["Pss"],
                            "requests": wrk.get("requests"),
                            "wrk": command,
                        }
                    )
            case.stop()
    return rows


def format_running(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'case':16} {'proxy':32} {'idle MiB':>9} {'loaded MiB':>11} {'VmHWM MiB':>10} "
        f"{'anon':>6} {'file':>6} {'Pss':>6}"
    ]
    for r in rows:
        lines.append(
            f"{r['case']:16} {r['proxy'] + ' ' + str(r['pid']):32} "
            f"{r['idle_rss_kib'] / 1024:9.1f} {r['loaded_rss_kib'] / 1024:11.1f} "
            f"{r['peak_kib'] / 1024:10.1f} {r['loaded_anon_kib'] / 1024:6.1f} "
            f"{r['loaded_file_kib'] / 1024:6.1f} {r['loaded_pss_kib'] / 1024:6.1f}"
        )
    lines.append("anon/file: VmRSS split after the load; Pss: shared pages divided by sharers")
    if rows:
        lines.append(f"load: {rows[0]['wrk']} ({rows[0]['requests']} requests per case)")
    return "\n".join(lines)


def churn(rounds: int, gap: float, duration: float, connections: int) -> list[dict[str, Any]]:
    """One row per round and mTLS proxy: its memory after that round's load."""
    rows: list[dict[str, Any]] = []
    with _harness("plait-churn-") as (procs, work, upstream):
        case, port = _started(procs, work / "mtls", upstream, 2, True, [])
        for n in range(rounds):
            if n:
                time.sleep(gap)
            wrk, command = _wrk(port, connections, duration)
            for proc in case.proxies:
                kib = status_kib(proc.pid)
                rows.append(
                    {
                        "round": n + 1,
                        "proxy": proc.name,
                        "peak_kib": kib["VmHWM"],
                        "rss_kib": kib["VmRSS"],
                        "anon_kib": kib["RssAnon"],
                        "file_kib": kib["RssFile"],
                        "requests": wrk.get("requests"),
                        "wrk": command,
                    }
                )
            print(format_churn(rows[-len(case.proxies) :], header=n == 0), flush=True)
        case.stop()
    return rows


def format_churn(rows: list[dict[str, Any]], header: bool = True) -> str:
    head = f"{'round':>5} {'proxy':32} {'VmHWM MiB':>10} {'VmRSS MiB':>10} {'anon':>6} {'file':>6}"
    lines = [head] if header else []
    for r in rows:
        lines.append(
            f"{r['round']:5d} {r['proxy']:32} {r['peak_kib'] / 1024:10.1f} "
            f"{r['rss_kib'] / 1024:10.1f} {r['anon_kib'] / 1024:6.1f} {r['file_kib'] / 1024:6.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "report", nargs="?", choices=["imports", "running", "churn", "all"], default="all"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="wrk seconds (5)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument("--mtls", action="store_true", help="also the 2-hop mTLS case")
    parser.add_argument("--workers", type=int, default=1, help="plait proxy --workers N")
    parser.add_argument("--rounds", type=int, default=5, help="churn: rounds of load (5)")
    parser.add_argument(
        "--gap", type=float, default=62.0, help="churn: seconds between rounds (62)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    out: dict[str, Any] = {}
    if args.report in ("imports", "all"):
        out["imports"] = import_steps()
        if not args.json:
            print(format_steps(out["imports"]), flush=True)
    if args.report in ("running", "all"):
        out["running"] = running(args.duration, args.mtls, args.workers, args.connections)
        if not args.json:
            print(format_running(out["running"]), flush=True)
    if args.report == "churn":
        out["churn"] = churn(args.rounds, args.gap, args.duration, args.connections)
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
