#!/usr/bin/env python3
"""HAProxy vs the lean Python relay vs plait on one hop: CPU per request, user and system.

    .venv/bin/python benchmarks/lean_compare.py [--rounds 3] [--duration 4]

Same layout as ``run.py``'s 1-hop cases: the upstream nginx (1 KiB body) and wrk
(``-t1 -c50``) on CPU 1, each proxy on CPU 0. ``benchmarks/lean_relay.py`` is the floor
for a Python relay (parse both heads, route on Host, request id, Via, one log line; see
its docstring); the gap between it and plait is what plait's request path costs beyond
that basic work. Cases alternate within each round (1 s of warm-up each); per run it
prints requests/s and the proxy's user and system CPU µs per request (``/proc``), then a
table of medians with each figure's ratio to HAProxy in the same round.

    .venv/bin/python benchmarks/lean_compare.py --rate 1000 [--rounds 8] [--duration 5]
        [--tree DIR ...]

``--rate R`` measures latency instead, as ``run.py``'s h2load runs do: h2load at R req/s
over 10 connections (``--h1 --rps``) for ``--duration`` seconds per case and round, a
``direct`` case (no proxy) included, cases alternated within each round. Per run: p50
and p99, and the proxy's CPU per request; then a table of medians, and per proxy its
added p99 (its p99 minus direct's in the same round) pooled over the rounds as a ratio
to HAProxy's (sum over sum, as ``pool.py``). It is how close a Python relay that does
the least can come to HAProxy's tail at that rate on the machine it runs on.

``--tree DIR`` adds plait from another checkout (``PYTHONPATH=DIR/src``), e.g. a ``git
worktree`` of the commit before a change (built with ``scripts/build_native.py`` there
for its compiled modules): a case ``plait@DIR`` alternated with the others, the A/B of
a change at a fixed rate. ``--python PY`` does the same for another interpreter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import load  # noqa: E402
import plait_case  # noqa: E402
from peers import SERVICE, PeerSet  # noqa: E402
from procs import Procs, cpu_times, free_port, wait_http_ok  # noqa: E402
from report import ratio  # noqa: E402

PROXY_CPU, SIDE_CPU = 0, 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="benchmarks/lean_compare.py", description=__doc__.splitlines()[0]
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="latency at this many req/s (h2load, 10 connections) instead of saturation",
    )
    p.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="PY",
        help="also run plait under this interpreter (a case plait@PY; repeatable), e.g. to "
        "compare Python builds: PY needs plait and its dependencies installed",
    )
    p.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="DIR",
        help="also run plait from this checkout (a case plait@DIR; repeatable; PYTHONPATH="
        "DIR/src, its compiled modules when current there): the A/B for a change",
    )
    a = p.parse_args(argv)
    try:
        tree_envs = [(tree, plait_case.tree_env(tree)) for tree in a.tree]
    except ValueError as exc:
        p.error(str(exc))
    os.sched_setaffinity(0, {SIDE_CPU})
    work = HERE / "out" / "lean"
    work.mkdir(parents=True, exist_ok=True)
    procs = Procs(work / "logs")
    pc = None
    extra: list[plait_case.PlaitCase] = []
    try:
        side = PeerSet(procs, work, PROXY_CPU, SIDE_CPU)
        upstream = side.start_upstream()
        haproxy = side.chain("haproxy", 1, False)
        port = free_port()
        relay = procs.start(
            "lean",
            [
                sys.executable,
                str(HERE / "lean_relay.py"),
                str(port),
                str(upstream),
                str(work / "lean.log"),
            ],
            cpu=PROXY_CPU,
        )
        wait_http_ok("127.0.0.1", port, headers={"Host": SERVICE}, procs=[relay], what="lean relay")
        pc = plait_case.PlaitCase(
            procs,
            work / "plait",
            hops=1,
            upstream_port=upstream,
            proxy_cpu=PROXY_CPU,
            side_cpu=SIDE_CPU,
        )
        plait = pc.start()
        cases = {
            "haproxy": (haproxy.port, [x.pid for x in haproxy.procs]),
            "lean": (port, [relay.pid]),
            "plait": (plait.port, [x.pid for x in plait.procs]),
        }
        others = [(python, python, {}) for python in a.python]
        others += [(tree, sys.executable, env) for tree, env in tree_envs]
        for i, (name, python, env) in enumerate(others):
            other = plait_case.PlaitCase(
                procs,
                work / f"plait-{i}",
                hops=1,
                upstream_port=upstream,
                proxy_cpu=PROXY_CPU,
                side_cpu=SIDE_CPU,
                python=python,
                env=env,
            )
            extra.append(other)
            started = other.start()
            cases[f"plait@{name}"] = (started.port, [x.pid for x in started.procs])
        if a.rate:
            cases = {"direct": (upstream, []), **cases}
            rated(cases, a, work)
            return 0
        runs: dict[str, list[tuple[float, float, float]]] = {c: [] for c in cases}
        for r in range(a.rounds):
            for name, (cport, pids) in cases.items():
                url = f"http://127.0.0.1:{cport}/"

                def wrk(s: float, url: str = url) -> list[str]:
                    return load.wrk_argv(url, host=SERVICE, connections=50, threads=1, duration=s)

                load.run_wrk(wrk(1), cpu=SIDE_CPU, timeout=30)
                u0, s0 = cpu_times(pids)
                res, _ = load.run_wrk(wrk(a.duration), cpu=SIDE_CPU, timeout=a.duration + 30)
                u1, s1 = cpu_times(pids)
                n = res["requests"]
                if not n:
                    print(f"round {r + 1} {name}: no request completed; stopping", flush=True)
                    return 1
                run = (res["rps"], (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6)
                runs[name].append(run)
                print(
                    f"round {r + 1} {name}: {run[0]:,.0f} req/s, "
                    f"user {run[1]:.1f} µs + system {run[2]:.1f} µs per request",
                    flush=True,
                )
        print()
        print("| proxy | req/s | × HAProxy | user µs/req | system µs/req | CPU × HAProxy |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, rs in runs.items():
            base = runs["haproxy"]
            rps_x = statistics.median(r[0] / b[0] for r, b in zip(rs, base, strict=True))
            cpu_x = statistics.median(
                (r[1] + r[2]) / (b[1] + b[2]) for r, b in zip(rs, base, strict=True)
            )
            print(
                f"| {name} | {statistics.median(r[0] for r in rs):,.0f} | {rps_x:.2f}× | "
                f"{statistics.median(r[1] for r in rs):.1f} | "
                f"{statistics.median(r[2] for r in rs):.1f} | {cpu_x:.2f}× |"
            )
    finally:
        for case in [pc, *extra]:
            if case is not None:
                case.stop()
        procs.stop_all()
        for path in [*work.glob("*.log"), *work.glob("plait*/access-*.log")]:
            path.unlink()
    return 0


CLIENTS = 10  # h2load connections in --rate mode, as run.py's latency runs


def rated(cases: dict[str, tuple[int, list[int]]], a: argparse.Namespace, work: Path) -> None:
    """``--rate``: every case at ``a.rate`` req/s per round; prints runs and the table."""
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in cases}
    log_file = work / "h2load.log"
    for r in range(a.rounds):
        names = list(cases) if r % 2 == 0 else list(reversed(cases))  # A B C, C B A, ...
        for name in names:
            cport, pids = cases[name]
            url = f"http://127.0.0.1:{cport}/"

            def h2(s: float, url: str = url) -> list[str]:
                return load.h2load_argv(
                    url, host=SERVICE, clients=CLIENTS, rate=a.rate, duration=s, log_file=log_file
                )

            load.run_h2load(h2(1), log_file, cpu=SIDE_CPU, timeout=30)
            u0, s0 = cpu_times(pids)
            _, _, rows = load.run_h2load(
                h2(a.duration), log_file, cpu=SIDE_CPU, timeout=a.duration + 30
            )
            u1, s1 = cpu_times(pids)
            ok, failed = load.ok_durations(rows)
            if not ok:
                raise RuntimeError(f"round {r + 1} {name}: no request completed")
            lat = load.latency_summary(ok)
            run = {
                "p50": lat["p50"],
                "p99": lat["p99"],
                "user": (u1 - u0) / len(ok) * 1e6,
                "system": (s1 - s0) / len(ok) * 1e6,
                "failed": failed,
            }
            runs[name].append(run)
            print(
                f"round {r + 1} {name}: p50 {run['p50'] * 1e3:.3f} ms, p99 {run['p99'] * 1e3:.3f} "
                f"ms, user {run['user']:.1f} µs + system {run['system']:.1f} µs per request"
                + (f", {failed} failed" if failed else ""),
                flush=True,
            )
    print()
    print(rate_table(runs))


def rate_table(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Medians per case; added p99 = p99 minus direct's in the same round, pooled over the
    rounds as a ratio to HAProxy's (sum over sum); CPU per request as a same-round ratio."""
    direct = runs["direct"]
    base = runs["haproxy"]

    def added(rs: list[dict[str, Any]]) -> list[float]:
        return [x["p99"] - d["p99"] for x, d in zip(rs, direct, strict=True)]

    def cpu(x: dict[str, Any]) -> float:
        return float(x["user"] + x["system"])

    lines = [
        "| case | p50 ms | p99 ms | added p99 ms | added p99 × HAProxy, pooled "
        "| user µs/req | system µs/req | CPU × HAProxy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base_sum = sum(added(base))
    for name, rs in runs.items():
        med = {k: statistics.median(x[k] for x in rs) for k in ("p50", "p99", "user", "system")}
        if name == "direct":
            extra = ["—", "—"]
            cpu_x = "—"
        else:
            mine = added(rs)
            x = ratio(sum(mine), base_sum)
            pooled = "—" if x is None else f"{x:.2f}×"
            extra = [f"{statistics.median(mine) * 1e3:.3f}", pooled]
            cpu_x = (
                f"{statistics.median(cpu(x) / cpu(b) for x, b in zip(rs, base, strict=True)):.2f}×"
            )
        lines.append(
            f"| {name} | {med['p50'] * 1e3:.3f} | {med['p99'] * 1e3:.3f} | {' | '.join(extra)} | "
            f"{med['user']:.1f} | {med['system']:.1f} | {cpu_x} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
