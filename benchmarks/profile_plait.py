#!/usr/bin/env python3
"""Profile a plait proxy under wrk load with py-spy (sampling; the proxy runs unmodified).

    .venv/bin/pip install py-spy      # once
    .venv/bin/python benchmarks/profile_plait.py [--hops 1|2] [--node out|in] [--duration 15]

Same layout as ``run.py``: the upstream nginx and wrk on CPU 1, the plait proxies on CPU 0.
Two passes of ``--duration`` seconds each under saturation load (wrk -t1 -c50):

1. ``py-spy record --format raw`` -> ``out/profile-<case>-<node>.txt`` (collapsed stacks),
   summarized into ``out/profile-<case>-<node>.md``: the functions with the most samples
   on-CPU themselves (self) and under them (inclusive), and the time per source file;
2. ``py-spy record`` flame graph -> ``out/profile-<case>-<node>.svg``.

``--native`` adds C frames (uvloop, httptools, the kernel boundary) to the first pass.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import load  # noqa: E402
import peers  # noqa: E402
from peers import SERVICE, PeerSet  # noqa: E402
from plait_case import PlaitCase  # noqa: E402
from procs import Procs, cpu_seconds  # noqa: E402

PROXY_CPU, SIDE_CPU = 0, 1
FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


# -- pure: collapsed stacks -> tables ----------------------------------------------------------


def parse_collapsed(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """py-spy raw format (``frame;frame;… count``, root first) -> [(frames, samples)]."""
    out = []
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        out.append((stack.split(";"), int(count)))
    return out


def frame_key(frame: str, strip_prefixes: tuple[str, ...] = ()) -> str:
    """``handle (plait/proxy/http1.py:123)`` -> ``handle (plait/proxy/http1.py)``."""
    m = FRAME_RE.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for prefix in strip_prefixes:
        if path.startswith(prefix):
            path = path[len(prefix) :]
    return f"{m.group('func')} ({path})"


def frame_file(frame: str) -> str:
    m = FRAME_RE.match(frame)
    return m.group("file") if m else frame


def tally(
    stacks: list[tuple[list[str], int]], strip: tuple[str, ...] = ()
) -> tuple[Counter[str], Counter[str], Counter[str], int]:
    """(self samples per function, inclusive samples per function, self per file, total)."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    files: Counter[str] = Counter()
    total = 0
    for frames, n in stacks:
        total += n
        if not frames:
            continue
        leaf = frames[-1]
        self_c[frame_key(leaf, strip)] += n
        path = frame_file(leaf)
        for prefix in strip:
            path = path.removeprefix(prefix)
        files[path] += n
        for key in {frame_key(f, strip) for f in frames}:
            incl[key] += n
    return self_c, incl, files, total


def self_by_line(stacks: list[tuple[list[str], int]], strip: tuple[str, ...] = ()) -> Counter[str]:
    """Self samples per leaf frame, line number kept (``f (plait/x.py:12)``)."""
    out: Counter[str] = Counter()
    for frames, n in stacks:
        if frames:
            leaf = frames[-1]
            for prefix in strip:
                leaf = leaf.replace(f"({prefix}", "(")
            out[leaf] += n
    return out


def path_prefixes(stacks: list[tuple[list[str], int]]) -> tuple[str, ...]:
    """Prefixes to cut from file names: every ``…/site-packages/`` seen, and the repo's src/."""
    seen = set()
    for frames, _ in stacks:
        for f in frames:
            m = re.match(r".*?/site-packages/", frame_file(f))
            if m:
                seen.add(m.group(0))
    return (*sorted(seen, key=len, reverse=True), str(HERE.parent / "src") + "/")


def table(title: str, counts: Counter[str], total: int, n: int = 25) -> str:
    lines = [
        f"### {title}",
        "",
        "| % of samples | samples | function (file) |",
        "| ---: | ---: | --- |",
    ]
    for key, c in counts.most_common(n):
        lines.append(f"| {100 * c / total:.1f}% | {c} | `{key}` |")
    return "\n".join(lines) + "\n"


