"""Several runs of run.py pooled: the targets' ratios over all their repetitions.

One run gives each ratio to HAProxy as the median of a few same-repetition ratios, and on
this noisy 2-core virtual machine that scatters: a second, identical HAProxy (the
``haproxy-1hop-control`` case) came out at 0.77×–1.31× the first over four runs
(RESULTS.md, Eleventh round). Pooling the repetitions of several runs is how the tails are
compared here. Per case with a HAProxy baseline, over every repetition of every run given
in which both have a figure:

* throughput: the median same-repetition ratio, its min–max, and how many repetitions
  were at or above 1.0× (the target);
* added p99 at the fixed rate, raw and steal-free: the *pooled ratio*, the sum of the
  case's added p99 over those repetitions divided by the sum of HAProxy's (what the mean
  request tail costs, not swayed by a repetition where HAProxy's added p99 was tiny),
  the median same-repetition ratio, each run's own median, as its table showed it, and
  each run's own pooled ratio (steal-free), with how many runs met the target alone;
* CPU per request at the fixed rate (``latency_cpu_us_per_req``, runs from the Eleventh
  round on): the median same-repetition ratio;
* peak RSS: the highest of any repetition.

Usage::

    .venv/bin/python benchmarks/pool.py benchmarks/out/run-A.json benchmarks/out/run-B.json
    .venv/bin/python benchmarks/pool.py --write benchmarks/out/run-*.json   # into RESULTS.md

``--write`` replaces the section "Data plane, pooled over runs" of RESULTS.md (and only
it). Pure functions but :func:`main`; tests: ``benchmarks/tests/test_bench_pool.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import report
from report import Case, Stat, per_rep_metrics, ratio

HERE = Path(__file__).resolve().parent
SECTION = "## Data plane, pooled over runs"
TARGET_RPS = 1.0  # throughput >= 1.0x HAProxy
TARGET_P99 = 1.2  # added p99 <= 1.2x HAProxy's


@dataclass
class Pooled:
    """One case's figures over every repetition of the runs pooled."""

    case: Case
    reps: int = 0  # repetitions with a figure for the case and for its HAProxy baseline
    x_rps: Stat | None = None
    rps_at_target: int = 0  # repetitions with x_rps >= TARGET_RPS (of x_rps.n)
    added: float | None = None  # pooled ratio of the added p99s (sums), raw
    added_quiet: float | None = None  # the same, steal-free
    x_added: Stat | None = None  # same-repetition ratios, raw
    x_added_quiet: Stat | None = None
    run_medians: list[float | None] = field(default_factory=list)  # per run, steal-free
    run_pooled: list[float | None] = field(default_factory=list)  # per run, steal-free
    x_cpu_at_rate: Stat | None = None
    rss_mib: float | None = None


def cases_of(runs: Sequence[Mapping[str, Any]]) -> list[Case]:
    """The cases of the runs, in the first run's order, each once."""
    seen: dict[str, Case] = {}
    for run in runs:
        for c in run["cases"]:
            case = Case(**c)
            seen.setdefault(case.name, case)
    return list(seen.values())


def _pooled_ratio(pairs: Sequence[tuple[float, float]]) -> float | None:
    """sum(case) / sum(baseline) over the pairs; None without pairs or a positive sum."""
    if not pairs:
        return None
    return ratio(sum(a for a, _ in pairs), sum(b for _, b in pairs))


def _ratios(pairs: Sequence[tuple[float, float]]) -> list[float]:
    """The same-repetition ratios of the pairs that have one."""
    return [x for a, b in pairs if (x := ratio(a, b)) is not None]


def pool_case(case: Case, runs: Sequence[Mapping[str, Any]]) -> Pooled:
    """``case`` against its HAProxy baseline over every repetition of ``runs``."""
    out = Pooled(case)
    base_case = Case(str(case.baseline), "haproxy", case.hops, case.mtls)
    x_rps: list[float] = []
    x_cpu: list[float] = []
    added: list[tuple[float, float]] = []  # (case's added p99, HAProxy's), raw
    quiet: list[tuple[float, float]] = []  # the same, steal-free
    rss: list[float] = []
    for run in runs:
        run_quiet: list[tuple[float, float]] = []
        for rep in run["reps"]:
            mine = per_rep_metrics(rep, case)
            base = per_rep_metrics(rep, base_case)
            if mine is None:
                continue
            if mine["rss_mib"] is not None:
                rss.append(mine["rss_mib"])
            if base is None:
                continue
            out.reps += 1
            for x, xs in ((mine["x_rps"], x_rps), (mine["x_cpu_at_rate"], x_cpu)):
                if x is not None:
                    xs.append(x)
            for key, pairs in (("added_p99", added), ("added_quiet_p99", run_quiet)):
                a, b = mine[key], base[key]
                if a is not None and b is not None:
                    pairs.append((a, b))
        quiet += run_quiet
        run_x = _ratios(run_quiet)
        out.run_medians.append(statistics.median(run_x) if run_x else None)
        out.run_pooled.append(_pooled_ratio(run_quiet))
    out.x_rps = Stat.of(x_rps)
    out.rps_at_target = sum(1 for x in x_rps if x >= TARGET_RPS)
    out.added = _pooled_ratio(added)
    out.added_quiet = _pooled_ratio(quiet)
    out.x_added = Stat.of(_ratios(added))
    out.x_added_quiet = Stat.of(_ratios(quiet))
    out.x_cpu_at_rate = Stat.of(x_cpu)
    out.rss_mib = max(rss) if rss else None
    return out


