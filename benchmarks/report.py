"""From raw per-repetition results to the Markdown tables of RESULTS.md (pure, unit-tested).

Raw results (``benchmarks/out/run-*.json``) hold, per repetition, per case::

    {"rps": 4712.6, "requests": 47126, "errors": 0,          # wrk, saturation
     "latency_s": {"p50": …, "p90": …, "p99": …, "p99.9": …},  # h2load at a fixed rate
     "latency_rps": 1000.0, "latency_errors": 0,
     "cpu_s": 9.8, "cpu_per_10k": 2.07, "cpu_busy": 0.98,     # proxies of the case only
     "peak_rss_kib": 51234}

or ``{"error": "why it failed"}``. :func:`summarize` turns these into per-case medians with
min and max over the repetitions, and ratios to the HAProxy case with the same path (hops
and TLS) computed *within* each repetition before taking the median:

* throughput ratio = case req/s / HAProxy req/s;
* added p99 = case p99 - ``direct`` p99 (same repetition); ratio = case / HAProxy;
* CPU ratio = case CPU s per 10k requests / HAProxy's.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NOT_YET = "not yet available"


@dataclass(frozen=True)
class Case:
    name: str  # "plait-2hop-mtls"
    kind: str  # "direct" | "plait" | "haproxy" | "nginx"
    hops: int
    mtls: bool = False
    unavailable: str | None = None  # why the case cannot run at all (e.g. NOT_YET)
    # a second, identical HAProxy measured as a case of its own (CONTROL): its ratios to
    # the baseline are what two equal proxies give on this machine
    control: bool = False

    @property
    def path(self) -> str:
        if self.hops == 0:
            return "load → upstream"
        if self.hops == 1:
            return "load → outbound → upstream"
        link = " =mTLS⇒ " if self.mtls else " → "
        return f"load → outbound{link}inbound → upstream"

    @property
    def baseline(self) -> str | None:
        """The HAProxy case this case is compared with (None for ``direct``)."""
        if self.hops == 0:
            return None
        return f"haproxy-{self.hops}hop{'-mtls' if self.mtls else ''}"


CONTROL = "haproxy-1hop-control"


def all_cases(plait_mtls: str | None = NOT_YET, control: bool = False) -> list[Case]:
    """Every case in run order; with ``control``, :data:`CONTROL` last of the one-hop path
    (the rounds of a path change order, so its place and predecessor change too)."""
    cases = [Case("direct", "direct", 0)]
    for hops, mtls in ((1, False), (2, False), (2, True)):
        for kind in ("plait", "haproxy", "nginx"):
            why = plait_mtls if (kind == "plait" and mtls) else None
            cases.append(Case(f"{kind}-{hops}hop{'-mtls' if mtls else ''}", kind, hops, mtls, why))
        if control and hops == 1:
            cases.append(Case(CONTROL, "haproxy", 1, control=True))
    return cases


# -- statistics -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat | None:
        vals = [v for v in values if v is not None]
        if not vals:
            return None
        return cls(statistics.median(vals), min(vals), max(vals), len(vals))


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, None when either is missing or ``b`` is not positive."""
    if a is None or b is None or b <= 0:
        return None
    return a / b


METRICS = (
    "rps",
    "p50",
    "p90",
    "p99",
    "p99.9",
    "added_p99",
    "cpu_per_10k",
    "cpu_at_rate",
    "cpu_busy",
    "rss_mib",
    "latency_rps",
    "latency_steal",
    "quiet_p99",
    "added_quiet_p99",
    "quiet_share",
    "errors",
    "x_rps",
    "x_added_p99",
    "x_added_quiet_p99",
    "x_cpu",
    "x_cpu_at_rate",
)


