"""benchmarks/run.py: arguments, the grouping by path, and the saturation runs cut into
slices alternated between the cases of one path (with stand-in runs, and once with real
nginx, HAProxy, wrk and h2load when they are installed)."""

import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

import run
from peers import Endpoint, PeerSet
from procs import Procs
from report import CONTROL, all_cases


def test_durations_must_be_whole_slices() -> None:
    a = run.parse_args(["--duration", "4", "--results", "/dev/null"])
    assert (a.slice, a.slices) == (1, 4)
    assert (a.latency_slice, a.latency_slices) == (4, 1)  # shorter than a slice: one run
    a = run.parse_args(
        ["--duration", "6", "--slice", "2", "--latency-duration", "15", "--results", "x"]
    )
    assert (a.slices, a.latency_slice, a.latency_slices) == (3, 5, 3)
    assert run.parse_args(["--quick", "--results", "/dev/null"]).slices == 3
    for bad in (
        ["--duration", "5", "--slice", "2"],
        ["--slice", "0"],
        ["--duration", "2.5"],
        ["--latency-duration", "12"],  # not a multiple of 5
        ["--latency-slice", "0"],
    ):
        with pytest.raises(SystemExit):
            run.parse_args(bad)


def test_switches_note_gives_medians_per_case() -> None:
    cases = all_cases()

    def res(cpu: float, vol: float, invol: float) -> dict[str, Any]:
        return {"latency_cpu_us_per_req": cpu, "latency_switches_per_req": [vol, invol]}

    reps: list[dict[str, Any]] = [
        {"plait-1hop": res(40.0, 1.0, 0.01), "direct": {}},
        {"plait-1hop": res(60.0, 3.0, 0.03)},
        {"plait-1hop": res(45.0, 0.5, 0.2), "haproxy-1hop": {"error": "x"}},
    ]
    note = run.switches_note(reps, cases)
    assert note is not None
    assert note.endswith("median over reps: `plait-1hop` 45 µs, 1.00 / 0.030.")
    assert run.switches_note([{"direct": {"latency_switches_per_req": None}}], cases) is None
    assert note in run.build_notes(0, reps, {}, cases)


