"""Load generators: wrk (saturation throughput) and h2load (latency at a fixed rate).

The command builders and parsers are pure and unit-tested; :func:`run_wrk` and
:func:`run_h2load` run the tools (pinned to a CPU, bounded by ``timeout``).

wrk prints, e.g.::

      80501 requests in 2.02s, 89.59MB read
      Non-2xx or 3xx responses: 12
      Socket errors: connect 0, read 3, write 0, timeout 0
    Requests/sec:  39852.65

h2load's summary has no percentiles, so it writes one line per request with
``--log-file`` (``<start µs since epoch>\\t<status>\\t<µs until end of response>``;
status -1 for a failed stream) and :func:`percentile` computes them.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# -- command lines ------------------------------------------------------------------------------


def wrk_argv(
    url: str, *, host: str | None, connections: int, threads: int, duration: float
) -> list[str]:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    if host:
        argv += ["-H", f"Host: {host}"]
    return [*argv, url]


def h2load_argv(
    url: str,
    *,
    host: str | None,
    clients: int,
    rate: float,
    duration: float,
    log_file: Path,
) -> list[str]:
    """h2load over HTTP/1.1 at a total of ``rate`` req/s spread over ``clients`` connections.

    ``--rps`` is per client. The Host header is set through ``:authority`` (a plain
    ``-H 'Host: …'`` would be sent in addition to h2load's own Host, a 400).
    """
    per_client = rate / clients
    if per_client != int(per_client):
        raise ValueError(f"rate {rate:g} must be a multiple of clients {clients}")
    argv = ["h2load", "--h1", "-c", str(clients), "-t", "1", "--rps", str(int(per_client))]
    argv += ["-D", f"{duration:g}", "--log-file", str(log_file)]
    if host:
        argv += ["-H", f":authority: {host}"]
    return [*argv, url]


# -- parsers ------------------------------------------------------------------------------------

_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(text: str) -> float:
    """wrk/h2load durations: ``573.00us``, ``1.82ms``, ``2.02s``, ``1.5m`` -> seconds."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*(us|ms|s|m|h)\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * _UNITS_S[m.group(2)]


def parse_wrk(text: str) -> dict[str, Any]:
    """wrk's report -> requests, seconds, rps, non_2xx, socket errors, latency percentiles."""
    m = re.search(r"^\s*(\d+) requests in ([0-9.]+\w+), ", text, re.M)
    rps = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M)
    if not m or not rps:
        raise ValueError(f"cannot parse wrk output:\n{text}")
    out: dict[str, Any] = {
        "requests": int(m.group(1)),
        "seconds": parse_duration_s(m.group(2)),
        "rps": float(rps.group(1)),
        "non_2xx": 0,
        "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
        "latency_s": {},
    }
    non = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    if non:
        out["non_2xx"] = int(non.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        out["socket_errors"] = dict(
            zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True)
        )
    for pct, value in re.findall(r"^\s*(50|75|90|99)%\s+([0-9.]+\w+)\s*$", text, re.M):
        out["latency_s"][f"p{pct}"] = parse_duration_s(value)
    out["errors"] = out["non_2xx"] + sum(out["socket_errors"].values())
    return out


def merge_wrk(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several :func:`parse_wrk` results of one case (its saturation run in slices) -> one:
    requests, seconds and errors summed, rps = requests / seconds. wrk's latency
    percentiles do not add up, so each slice's are kept under ``slices_latency_s``."""
    if not parts:
        raise ValueError("no wrk results to merge")
    seconds = sum(p["seconds"] for p in parts)
    requests = sum(p["requests"] for p in parts)
    sockets = {k: sum(p["socket_errors"][k] for p in parts) for k in parts[0]["socket_errors"]}
    return {
        "requests": requests,
        "seconds": seconds,
        "rps": requests / seconds if seconds > 0 else 0.0,
        "non_2xx": sum(p["non_2xx"] for p in parts),
        "socket_errors": sockets,
        "errors": sum(p["errors"] for p in parts),
        "latency_s": dict(parts[0]["latency_s"]) if len(parts) == 1 else {},
        "slices_latency_s": [p["latency_s"] for p in parts],
        "slices_rps": [p["rps"] for p in parts],
    }


def parse_h2load(text: str) -> dict[str, Any]:
    """h2load's summary -> seconds, rps, requests total/succeeded/failed/errored/timeout, 2xx."""
    fin = re.search(r"^finished in ([0-9.]+\w+), ([0-9.]+) req/s", text, re.M)
    req = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        text,
        re.M,
    )
    codes = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)
    if not fin or not req or not codes:
        raise ValueError(f"cannot parse h2load output:\n{text}")
    keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    out: dict[str, Any] = {
        "seconds": parse_duration_s(fin.group(1)),
        "rps": float(fin.group(2)),
        "requests": dict(zip(keys, map(int, req.groups()), strict=True)),
        "status": dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, codes.groups()), strict=True)),
    }
    r = out["requests"]
    out["errors"] = (
        r["failed"] + r["errored"] + r["timeout"] + out["status"]["4xx"] + out["status"]["5xx"]
    )
    return out