def per_rep_metrics(rep: Mapping[str, Any], case: Case) -> dict[str, float | None] | None:
    """One repetition's figures for ``case``, ratios included; None if it has no result."""
    res = rep.get(case.name)
    if not res or res.get("error"):
        return None
    lat = res.get("latency_s") or {}
    direct = rep.get("direct") or {}
    if direct.get("error"):
        direct = {}

    def p99_of(r: Mapping[str, Any], key: str) -> float | None:
        return (r.get(key) or {}).get("p99")

    def minus(x: float | None, y: float | None) -> float | None:
        return x - y if (x is not None and y is not None) else None

    p99 = lat.get("p99")
    added = minus(p99, p99_of(direct, "latency_s"))
    quiet_p99 = p99_of(res, "latency_quiet_s")
    added_quiet = minus(quiet_p99, p99_of(direct, "latency_quiet_s"))
    out: dict[str, float | None] = {
        "rps": res.get("rps"),
        "p50": lat.get("p50"),
        "p90": lat.get("p90"),
        "p99": p99,
        "p99.9": lat.get("p99.9"),
        "added_p99": added if case.hops else None,
        "cpu_per_10k": res.get("cpu_per_10k") if case.hops else None,
        # CPU µs per request during the fixed-rate runs (raw runs from the Eleventh round on)
        "cpu_at_rate": res.get("latency_cpu_us_per_req") if case.hops else None,
        "cpu_busy": res.get("cpu_busy") if case.hops else None,
        "rss_mib": res["peak_rss_kib"] / 1024 if case.hops and res.get("peak_rss_kib") else None,
        "latency_rps": res.get("latency_rps"),
        "latency_steal": res.get("latency_steal_on_proxy_cpu"),
        "quiet_p99": quiet_p99,
        "added_quiet_p99": added_quiet if case.hops else None,
        "quiet_share": res.get("latency_quiet_share"),
        "errors": float(res.get("errors", 0)) + float(res.get("latency_errors", 0)),
        "x_rps": None,
        "x_added_p99": None,
        "x_added_quiet_p99": None,
        "x_cpu": None,
        "x_cpu_at_rate": None,
    }
    if case.baseline and case.baseline != case.name:
        base_case = Case(case.baseline, "haproxy", case.hops, case.mtls)
        base = per_rep_metrics(rep, base_case)
        if base is not None:
            out["x_rps"] = ratio(out["rps"], base["rps"])
            out["x_added_p99"] = ratio(out["added_p99"], base["added_p99"])
            out["x_added_quiet_p99"] = ratio(out["added_quiet_p99"], base["added_quiet_p99"])
            out["x_cpu"] = ratio(out["cpu_per_10k"], base["cpu_per_10k"])
            out["x_cpu_at_rate"] = ratio(out["cpu_at_rate"], base["cpu_at_rate"])
    elif case.baseline == case.name:
        for x, of in (
            ("x_rps", "rps"),
            ("x_added_p99", "added_p99"),
            ("x_added_quiet_p99", "added_quiet_p99"),
            ("x_cpu", "cpu_per_10k"),
            ("x_cpu_at_rate", "cpu_at_rate"),
        ):
            out[x] = 1.0 if out[of] is not None else None
    return out


@dataclass
class Row:
    case: Case
    stats: dict[str, Stat | None] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    reps: int = 0


def summarize(cases: Sequence[Case], reps: Sequence[Mapping[str, Any]]) -> list[Row]:
    """Per case: median/min/max of every metric over the repetitions that produced one."""
    rows = []
    for case in cases:
        row = Row(case)
        per = []
        for rep in reps:
            res = rep.get(case.name)
            if res and res.get("error"):
                row.failures.append(str(res["error"]))
            m = per_rep_metrics(rep, case)
            if m is not None:
                per.append(m)
        row.reps = len(per)
        for key in METRICS:
            row.stats[key] = Stat.of([m[key] for m in per if m.get(key) is not None])
        rows.append(row)
    return rows


# -- formatting -----------------------------------------------------------------------------