def test_cases_are_grouped_by_path_in_order() -> None:
    path_of = {
        "direct": (0, False),
        "plait-1hop": (1, False),
        "haproxy-1hop": (1, False),
        "plait-2hop-mtls": (2, True),
        "plait-2hop": (2, False),
        "haproxy-2hop-mtls": (2, True),
        "haproxy-2hop": (2, False),
    }
    assert run.path_groups(list(path_of), path_of) == [
        ["direct"],
        ["plait-1hop", "haproxy-1hop"],
        ["plait-2hop-mtls", "haproxy-2hop-mtls"],
        ["plait-2hop", "haproxy-2hop"],
    ]


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_round_orders_balance_places_and_predecessors(n: int) -> None:
    """Over n rounds (2n for an odd n) every case runs in every place equally often and
    right after every other case equally often; alternate() follows those orders from
    its start round on."""
    group = [Endpoint(chr(ord("a") + i), 1, []) for i in range(n)]
    rounds = n if n % 2 == 0 else 2 * n
    place: dict[tuple[str, int], int] = {}
    after: dict[tuple[str, str], int] = {}
    for t in range(rounds):
        row = [ep.name for ep in run.round_order(group, t)]
        assert sorted(row) == [ep.name for ep in group]
        for i, name in enumerate(row):
            place[name, i] = place.get((name, i), 0) + 1
        for prev, name in itertools.pairwise(row):
            after[prev, name] = after.get((prev, name), 0) + 1
    assert set(place.values()) == {rounds // n}
    assert len(after) == n * (n - 1) and len(set(after.values())) == 1
    four = [Endpoint(name, 1, []) for name in "abcd"]
    assert [ep.name for ep in run.round_order(four, 1)] == ["b", "c", "a", "d"]
    order: list[Endpoint] = []
    run.alternate(group, 2, order.append, {}, start=5)
    assert order == run.round_order(group, 5) + run.round_order(group, 6)
    assert run.round_order([], 3) == []


def test_the_control_case_is_on_unless_left_out() -> None:
    assert run.parse_args([]).no_control is False
    assert run.parse_args(["--no-control"]).no_control is True
    cases = all_cases(control=True)
    notes = run.build_notes(0, [], {}, cases)
    assert any(n.startswith(f"`{CONTROL}` is a second HAProxy") for n in notes)
    assert not any(CONTROL in n for n in run.build_notes(0, [], {}, all_cases()))
    path_of = {c.name: (c.hops, c.mtls) for c in cases}
    assert run.path_groups([c.name for c in cases], path_of)[1] == [
        "plait-1hop",
        "haproxy-1hop",
        "nginx-1hop",
        CONTROL,
    ]


def wrk_result(requests: int, seconds: float = 1.0, errors: int = 0) -> dict[str, Any]:
    return {
        "requests": requests,
        "seconds": seconds,
        "rps": requests / seconds,
        "non_2xx": errors,
        "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
        "errors": errors,
        "latency_s": {"p50": 0.001},
    }


def test_slices_alternate_and_add_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Rounds rotated (A B C, B C A, C A B), each case's requests, CPU and wall time
    summed; a case that fails in a slice gets its error and leaves the rounds, the others
    go on."""
    calls: list[str] = []
    per_slice = {"a": 1000, "b": 3000, "c": 500}

    def warm_up(ep: Endpoint, a: Any) -> None:
        calls.append(f"warm {ep.name}")

    def saturation_slice(ep: Endpoint, a: Any, upstream_pid: int) -> dict[str, Any]:
        calls.append(ep.name)
        if ep.name == "c" and calls.count("c") == 2:
            raise RuntimeError("wrk exited 1: connection refused")
        t0 = {0: (0, 0, 0), 1: (0, 0, 0)}
        t1 = {0: (90, 100, 2), 1: (50, 100, 0)}
        return {
            "wrk": wrk_result(per_slice[ep.name]),
            "text": f"{ep.name} slice",
            "cpu": 0.5,
            "upstream_cpu": 0.25,
            "wall": 1.0,
            "ticks": (t0, t1),
            "loadavg_before": 0.5,
        }

    def latency_slice(ep: Endpoint, a: Any, work: Path) -> dict[str, Any]:
        calls.append(f"latency {ep.name}")
        n = calls.count(f"latency {ep.name}")
        h2 = {
            "seconds": 2.0,
            "rps": 1000.0,
            "requests": {"total": 2000, "done": 2000},
            "status": {"2xx": 1999, "5xx": 1},
            "errors": 1,
            "log_non_ok": 1,
        }
        durations = [0.001 * n] * 1999  # the second slice twice as slow
        return {
            "h2load": h2,
            "text": f"h2load slice {n}",
            "durations": durations,
            "quiet": durations[:1000],
            "ok": 1999,
            "ticks": ({0: (0, 0, 0)}, {0: (10, 100, 5)}),
            "switches": (200 * n, n),
            "cpu_s": 0.1 * n,
            "argv": ["h2load", "-D", "2"],
        }

    monkeypatch.setattr(run, "warm_up", warm_up)
    monkeypatch.setattr(run, "saturation_slice", saturation_slice)
    monkeypatch.setattr(run, "latency_slice", latency_slice)
    a = run.parse_args(
        ["--duration", "3", "--latency-duration", "4", "--latency-slice", "2", "--results", "x"]
    )
    group = [Endpoint(n, 1, []) for n in ("a", "b", "c")]
    results = dict(run.measure_group(group, a, tmp_path, upstream_pid=1))
    assert calls == [
        "warm a", "warm b", "warm c",
        "a", "b", "c", "b", "c", "a", "a", "b",  # c failed in round 2: gone from round 3
        "latency a", "latency b", "latency b", "latency a",
    ]  # fmt: skip
    assert results["c"] == {"error": "wrk exited 1: connection refused"}
    a_res = results["a"]
    assert a_res["requests"] == 3000 and a_res["rps"] == 1000.0 and a_res["slices"] == 3
    assert a_res["cpu_s"] == 1.5 and a_res["wall_s"] == 3.0
    assert a_res["cpu_per_10k"] is None  # no pids: nothing measured
    assert a_res["latency_switches_per_req"] is None
    assert a_res["latency_cpu_us_per_req"] is None
    assert a_res["cpu_busy_by_cpu"] == {0: 0.9, 1: 0.5}
    assert a_res["steal_on_proxy_cpu"] == pytest.approx(0.02)
    assert a_res["wrk"]["slices_rps"] == [1000.0] * 3
    assert a_res["raw"] == {
        "wrk": ["a slice"] * 3,
        "h2load": [["h2load slice 1"], ["h2load slice 2"]],
    }
    assert a_res["commands"] == {"wrk": a_res["commands"]["wrk"], "h2load": "h2load -D 2"}
    assert a_res["commands"]["wrk"].startswith("wrk -t1 -c50 -d1s")
    # latency over both slices' requests: half at 1 ms, half at 2 ms
    assert a_res["latency_s"]["p50"] == pytest.approx(0.0015)
    assert a_res["latency_s"]["p99"] == pytest.approx(0.002)
    assert a_res["latency_s"]["samples"] == 3998
    assert a_res["latency_quiet_s"]["samples"] == 2000
    assert a_res["latency_quiet_share"] == pytest.approx(2000 / 3998)
    assert a_res["latency_errors"] == 4 and a_res["latency_slices"] == 2
    assert a_res["latency_steal_on_proxy_cpu"] == pytest.approx(0.05)
    assert results["b"]["rps"] == 3000.0


TOOLS = ("nginx", "haproxy", "wrk", "h2load", "taskset")


@pytest.mark.skipif(
    not all(shutil.which(t) for t in TOOLS), reason=f"needs {', '.join(TOOLS)} installed"
)
def test_a_real_group_is_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """direct and HAProxy on one hop, 2 one-second slices each for saturation and for
    latency: every request counted, the proxy's CPU read."""
    order: list[str] = []
    real_slice = run.saturation_slice

    def recorded(ep: Endpoint, a: Any, upstream_pid: int) -> dict[str, Any]:
        order.append(ep.name)
        return real_slice(ep, a, upstream_pid)

    monkeypatch.setattr(run, "saturation_slice", recorded)
    a = run.parse_args(
        [
            *("--duration", "2", "--latency-duration", "2", "--latency-slice", "1"),
            *("--warmup", "0", "--results", "/dev/null"),
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        procs = Procs(work / "logs")
        try:
            peers = PeerSet(procs, work, proxy_cpu=0, side_cpu=0)
            up = peers.start_upstream()
            upstream_pid = procs.started[-1].pid
            group = [
                Endpoint("direct", up, []),
                peers.chain("haproxy", 1, False),
                peers.chain("haproxy", 1, False, name=CONTROL),  # files of its own
            ]
            assert group[1].procs[0].pid != group[2].procs[0].pid
            results = dict(run.measure_group(group, a, work, upstream_pid))
        finally:
            procs.stop_all()
    assert order == ["direct", "haproxy-1hop", CONTROL, "haproxy-1hop", CONTROL, "direct"]
    assert set(results) == {"direct", "haproxy-1hop", CONTROL}
    for res in results.values():
        assert "error" not in res, res
        assert res["slices"] == 2 and res["requests"] == sum(
            int(r.split(" requests in")[0].split()[-1]) for r in res["raw"]["wrk"]
        )
        assert res["errors"] == 0 and res["latency_errors"] == 0
        assert res["latency_slices"] == 2 and res["latency_s"]["samples"] > 100
    assert results["haproxy-1hop"]["cpu_per_10k"] > 0
    assert results["direct"]["cpu_per_10k"] is None
    # HAProxy sleeps between h2load's bursts: at least one voluntary switch per 10 requests
    assert results["haproxy-1hop"]["latency_switches_per_req"][0] > 0.1
    assert results["direct"]["latency_switches_per_req"] is None
    assert 1 < results["haproxy-1hop"]["latency_cpu_us_per_req"] < 10_000
