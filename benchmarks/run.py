#!/usr/bin/env python3
"""``make bench``: plait's proxy against a direct connection, HAProxy and nginx, same run.

    .venv/bin/python benchmarks/run.py [--reps 3] [--duration 10] [--quick] [--cases a,b]

Every case is ``load generator -> [proxies] -> upstream nginx (fixed 1 KiB body)``; the
proxies of the case under test run on CPU 0 (``taskset -c 0``), the load generators, the
upstream and the plait control planes on CPU 1. Within each repetition the cases are
taken path by path (direct; one hop; two hops; mTLS). For the cases of one path: each a
warm-up; then the saturation runs with wrk, cut into ``--slice``-second runs alternated
between the cases (A B C A B C …: a slow spell of the machine falls on all of them alike;
the proxies' CPU time is read from /proc before and after each slice); then the latency
runs with h2load at a fixed rate (per request times from ``--log-file``), cut and
alternated the same way (``--latency-slice``); then each case's peak RSS (VmHWM).

Writes ``benchmarks/out/run-<UTC time>.json`` (raw, after every repetition), the
run's configs and logs under ``benchmarks/out/run-<UTC time>/``, and the Markdown
report ``benchmarks/RESULTS.md`` (``--quick``: ``benchmarks/out/RESULTS.quick.md``).
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import signal
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import load  # noqa: E402
import peers  # noqa: E402
import report  # noqa: E402
from peers import SERVICE, Endpoint, PeerSet  # noqa: E402
from plait_case import PlaitCase, plait_available  # noqa: E402
from procs import (  # noqa: E402
    Procs,
    StartError,
    TickSampler,
    cpu_busy_ticks,
    cpu_seconds,
    ctxt_switches,
    peak_rss_kib,
    quiet_windows,
    steal_share,
    ticks_spent,
)

REPO = HERE.parent
PROXY_CPU, SIDE_CPU = 0, 1
# /proc/stat is read every STEAL_SAMPLE_S during h2load; a span in which the hypervisor
# stole no tick (10 ms) from either CPU is steal-free. The steal-free percentiles need at
# least MIN_QUIET_REQUESTS requests (1 s at 1000 req/s: ten beyond p99).
STEAL_SAMPLE_S = 0.1
MIN_QUIET_REQUESTS = 1000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3, help="repetitions (cases alternate)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of the wrk run")
    p.add_argument(
        "--latency-duration",
        type=float,
        default=None,
        help="seconds of the h2load run (default: --duration)",
    )
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk warm-up per case")
    p.add_argument(
        "--slice",
        type=int,
        default=1,
        metavar="SECONDS",
        help="the saturation run is cut into wrk runs of this many seconds, alternated with "
        "the other cases of the same path (A B C A B C …); requests, CPU and wall time are "
        "summed; --duration must be a multiple",
    )
    p.add_argument(
        "--latency-slice",
        type=int,
        default=5,
        metavar="SECONDS",
        help="the same for the h2load run: cut into h2load runs of this many seconds, "
        "alternated between the cases of one path; --latency-duration must be a multiple "
        "(or shorter: one run)",
    )
    p.add_argument("--connections", type=int, default=50, help="wrk connections (1 thread)")
    p.add_argument("--rate", type=float, default=1000.0, help="h2load total req/s")
    p.add_argument("--clients", type=int, default=10, help="h2load connections")
    p.add_argument("--quick", action="store_true", help="smoke run: --reps 1 --duration 3")
    p.add_argument(
        "--cases",
        default="",
        help="comma-separated case names or prefixes "
        "(default: all); 'direct' always runs, added latency needs it",
    )
    p.add_argument(
        "--no-control",
        action="store_true",
        help=f"leave out {report.CONTROL}, the second HAProxy whose ratios to the first "
        "show the noise between two identical proxies",
    )
    p.add_argument("--results", type=Path, default=None, help="Markdown report path")
    p.add_argument("--no-install", action="store_true", help="do not apt-get missing tools")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the harness and all it "
        "starts (e.g. -10 on a machine of your own; it starves other work)",
    )
    p.add_argument(
        "--report-only",
        type=Path,
        default=None,
        metavar="RAW_JSON",
        help="only (re)write the report from a raw run file (benchmarks/out/run-*.json)",
    )
    a = p.parse_args(argv)
    if a.quick:
        a.reps, a.duration = 1, 3.0
        a.warmup = min(a.warmup, 1.0)
    a.latency_duration = a.latency_duration or a.duration
    # wrk and h2load take whole seconds
    a.slice, a.slices = slicing(p, "--duration", a.duration, "--slice", a.slice)
    a.latency_slice, a.latency_slices = slicing(
        p, "--latency-duration", a.latency_duration, "--latency-slice", a.latency_slice
    )
    if a.results is None:
        a.results = HERE / ("out/RESULTS.quick.md" if a.quick else "RESULTS.md")
    return a


def slicing(
    p: argparse.ArgumentParser, dname: str, duration: float, sname: str, step: int
) -> tuple[int, int]:
    """(seconds per run, runs) for a ``duration`` cut into runs of ``step`` seconds: a
    duration shorter than the step is one run; else it must be a whole multiple."""
    if step < 1:
        p.error(f"{sname} must be at least 1 (s), not {step}")
    if duration != int(duration) or duration < 1:
        p.error(f"{dname} must be a whole number of seconds, not {duration:g}")
    if duration <= step:
        return int(duration), 1
    if duration % step:
        p.error(f"{dname} {duration:g} is not a multiple of {sname} {step}")
    return step, int(duration // step)


def machine_info(python: str) -> dict[str, str]:
    def sh(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    v = peers.versions()
    commit = sh("git", "-C", str(REPO), "rev-parse", "--short", "HEAD")
    dirty = sh("git", "-C", str(REPO), "status", "--porcelain", "--", "src")
    py = sh(
        python,
        "-c",
        "import os, sys, ssl; print(sys.version.split()[0], '|', ssl.OPENSSL_VERSION, '|', "
        "os.path.realpath(sys.executable))",
    )
    parts = [x.strip() for x in py.split("|")]
    if len(parts) != 3:
        parts = [py, ssl.OPENSSL_VERSION, "?"]
    # The build matters (PROFILE.md, "Session 4"): on a libpython linked in statically and
    # built with PGO and LTO (Debian's python3.11) the request path takes 5% fewer
    # instructions than on a shared, unoptimized one (a default pyenv build).
    linked = "shared libpython" if "libpython" in sh("ldd", parts[2]) else "static libpython"
    # Compiled (make native) or interpreted, as the proxies started by this run load it.
    request_path = sh(python, "-c", "import plait.proxy.native as n; print(n.STATE)")
    return {
        "CPU": f"{cpu}, {os.cpu_count()} logical CPUs",
        "kernel": f"{platform.system()} {platform.release()}",
        "Python (plait)": f"{parts[0]} ({parts[2]}, {linked})",
        "OpenSSL (Python ssl)": parts[1],
        "OpenSSL (CLI, certs)": v["openssl"],
        "HAProxy": v["haproxy"],
        "nginx": v["nginx"],
        "wrk": v["wrk"],
        "h2load": v["h2load"],
        "plait": f"commit {commit}"
        + (f" + uncommitted changes in src/ (tree sha256 {src_digest()})" if dirty else ""),
        "plait request path": request_path or "?",
    }


def src_digest() -> str:
    """A short hash of src/ as it is now (the tree changes while others work on it)."""
    h = hashlib.sha256()
    for path in sorted((REPO / "src").rglob("*.py")):
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0


def check_alive(ep: Endpoint, when: str) -> None:
    for proc in ep.procs:
        if not proc.alive():
            raise proc.failure(f"{when} (exit code {proc.popen.returncode})")


def wrk_of(ep: Endpoint, a: argparse.Namespace, seconds: float) -> list[str]:
    return load.wrk_argv(
        f"http://127.0.0.1:{ep.port}/",
        host=SERVICE,
        connections=a.connections,
        threads=1,
        duration=seconds,
    )


def warm_up(ep: Endpoint, a: argparse.Namespace) -> None:
    check_alive(ep, "is not running")
    if a.warmup > 0:
        load.run_wrk(wrk_of(ep, a, a.warmup), cpu=SIDE_CPU, timeout=a.warmup + 30)


def saturation_slice(ep: Endpoint, a: argparse.Namespace, upstream_pid: int) -> dict[str, Any]:
    """One wrk run of ``--slice`` seconds, with the CPU time of the
    case's proxies and of the upstream, and the CPUs' ticks, before and after it."""
    seconds = a.slice
    pids = ep.pids
    load_before = os.getloadavg()[0]
    s0 = cpu_busy_ticks()
    c0, u0, t0 = cpu_seconds(pids), cpu_seconds([upstream_pid]), time.monotonic()
    sat, text = load.run_wrk(wrk_of(ep, a, seconds), cpu=SIDE_CPU, timeout=seconds + 30)
    wall = time.monotonic() - t0
    c1, u1 = cpu_seconds(pids), cpu_seconds([upstream_pid])
    s1 = cpu_busy_ticks()
    return {
        "wrk": sat,
        "text": text,
        "cpu": c1 - c0,
        "upstream_cpu": u1 - u0,
        "wall": wall,
        "ticks": (s0, s1),
        "loadavg_before": load_before,
    }


def saturation(slices: list[dict[str, Any]], pids: list[int]) -> dict[str, Any]:
    """A case's saturation slices -> its saturation figures (summed over the slices)."""
    sat = load.merge_wrk([s["wrk"] for s in slices])
    wall = sum(s["wall"] for s in slices)
    cpu = sum(s["cpu"] for s in slices)
    spent = ticks_spent([s["ticks"] for s in slices])
    busy = {c: b / max(1, total) for c, (b, total, _) in spent.items()}
    return {
        "rps": sat["rps"],
        "requests": sat["requests"],
        "errors": sat["errors"],
        "wrk": {k: v for k, v in sat.items() if k != "rps"},
        "slices": len(slices),
        "cpu_s": cpu,
        "cpu_per_10k": cpu / sat["requests"] * 10_000 if pids and sat["requests"] else None,
        "cpu_busy": cpu / wall if pids else None,
        "upstream_cpu_busy": sum(s["upstream_cpu"] for s in slices) / wall,
        # Whole-CPU busy fractions during the wrk runs; on the proxies' CPU, what the
        # case's proxies did not use was other work on the machine (noise).
        "cpu_busy_by_cpu": busy,
        "foreign_on_proxy_cpu": max(0.0, busy.get(PROXY_CPU, 0.0) - (cpu / wall)),
        # Of that, what the hypervisor took (steal), during the wrk and the h2load run.
        "steal_on_proxy_cpu": steal_share(spent, PROXY_CPU),
        "wall_s": wall,
        "loadavg_before": slices[0]["loadavg_before"],
        "raw_wrk": [s["text"] for s in slices],
    }