def fmt_stat(s: Stat | None, scale: float = 1.0, digits: int = 0, suffix: str = "") -> str:
    """``12,345 (11,900–12,800)``; the range is left out when there is one value."""
    if s is None:
        return "—"

    def f(v: float) -> str:
        return f"{v * scale:,.{digits}f}{suffix}"

    if s.n == 1 or (f(s.lo) == f(s.median) == f(s.hi)):
        return f(s.median)
    return f"{f(s.median)} ({f(s.lo)}–{f(s.hi)})"


def _blank_row(row: Row, ncols: int) -> list[str] | None:
    if row.case.unavailable:
        return [row.case.unavailable] + ["—"] * (ncols - 1)
    if row.reps == 0:
        why = row.failures[0] if row.failures else "no result"
        return [f"failed: {why.splitlines()[0][:120]}"] + ["—"] * (ncols - 1)
    return None


def throughput_table(rows: Sequence[Row]) -> str:
    head = [
        "case",
        "path",
        "throughput req/s",
        "× HAProxy",
        "proxy CPU s / 10k req",
        "× HAProxy",
        "proxy CPU busy",
        "peak RSS MiB",
        "errors",
    ]
    lines = [_md_row(head), _md_row(["---"] * len(head))]
    for row in rows:
        s = row.stats
        cells = _blank_row(row, len(head) - 2) or [
            fmt_stat(s["rps"]),
            fmt_stat(s["x_rps"], digits=2, suffix="×"),
            fmt_stat(s["cpu_per_10k"], digits=2),
            fmt_stat(s["x_cpu"], digits=2, suffix="×"),
            fmt_stat(s["cpu_busy"], scale=100, suffix="%"),
            fmt_stat(s["rss_mib"], digits=1),
            fmt_stat(s["errors"]),
        ]
        lines.append(_md_row([f"`{row.case.name}`", row.case.path, *cells]))
    return "\n".join(lines)


def latency_table(rows: Sequence[Row]) -> str:
    head = [
        "case",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "added p99 ms",
        "× HAProxy",
        "achieved req/s",
        "CPU 0 steal",
        "steal-free p99 ms",
        "steal-free added p99 ms",
        "× HAProxy",
        "steal-free share",
    ]
    lines = [_md_row(head), _md_row(["---"] * len(head))]
    for row in rows:
        s = row.stats
        ms = {"scale": 1000.0, "digits": 2}
        cells = _blank_row(row, len(head) - 1) or [
            fmt_stat(s["p50"], **ms),
            fmt_stat(s["p90"], **ms),
            fmt_stat(s["p99"], **ms),
            fmt_stat(s["p99.9"], **ms),
            fmt_stat(s["added_p99"], **ms),
            fmt_stat(s["x_added_p99"], digits=2, suffix="×"),
            fmt_stat(s["latency_rps"]),
            fmt_stat(s["latency_steal"], scale=100.0, digits=1, suffix="%"),
            fmt_stat(s["quiet_p99"], **ms),
            fmt_stat(s["added_quiet_p99"], **ms),
            fmt_stat(s["x_added_quiet_p99"], digits=2, suffix="×"),
            fmt_stat(s["quiet_share"], scale=100.0, suffix="%"),
        ]
        lines.append(_md_row([f"`{row.case.name}`", *cells]))
    return "\n".join(lines)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


TITLE = "# plait benchmark results"
PREAMBLE = (
    f"{TITLE}\n\nEach section is written by one script in benchmarks/ and replaced only by "
    "it; how to run them and read this: [README.md](README.md).\n"
)
SECTION = "## Data plane: plait proxy vs direct, HAProxy and nginx"
# Headings of this report before it became one section (RESULTS.md of older runs).
LEGACY = (
    "## Saturation throughput",
    "## Latency at a fixed",
    "## Notes",
    "## Machine",
    "## Commands",
)