def merge_h2load(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several :func:`run_h2load` summaries of one case (its latency run in slices) ->
    one: seconds, request and status counts and errors summed, rps over the whole time.
    The percentiles are not merged here: take them over all the slices' requests."""
    if not parts:
        raise ValueError("no h2load results to merge")
    seconds = sum(p["seconds"] for p in parts)
    return {
        "seconds": seconds,
        "rps": sum(p["rps"] * p["seconds"] for p in parts) / seconds if seconds > 0 else 0.0,
        "requests": {k: sum(p["requests"][k] for p in parts) for k in parts[0]["requests"]},
        "status": {k: sum(p["status"][k] for p in parts) for k in parts[0]["status"]},
        "errors": sum(p["errors"] for p in parts),
        "log_non_ok": sum(p.get("log_non_ok", 0) for p in parts),
        "slices_rps": [p["rps"] for p in parts],
    }


def parse_h2load_rows(text: str) -> list[tuple[float, int, float]]:
    """The per-request log -> ``(start, status, duration)``, times in seconds."""
    rows = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        rows.append((int(parts[0]) / 1e6, int(parts[1]), int(parts[2]) / 1e6))
    return rows


def ok_durations(rows: Sequence[tuple[float, int, float]]) -> tuple[list[float], int]:
    """Log rows -> (durations in seconds of 2xx/3xx responses, count of the rest)."""
    ok = [duration for _, status, duration in rows if 200 <= status < 400]
    return ok, len(rows) - len(ok)


def parse_h2load_log(text: str) -> tuple[list[float], int]:
    """The per-request log -> (durations in seconds of 2xx/3xx responses, count of the rest)."""
    return ok_durations(parse_h2load_rows(text))


def durations_within(
    rows: Sequence[tuple[float, int, float]], windows: Sequence[tuple[float, float]]
) -> tuple[list[float], int]:
    """Of the 2xx/3xx requests among h2load log ``rows``, the durations of those that
    started and ended inside one of ``windows`` (sorted, disjoint ``(start, end)`` in
    seconds), and how many 2xx/3xx requests there were in all."""
    rows = sorted(r for r in rows if 200 <= r[1] < 400)
    kept: list[float] = []
    i = 0
    for start, _, duration in rows:
        while i < len(windows) and windows[i][1] < start:
            i += 1
        if i < len(windows) and windows[i][0] <= start and start + duration <= windows[i][1]:
            kept.append(duration)
    return kept, len(rows)


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    xs = sorted(values)
    rank = (len(xs) - 1) * p / 100
    lo = math.floor(rank)
    hi = math.ceil(rank)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


LATENCY_PERCENTILES = (50, 90, 99, 99.9)


def latency_summary(durations: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9 (seconds) and the sample count."""
    out = {pname(p): percentile(durations, p) for p in LATENCY_PERCENTILES}
    out["samples"] = float(len(durations))
    return out


def pname(p: float) -> str:
    """50 -> 'p50', 99.9 -> 'p99.9'."""
    return f"p{p:g}"


# -- running ------------------------------------------------------------------------------------


def _taskset(cpu: int | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if cpu is not None else argv


def run_wrk(argv: list[str], *, cpu: int | None, timeout: float) -> tuple[dict[str, Any], str]:
    r = subprocess.run(_taskset(cpu, argv), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr or r.stdout}")
    return parse_wrk(r.stdout), r.stdout


def run_h2load(
    argv: list[str], log_file: Path, *, cpu: int | None, timeout: float
) -> tuple[dict[str, Any], str, list[tuple[float, int, float]]]:
    """Run h2load; its summary (``latency_s`` from the log), its output, and the log's
    rows (:func:`parse_h2load_rows`)."""
    log_file.unlink(missing_ok=True)  # h2load appends
    r = subprocess.run(_taskset(cpu, argv), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr or r.stdout}")
    summary = parse_h2load(r.stdout)
    rows = parse_h2load_rows(log_file.read_text())
    durations, bad = ok_durations(rows)
    summary["log_non_ok"] = bad
    summary["latency_s"] = latency_summary(durations) if durations else {}
    return summary, r.stdout, rows