def latency_slice(ep: Endpoint, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One h2load run of ``--latency-slice`` seconds at ``--rate``, /proc/stat sampled
    meanwhile for its steal-free part."""
    log_file = work / f"h2load-{ep.name}.log"
    h2_argv = load.h2load_argv(
        f"http://127.0.0.1:{ep.port}/",
        host=SERVICE,
        clients=a.clients,
        rate=a.rate,
        duration=a.latency_slice,
        log_file=log_file,
    )
    switched, cpu0 = ctxt_switches(ep.pids), cpu_seconds(ep.pids)
    with TickSampler(STEAL_SAMPLE_S) as ticks:
        lat, text, rows = load.run_h2load(
            h2_argv, log_file, cpu=SIDE_CPU, timeout=a.latency_slice + 30
        )
    vol, invol = ctxt_switches(ep.pids)
    cpu1 = cpu_seconds(ep.pids)
    quiet, ok = load.durations_within(rows, quiet_windows(ticks.samples, (PROXY_CPU, SIDE_CPU)))
    return {
        "h2load": lat,
        "text": text,
        "durations": load.ok_durations(rows)[0],
        "quiet": quiet,
        "ok": ok,
        "ticks": (ticks.samples[0][1], ticks.samples[-1][1]),
        "switches": (vol - switched[0], invol - switched[1]),
        "cpu_s": cpu1 - cpu0,
        "argv": h2_argv,
    }


def latency(slices: list[dict[str, Any]], ep: Endpoint) -> dict[str, Any]:
    """A case's latency slices -> its latency figures (percentiles over all their
    requests), then the peak RSS and the access log check."""
    lat = load.merge_h2load([s["h2load"] for s in slices])
    durations = [d for s in slices for d in s["durations"]]
    quiet = [d for s in slices for d in s["quiet"]]
    latency_ok = sum(s["ok"] for s in slices)
    spent = ticks_spent([s["ticks"] for s in slices])
    pids = ep.pids
    switches = [sum(s["switches"][i] for s in slices) for i in (0, 1)]
    rss = peak_rss_kib(pids)
    check_alive(ep, "exited during the run")
    log_lines = 0
    for path in ep.access_logs:  # proof that the access log was on; then keep the disk free
        log_lines += count_lines(path)
        if path.exists():
            os.truncate(path, 0)  # every writer opened it O_APPEND
    return {
        "latency_s": load.latency_summary(durations) if durations else {},
        "latency_rps": lat["rps"],
        "latency_errors": lat["errors"] + lat["log_non_ok"],
        "h2load": lat,
        "latency_slices": len(slices),
        "latency_steal_on_proxy_cpu": steal_share(spent, PROXY_CPU),
        # Latency of the requests that began and ended in a steal-free span (README.md).
        "latency_quiet_s": (
            load.latency_summary(quiet) if len(quiet) >= MIN_QUIET_REQUESTS else {}
        ),
        "latency_quiet_share": len(quiet) / latency_ok if latency_ok else None,
        # The proxies' CPU time and (voluntary, involuntary) context switches per request
        # at this rate (README.md).
        "latency_cpu_us_per_req": (
            sum(s["cpu_s"] for s in slices) / latency_ok * 1e6 if pids and latency_ok else None
        ),
        "latency_switches_per_req": (
            [n / latency_ok for n in switches] if pids and latency_ok else None
        ),
        "peak_rss_kib": rss if pids else None,
        "access_log_lines": log_lines,
        "h2load_argv": slices[0]["argv"],
        "raw_h2load": [s["text"].splitlines()[-9:] for s in slices],
    }


MEASURE_ERRORS = (StartError, RuntimeError, ValueError, OSError, subprocess.TimeoutExpired)


def round_order(group: list[Endpoint], t: int) -> list[Endpoint]:
    """The order of ``group`` in round ``t``: rows of a Williams design, a Latin square in
    which every case also follows every other case equally often (for an even count of
    cases over ``n`` rounds; for an odd one over ``2n``, every other square reversed). In
    round ``t`` the cases go ``k, k+1, k-1, k+2, k-2, …`` (mod ``n``), ``k = t mod n``:
    A B D C, B C A D, C D B A, D A C B."""
    n = len(group)
    if n < 2:
        return list(group)
    steps = [0]
    lo, hi = 1, n - 1
    while len(steps) < n:
        steps.append(lo)
        lo += 1
        if len(steps) < n:
            steps.append(hi)
            hi -= 1
    k = t % n
    row = [group[(k + j) % n] for j in steps]
    if n % 2 and (t // n) % 2:
        row.reverse()
    return row


def alternate(
    group: list[Endpoint],
    rounds: int,
    step: Callable[[Endpoint], Any],
    errors: dict[str, str],
    start: int = 0,
) -> dict[str, list[Any]]:
    """``step`` for each case of ``group`` in turn, ``rounds`` times; round ``r`` goes in
    the order of ``round_order(group, start + r)``, so that over enough rounds every case
    runs in every place, and right after every other case, equally often. What each step
    returned, per case. A case whose step fails gets its error in ``errors`` and is left
    out from then on (as is one that had failed before)."""
    out: dict[str, list[Any]] = {ep.name: [] for ep in group}
    for r in range(rounds):
        for ep in round_order(group, start + r):
            if ep.name in errors:
                continue
            try:
                out[ep.name].append(step(ep))
            except MEASURE_ERRORS as exc:
                errors[ep.name] = str(exc)
    return out


def measure_group(
    group: list[Endpoint], a: argparse.Namespace, work: Path, upstream_pid: int, rep: int = 0
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The cases of one path, in repetition ``rep``: each warmed up, then their saturation
    runs in ``--slice``-second wrk runs alternated between them (so that each case's share
    of a slow spell of the machine is alike), then their latency runs in
    ``--latency-slice``-second h2load runs, alternated the same way. The rounds' orders
    (:func:`round_order`) are counted over the whole run, so that every case runs in every
    place, and after every other case, about as often (benchmarks/README.md).
    Yields ``(case name, result)`` as each case is done; a case that fails has
    ``{"error": …}`` and is left out of the rest of the group's rounds."""
    errors: dict[str, str] = {}
    alternate(group, 1, lambda ep: warm_up(ep, a), errors)
    slices = alternate(
        group, a.slices, lambda ep: saturation_slice(ep, a, upstream_pid), errors, rep * a.slices
    )
    lat_slices = alternate(
        group,
        a.latency_slices,
        lambda ep: latency_slice(ep, a, work),
        errors,
        rep * a.latency_slices,
    )
    for ep in group:
        if ep.name in errors:
            yield ep.name, {"error": errors[ep.name]}
            continue
        try:
            out = saturation(slices[ep.name], ep.pids)
            lat = latency(lat_slices[ep.name], ep)
        except MEASURE_ERRORS as exc:
            yield ep.name, {"error": str(exc)}
            continue
        h2_argv, h2_raw = lat.pop("h2load_argv"), lat.pop("raw_h2load")
        out.update(lat)
        out["commands"] = {
            "wrk": shlex.join(wrk_of(ep, a, a.slice)),
            "h2load": shlex.join(h2_argv),
        }
        out["raw"] = {"wrk": out.pop("raw_wrk"), "h2load": h2_raw}
        yield ep.name, out