# -- running -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="benchmarks/profile_plait.py", description=__doc__.splitlines()[0]
    )
    p.add_argument("--hops", type=int, choices=(1, 2), default=1)
    p.add_argument("--node", choices=("out", "in"), default="out", help="which proxy (2 hops)")
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--native", action="store_true", help="include C frames (pass 1)")
    a = p.parse_args(argv)

    pyspy = shutil.which(
        "py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    )
    if not pyspy:
        print("py-spy is missing: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    if peers.ensure_tools():
        print("missing nginx/wrk", file=sys.stderr)
        return 2
    out = HERE / "out"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    work = out / f"profile-{stamp}"
    base = out / f"profile-plait-{a.hops}hop-{a.node if a.hops == 2 else 'out'}"
    procs = Procs(work / "logs")

    os.sched_setaffinity(0, {SIDE_CPU})
    try:
        side = PeerSet(procs, work, PROXY_CPU, SIDE_CPU)
        side.start_upstream()
        case = PlaitCase(
            procs,
            work / "plait",
            hops=a.hops,
            upstream_port=side.upstream_port,
            proxy_cpu=PROXY_CPU,
            side_cpu=SIDE_CPU,
        )
        ep = case.start()
        target = next(
            pr for pr in ep.procs if pr.name.endswith(f"bench-{a.node if a.hops == 2 else 'out'}")
        )
        url = f"http://127.0.0.1:{ep.port}/"

        def wrk(seconds: float) -> list[str]:
            return load.wrk_argv(
                url, host=SERVICE, connections=a.connections, threads=1, duration=seconds
            )

        load.run_wrk(wrk(2), cpu=SIDE_CPU, timeout=60)
        passes = [
            # --native cannot sample without pausing the process (no --nonblocking).
            (
                base.with_suffix(".txt"),
                ["--format", "raw", "--native"]
                if a.native
                else ["--format", "raw", "--nonblocking"],
            ),
            (base.with_suffix(".svg"), ["--format", "flamegraph", "--nonblocking"]),
        ]
        results = []
        for path, extra in passes:
            path.unlink(missing_ok=True)
            argv = [pyspy, "record", "--pid", str(target.pid), "--rate", str(a.rate)]
            argv += ["--duration", f"{a.duration:g}", "-o", str(path), *extra]
            spy = subprocess.Popen(
                ["taskset", "-c", str(SIDE_CPU), *argv],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(0.5)
            c0 = cpu_seconds(ep.pids)
            res, _ = load.run_wrk(wrk(a.duration), cpu=SIDE_CPU, timeout=a.duration + 60)
            c1 = cpu_seconds(ep.pids)
            _, err = spy.communicate(timeout=a.duration + 60)
            if spy.returncode != 0 or not path.exists():
                print(f"py-spy failed: {err.decode(errors='replace')}", file=sys.stderr)
                return 1
            results.append((path, res, c1 - c0))
            print(
                f"{path.name}: {res['rps']:,.0f} req/s under py-spy, proxy CPU "
                f"{(c1 - c0) / res['requests'] * 10000:.2f} s/10k req",
                flush=True,
            )
        case.stop()
    finally:
        procs.stop_all()
        for path in (work / "plait").glob("access-*.log"):
            path.unlink()  # a line per request: hundreds of MB, of no use here

    raw_path, res, cpu = results[0]
    stacks = parse_collapsed(raw_path.read_text().splitlines())
    strip = path_prefixes(stacks)
    self_c, incl, files, total = tally(stacks, strip)
    lines = self_by_line(stacks, strip)
    mode = "native frames, pausing the process" if a.native else "non-blocking"
    md = [
        f"# py-spy profile: plait {a.hops} hop(s), proxy `bench-{a.node}`",
        "",
        f"{a.duration:g} s of `wrk -t1 -c{a.connections}`, {res['rps']:,.0f} req/s under "
        f"py-spy ({a.rate} samples/s, {mode}), proxy CPU {cpu / res['requests'] * 1e4:.2f} "
        f"s/10k req. {total} samples. Flame graph: `{base.with_suffix('.svg').name}`.",
        "",
        table("Self (on-CPU in the function itself)", self_c, total),
        table("Inclusive (the function or anything it calls)", incl, total, 40),
        table("Self, by file", files, total, 20),
        table("Self, by source line", lines, total, 30),
    ]
    base.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