def sliced(settings: dict[str, Any], duration: str = "duration", step: str = "slice") -> str:
    """How a run was cut (runs made before ``--slice`` existed: not at all)."""
    seconds = settings.get(step)
    if not seconds or seconds >= settings[duration]:
        return ""
    return f" per case, in {seconds:g}-s runs alternated with the other cases of its path"


def render(
    rows: Sequence[Row],
    *,
    machine: Mapping[str, str],
    settings: Mapping[str, Any],
    commands: Sequence[str],
    date: str,
    raw_file: str,
    notes: Sequence[str] = (),
) -> str:
    """This report's section of RESULTS.md (from its ``## `` heading to its end)."""
    out = [
        SECTION,
        "",
        f"Generated by `benchmarks/run.py` on {date}. Raw data: `{raw_file}` (not in git).",
        "",
        f"Each figure is the median over {settings['reps']} repetition(s), with min–max in "
        "parentheses; cases alternate within each repetition. Ratios (×) are computed against "
        "the HAProxy case with the same path *in the same repetition*, then their median is "
        "taken. Added p99 = the case's p99 minus the `direct` p99 of the same repetition.",
        "",
        f"### Saturation throughput (wrk, {settings['connections']} keep-alive connections, "
        f"{settings['duration']:g} s{sliced(settings)})",
        "",
        throughput_table(rows),
        "",
        f"### Latency at a fixed {settings['rate']:g} req/s (h2load, {settings['clients']} "
        f"connections, {settings['latency_duration']:g} s"
        f"{sliced(settings, 'latency_duration', 'latency_slice')})",
        "",
        latency_table(rows),
        "",
    ]
    if notes:
        out += ["### Notes", "", *[f"- {n}" for n in notes], ""]
    out += ["### Machine", "", "| | |", "| --- | --- |"]
    out += [_md_row([k, v]) for k, v in machine.items()]
    out += ["", "### Commands", "", "```sh", *commands, "```", ""]
    return "\n".join(out)


def _split_h2(text: str) -> tuple[str, list[str]]:
    """Text before the first ``## `` heading, and each ``## `` section (heading to the
    next one); headings inside code fences do not count."""
    preamble: list[str] = []
    sections: list[list[str]] = []
    fenced = False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            preamble.append(line)
    return "".join(preamble), ["".join(s) for s in sections]


def merge_section(existing: str, section: str, heading: str = SECTION) -> str:
    """``existing`` RESULTS.md with the section headed ``heading`` replaced by ``section``;
    every other ``## `` section is kept as it is, in its place. A new section goes first,
    or, for another heading than this report's, right after this report's section."""
    preamble, sections = _split_h2(existing)
    legacy = preamble.startswith(TITLE) and "Generated by `benchmarks/run.py`" in preamble
    if legacy or not preamble.strip().startswith(TITLE):
        preamble = PREAMBLE
    kept: list[str] = []
    at = None
    after = 0  # where a new section goes
    for i, sec in enumerate(sections):
        title = sec.split("\n", 1)[0]
        mine = title == heading or (
            heading == SECTION
            and legacy
            and title.startswith(LEGACY)
            and all(s.startswith(LEGACY) for s in sections[:i])
        )
        if mine:
            at = len(kept) if at is None else at
        else:
            kept.append(sec if sec.endswith("\n") else sec + "\n")
            if title == SECTION:
                after = len(kept)
    body = section.rstrip("\n") + "\n"
    kept.insert(after if at is None else at, body)
    return preamble.rstrip("\n") + "\n\n" + "\n".join(k.rstrip("\n") + "\n" for k in kept)


def write_section(path: Path, section: str, heading: str = SECTION) -> None:
    """Replace the section ``heading`` of ``path`` (re-read just before), atomically."""
    existing = path.read_text() if path.exists() else ""
    tmp = path.with_suffix(path.suffix + ".tmp-run")
    tmp.write_text(merge_section(existing, section, heading))
    os.replace(tmp, path)