def path_groups(names: list[str], path_of: dict[str, tuple[int, bool]]) -> list[list[str]]:
    """Case names grouped by path (hops, mTLS), groups and names in first-seen order."""
    groups: dict[tuple[int, bool], list[str]] = {}
    for name in names:
        groups.setdefault(path_of[name], []).append(name)
    return list(groups.values())


def summary_line(name: str, r: dict[str, Any]) -> str:
    if r.get("error"):
        return f"{name}: FAILED {r['error'].splitlines()[0]}"
    lat = r["latency_s"]
    s = f"{name}: {r['rps']:,.0f} req/s, p50 {lat['p50'] * 1e3:.2f} ms"
    s += f" p99 {lat['p99'] * 1e3:.2f} ms"
    if r.get("cpu_per_10k") is not None:
        s += f", {r['cpu_per_10k']:.2f} CPU-s/10k ({r['cpu_busy']:.0%} busy)"
    quiet = (r.get("latency_quiet_s") or {}).get("p99")
    if quiet is not None:
        s += f", steal-free p99 {quiet * 1e3:.2f} ms ({r['latency_quiet_share']:.0%})"
    if r.get("latency_steal_on_proxy_cpu"):
        s += f", steal {r['latency_steal_on_proxy_cpu']:.1%} of CPU {PROXY_CPU} during h2load"
    if r["errors"] or r["latency_errors"]:
        s += f", errors {r['errors']}+{r['latency_errors']}"
    return s


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.report_only:
        write_report(a, json.loads(a.report_only.read_text()), a.report_only.resolve())
        return 0
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out_dir = HERE / "out"
    work = out_dir / f"run-{stamp}"
    raw_file = out_dir / f"run-{stamp}.json"
    work.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {SIDE_CPU})  # the harness itself stays off the proxies' CPU
    signal.signal(signal.SIGTERM, _interrupt)
    if a.nice:
        os.setpriority(os.PRIO_PROCESS, 0, a.nice)  # inherited by every process started

    missing = peers.ensure_tools(install=not a.no_install)
    if missing:
        print(
            f"missing tools: {', '.join(missing)} (install: apt-get install haproxy nginx "
            "wrk nghttp2-client)",
            file=sys.stderr,
        )
        return 2
    # plait mTLS exists: every case runs
    cases = report.all_cases(plait_mtls=None, control=not a.no_control)
    wanted = [w for w in a.cases.split(",") if w]
    if wanted:
        cases = [
            c for c in cases if c.name == "direct" or any(c.name.startswith(w) for w in wanted)
        ]
    machine = machine_info(python)
    per_case = a.warmup + a.duration + a.latency_duration + 2
    runnable = [c for c in cases if not c.unavailable]
    print(
        f"plait benchmark: {len(runnable)} cases x {a.reps} reps, about "
        f"{per_case * len(runnable) * a.reps / 60:.1f} min of load; work dir {work}",
        flush=True,
    )

    procs = Procs(work / "logs")
    plait_cases: list[PlaitCase] = []
    endpoints: dict[str, Endpoint] = {}
    setup_errors: dict[str, str] = {}
    checks: dict[str, dict[str, Any]] = {}  # pre-load checks (plait mTLS: who the peer was)
    reps: list[dict[str, Any]] = []
    shown = os.path.relpath(python, REPO) if python.startswith(f"{REPO}/") else python
    args = argv if argv is not None else sys.argv[1:]
    commands = [f"cd {REPO} && {shlex.join([shown, 'benchmarks/run.py', *args])}"]
    raw: dict[str, Any] = {}
    try:
        side = PeerSet(procs, work, PROXY_CPU, SIDE_CPU)
        side.start_upstream()
        upstream = procs.started[-1]
        endpoints["direct"] = Endpoint("direct", side.upstream_port, [])
        why_no_plait = plait_available(python)
        for case in runnable:
            if case.kind in ("direct",):
                continue
            try:
                if case.kind == "plait":
                    if why_no_plait:
                        raise StartError(f"plait does not start: {why_no_plait}")
                    pc = PlaitCase(
                        procs,
                        work / case.name,
                        hops=case.hops,
                        upstream_port=side.upstream_port,
                        proxy_cpu=PROXY_CPU,
                        side_cpu=SIDE_CPU,
                        python=python,
                        mtls=case.mtls,
                    )
                    plait_cases.append(pc)
                    endpoints[case.name] = pc.start()
                    if pc.check:
                        checks[case.name] = pc.check
                        print(
                            f"{case.name}: mTLS check: {pc.check['curl']} -> "
                            f"{pc.check['status']}, inbound peer {pc.check['inbound_peer']}",
                            flush=True,
                        )
                else:
                    endpoints[case.name] = side.chain(
                        case.kind, case.hops, case.mtls, name=case.name
                    )
                print(f"started {case.name} on port {endpoints[case.name].port}", flush=True)
            except (StartError, OSError, subprocess.CalledProcessError) as exc:
                setup_errors[case.name] = str(exc)
                print(f"cannot start {case.name}: {exc}", file=sys.stderr, flush=True)
        commands.append(f"# upstream (CPU {SIDE_CPU}): {shlex.join(upstream.argv)}")
        for name, ep in endpoints.items():
            for proc in ep.procs:
                commands.append(f"# {name}: {shlex.join(proc.argv)}")
        for name, chk in checks.items():
            commands.append(
                f"# {name} (check before load): {chk['curl']}  # -> {chk['status']}, "
                f"bench-in access log peer={chk['inbound_peer']}"
            )

        t_start = time.monotonic()
        raw = {
            "started": started.isoformat(),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
            "machine": machine,
            "cases": [vars(c) for c in cases],
            "setup_errors": setup_errors,
            "checks": checks,
            "reps": reps,
        }
        path_of = {c.name: (c.hops, c.mtls) for c in runnable}
        for rep in range(a.reps):
            results: dict[str, Any] = {}
            reps.append(results)
            for names in path_groups([c.name for c in runnable], path_of):
                for name in names:
                    if name in setup_errors:
                        results[name] = {"error": setup_errors[name]}
                group = [endpoints[n] for n in names if n not in setup_errors]
                for name, result in measure_group(group, a, work, upstream.pid, rep):
                    results[name] = result
                    el = time.monotonic() - t_start
                    print(
                        f"[rep {rep + 1}/{a.reps} {el:5.0f}s] {summary_line(name, result)}",
                        flush=True,
                    )
            raw_file.write_text(json.dumps(raw, indent=1))
        for name in endpoints:
            res = next((r[name] for r in reps if "commands" in r.get(name, {})), None)
            if res:
                commands.append(
                    f"# {name} (wrk, CPU {SIDE_CPU}): taskset -c {SIDE_CPU} "
                    f"{res['commands']['wrk']}"
                )
                commands.append(
                    f"# {name} (h2load, CPU {SIDE_CPU}): taskset -c {SIDE_CPU} "
                    f"{res['commands']['h2load']}"
                )
    except KeyboardInterrupt:
        print("interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        for pc in plait_cases:
            pc._stop.set()
        procs.stop_all()
        if raw:
            raw["finished"] = dt.datetime.now(dt.UTC).isoformat()
            raw["commands"] = commands
            raw_file.write_text(json.dumps(raw, indent=1))

    if raw:
        write_report(a, raw, raw_file)
    return 0


def write_report(a: argparse.Namespace, raw: dict[str, Any], raw_file: Path) -> None:
    """Render ``raw`` (a run's JSON) into this report's section of ``a.results``."""
    cases = [report.Case(**c) for c in raw["cases"]]
    reps = raw["reps"]
    st = raw["settings"]
    rows = report.summarize(cases, reps)
    notes = build_notes(st.get("nice", 0), reps, raw.get("setup_errors", {}), cases)
    keys = ("reps", "duration", "latency_duration", "connections", "rate", "clients")
    started = dt.datetime.fromisoformat(raw["started"])
    text = report.render(
        rows,
        machine=raw["machine"],
        settings={k: st[k] for k in (*keys, "slice", "latency_slice") if k in st},
        commands=raw.get("commands", []),
        date=started.strftime("%Y-%m-%d %H:%M UTC"),
        raw_file=os.path.relpath(raw_file, a.results.parent),
        notes=notes,
    )
    a.results.parent.mkdir(parents=True, exist_ok=True)
    report.write_section(a.results, text)
    print(f"\nwrote {a.results} (section {report.SECTION!r}) from {raw_file}\n")
    print(report.throughput_table(rows) + "\n\n" + report.latency_table(rows))


def build_notes(
    nice: int,
    reps: list[dict[str, Any]],
    setup: dict[str, str],
    cases: list[report.Case] | None = None,
) -> list[str]:
    loads = [r["loadavg_before"] for rep in reps for r in rep.values() if "loadavg_before" in r]
    notes = [
        f"CPU layout: the proxies of the case under test on CPU {PROXY_CPU} (`taskset -c "
        f"{PROXY_CPU}`); wrk, h2load, the upstream nginx and the plait control planes on CPU "
        f"{SIDE_CPU}. All cases' proxies stay up for the whole run (idle when not under test).",
        "`proxy CPU busy` = the case's proxy CPU time during the wrk run / its wall time (100% "
        "= one core). Below ~95% the proxy did not have its core to itself (other processes on "
        "CPU 0, see below) or CPU 1 (wrk + upstream) was the limit; either way that row's "
        "throughput understates the proxy's capacity. CPU per request does not depend on "
        "the share of the core a proxy got: on a shared machine it is the most robust "
        "comparison.",
        "Latency is measured by h2load at a fixed rate with one request in flight per "
        "connection; a stalled response delays the next request of that connection "
        "(coordinated omission), so tails are a lower bound.",
        "Production defaults on every proxy: Host routing (`bench`, else 404), request id, "
        "one access log line per request to a file; plait also its metrics and health "
        "checks. nginx peak RSS is the sum of master and worker.",
    ]
    plait_mtls = next((c for c in cases or [] if c.kind == "plait" and c.mtls), None)
    if plait_mtls is not None and plait_mtls.unavailable:  # a run from before plait had mTLS
        notes.append(
            f"plait mTLS between proxies did not exist yet: `{plait_mtls.name}` is "
            f"'{plait_mtls.unavailable}'."
        )
    elif plait_mtls is not None:
        notes.append(
            "mTLS cases: TLS 1.3 with ECDSA P-256 certificates between the two proxies. "
            "HAProxy and nginx use certificates made with openssl; plait's come from its "
            "control plane's CA (join tokens made with `POST /v1/tokens`, keys made by the "
            "proxies), with Service `bench` at `mtls: strict`; its outbound proxy fronts a "
            "dummy local service `loadgen` (never called) for its identity, and the load "
            "enters through `outbound|loadgen`. Before the load, one request's line in the "
            "inbound proxy's access log must have `peer` = loadgen's SPIFFE id."
        )
    control = next((c for c in cases or [] if c.control), None)
    if control is not None:
        notes.append(
            f"`{control.name}` is a second HAProxy, started with the same config as "
            f"`{control.baseline}` and measured as a case of its own in the same "
            "rounds. Its × HAProxy figures "
            "are what this machine's noise gives two identical proxies: read the other "
            "ratios against them (`--no-control` leaves it out)."
        )
    if nice:
        notes.append(f"Run with `--nice {nice}` (every benchmark process).")
    if loads:
        notes.append(
            f"1-minute load average before each saturation run: {min(loads):.2f}–"
            f"{max(loads):.2f} (2 CPUs; other work on the machine adds noise, hence medians)."
        )
    foreign = [
        r["foreign_on_proxy_cpu"]
        for rep in reps
        for r in rep.values()
        if r.get("foreign_on_proxy_cpu") is not None and r.get("cpu_busy") is not None
    ]
    if foreign:
        notes.append(
            f"Other processes' share of CPU {PROXY_CPU} during the saturation runs (CPU {PROXY_CPU}"
            f" busy time minus the case's proxies): median {statistics.median(foreign):.0%}, "
            f"max {max(foreign):.0%}. Per-run values are in the raw JSON "
            "(`foreign_on_proxy_cpu`)."
        )
    steal = [
        r["latency_steal_on_proxy_cpu"]
        for rep in reps
        for r in rep.values()
        if r.get("latency_steal_on_proxy_cpu") is not None
    ]
    if steal:
        notes.append(
            f"`CPU {PROXY_CPU} steal` = the share of CPU {PROXY_CPU}'s time during the h2load "
            "run that the hypervisor gave to another machine (`steal` in `/proc/stat`): median "
            f"{statistics.median(steal):.1%}, max {max(steal):.1%} over all runs. While it "
            "steals, every request waits, whichever proxy serves it: a rep's tails move with "
            "it more than with the proxy (the raw JSON also has `steal_on_proxy_cpu` of the "
            "wrk runs). The `steal-free` columns count only the requests that began and ended "
            f"while /proc/stat, read every {STEAL_SAMPLE_S:g} s, showed no steal on CPU "
            f"{PROXY_CPU} or CPU {SIDE_CPU} (benchmarks/README.md)."
        )
    switches = switches_note(reps, cases or [])
    if switches:
        notes.append(switches)
    for name, why in setup.items():
        notes.append(f"`{name}` could not start: {why.splitlines()[0][:300]}")
    return notes


def switches_note(reps: list[dict[str, Any]], cases: list[report.Case]) -> str | None:
    """The note on the proxies' CPU time and context switches per request during the
    h2load runs."""
    parts = []
    for case in cases:
        per_rep = [
            (r["latency_cpu_us_per_req"], *r["latency_switches_per_req"])
            for rep in reps
            if (r := rep.get(case.name))
            and r.get("latency_switches_per_req")
            and r.get("latency_cpu_us_per_req") is not None
        ]
        if per_rep:
            cpu, vol, invol = (statistics.median(x[i] for x in per_rep) for i in range(3))
            parts.append(f"`{case.name}` {cpu:.0f} µs, {vol:.2f} / {invol:.3f}")
    if not parts:
        return None
    return (
        "At 1000 req/s (the h2load runs), per request: the CPU time of the case's proxy "
        "processes, and their context switches voluntary / involuntary (voluntary: a "
        "process slept, waiting for I/O; involuntary: the scheduler took the CPU from it "
        "while it could still run; `/proc/<pid>/task/*/status`), median over reps: "
        f"{'; '.join(parts)}."
    )


if __name__ == "__main__":
    sys.exit(main())