def pool(runs: Sequence[Mapping[str, Any]]) -> list[Pooled]:
    """Every case with a HAProxy baseline (HAProxy itself left out), pooled over ``runs``."""
    return [
        pool_case(c, runs)
        for c in cases_of(runs)
        if c.baseline is not None and c.baseline != c.name and not c.unavailable
    ]


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _xs(s: Stat | None) -> str:
    if s is None:
        return "—"
    if s.lo == s.hi:
        return _x(s.median)
    return f"{_x(s.median)} ({_x(s.lo)}–{_x(s.hi)})"


def table(rows: Sequence[Pooled]) -> str:
    head = [
        "case",
        "reps",
        "throughput × HAProxy",
        f"reps ≥ {TARGET_RPS:g}×",
        "added p99 × HAProxy, steal-free: pooled",
        "same-rep median (min–max)",
        "each run's median",
        "each run pooled",
        "raw: pooled",
        "CPU / request at the fixed rate × HAProxy",
        "peak RSS MiB",
    ]
    lines = [report._md_row(head), report._md_row(["---"] * len(head))]
    for r in rows:
        lines.append(
            report._md_row(
                [
                    f"`{r.case.name}`",
                    str(r.reps),
                    _xs(r.x_rps),
                    f"{r.rps_at_target} of {r.x_rps.n if r.x_rps else 0}",
                    _x(r.added_quiet),
                    _xs(r.x_added_quiet),
                    ", ".join(_x(m) for m in r.run_medians),
                    ", ".join(_x(m) for m in r.run_pooled),
                    _x(r.added),
                    _xs(r.x_cpu_at_rate),
                    "—" if r.rss_mib is None else f"{r.rss_mib:.1f}",
                ]
            )
        )
    return "\n".join(lines)


def verdicts(rows: Sequence[Pooled]) -> list[str]:
    """One line per plait case: the issue's targets, met or not, on the pooled figures."""
    out = []
    for r in rows:
        if r.case.kind != "plait":
            continue
        rps_ok = r.x_rps is not None and r.x_rps.median >= TARGET_RPS
        p99 = r.added_quiet if r.added_quiet is not None else r.added
        p99_ok = p99 is not None and p99 <= TARGET_P99
        runs = [x for x in r.run_pooled if x is not None]
        runs_ok = sum(1 for x in runs if x <= TARGET_P99)
        out.append(
            f"`{r.case.name}`: throughput {_x(r.x_rps.median if r.x_rps else None)} "
            f"({'met' if rps_ok else 'NOT met'}, target ≥ {TARGET_RPS:g}×); added p99 "
            f"pooled {_x(p99)} ({'met' if p99_ok else 'NOT met'}, target ≤ {TARGET_P99:g}×), "
            f"met by {runs_ok} of {len(runs)} runs alone"
        )
    return out


def render(
    rows: Sequence[Pooled], sources: Sequence[str], runs: Sequence[Mapping[str, Any]]
) -> str:
    """The section of RESULTS.md, from its heading."""
    dates = ", ".join(str(run.get("started", "?"))[:16].replace("T", " ") for run in runs)
    control = next((r for r in rows if r.case.control), None)
    out = [
        SECTION,
        "",
        f"Generated by `benchmarks/pool.py` from {len(runs)} run(s) of `benchmarks/run.py` "
        f"(started {dates} UTC): {', '.join(f'`{s}`' for s in sources)} (not in git).",
        "",
        "Every repetition of every run, each case against the HAProxy case of its path in "
        "the same repetition. *Pooled* = the sum of the case's added p99 over the "
        "repetitions divided by the sum of HAProxy's; steal-free counts only the requests "
        "made while the hypervisor took no time from the CPUs (benchmarks/README.md). "
        "How a single run's figures scatter, and why they are pooled: the module docstring "
        "of `benchmarks/pool.py`.",
        "",
        table(rows),
        "",
        *[f"- {v}" for v in verdicts(rows)],
    ]
    if control is not None:
        out.append(
            f"- `{control.case.name}` (a second HAProxy, identical to the first): added p99 "
            f"pooled {_x(control.added_quiet)}, each run's median "
            f"{', '.join(_x(m) for m in control.run_medians)}: what two equal proxies give "
            "on this machine."
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="raw JSON files of run.py")
    p.add_argument("--write", action="store_true", help="replace the section in --results")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    a = p.parse_args(argv)
    loaded: list[tuple[str, dict[str, Any]]] = []
    for path in a.runs:
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            p.error(f"{path}: {exc}")
        if not isinstance(run, dict) or "reps" not in run or "cases" not in run:
            p.error(f"{path}: not a raw JSON of benchmarks/run.py (no 'reps' or 'cases')")
        shown = os.path.relpath(path.resolve(), a.results.resolve().parent)
        loaded.append((shown, run))
    loaded.sort(key=lambda sr: str(sr[1].get("started", "")))
    runs = [run for _, run in loaded]
    text = render(pool(runs), [shown for shown, _ in loaded], runs)
    print(text)
    if a.write:
        report.write_section(a.results, text, heading=SECTION)
        print(f"wrote {a.results} (section {SECTION!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
