"""Runs pooled: sums of added p99, same-rep ratios, each run's median (benchmarks/pool.py)."""

import json

import pytest

import pool
from report import CONTROL, SECTION, TITLE, all_cases, merge_section


def res(rps, p99, quiet_p99=None, cpu_us=None, rss_kib=None):
    out = {
        "rps": rps,
        "errors": 0,
        "latency_s": {"p50": p99 / 3, "p90": p99 / 2, "p99": p99, "p99.9": p99 * 2},
        "latency_rps": 1000.0,
        "latency_errors": 0,
        "latency_quiet_s": {"p99": p99 if quiet_p99 is None else quiet_p99},
    }
    if cpu_us is not None:
        out["latency_cpu_us_per_req"] = cpu_us
    if rss_kib is not None:
        out["peak_rss_kib"] = rss_kib
    return out


CASES = [vars(c) for c in all_cases(plait_mtls=None, control=True) if c.hops <= 1]


def run(started, reps):
    return {"started": started, "cases": CASES, "reps": reps}


# added p99 (ms above direct's): plait 1.0 and 3.0 in run A, 0.5 in run B; HAProxy 2.0,
# 1.0 and 1.0. Same-rep ratios 0.5, 3.0, 0.5: median 0.5, but the sums give 4.5 / 4.0.
RUN_A = run(
    "2026-11-29T02:00:00+00:00",
    [
        {
            "direct": res(90000, 0.001),
            "plait-1hop": res(50000, 0.002, cpu_us=50.0, rss_kib=34 * 1024),
            "haproxy-1hop": res(40000, 0.003, cpu_us=40.0),
            "nginx-1hop": res(45000, 0.002),
            CONTROL: res(41000, 0.0025),
        },
        {
            "direct": res(90000, 0.001, quiet_p99=0.001),
            "plait-1hop": res(38000, 0.004, quiet_p99=0.0015, cpu_us=60.0, rss_kib=35 * 1024),
            "haproxy-1hop": res(40000, 0.002, quiet_p99=0.002, cpu_us=50.0),
            "nginx-1hop": {"error": "nginx-1hop-out exited"},
            CONTROL: res(40000, 0.002),
        },
    ],
)
RUN_B = run(
    "2026-11-29T03:00:00+00:00",
    [
        {
            "direct": res(90000, 0.0005),
            "plait-1hop": res(44000, 0.001, rss_kib=33 * 1024),
            "haproxy-1hop": res(40000, 0.0015),
            "nginx-1hop": res(45000, 0.001),
            CONTROL: {"error": "haproxy-1hop-control exited"},
        },
    ],
)


def row(rows, name):
    return next(r for r in rows if r.case.name == name)


def test_added_p99_pooled_is_the_ratio_of_the_sums():
    rows = pool.pool([RUN_A, RUN_B])
    plait = row(rows, "plait-1hop")
    assert plait.reps == 3
    # raw: (1 + 3 + 0.5) / (2 + 1 + 1)
    assert plait.added == pytest.approx(4.5 / 4.0)
    assert plait.x_added.median == pytest.approx(0.5)
    assert (plait.x_added.lo, plait.x_added.hi) == pytest.approx((0.5, 3.0))
    # steal-free: rep 2 of run A has its own (0.5 vs 1.0); the others equal the raw ones
    assert plait.added_quiet == pytest.approx((1.0 + 0.5 + 0.5) / (2.0 + 1.0 + 1.0))
    assert plait.run_medians == pytest.approx([(0.5 + 0.5) / 2, 0.5])
    # each run on its own: run A (1 + 0.5) / (2 + 1), run B 0.5 / 1
    assert plait.run_pooled == pytest.approx([1.5 / 3.0, 0.5])


def test_throughput_counts_the_repetitions_at_the_target():
    plait = row(pool.pool([RUN_A, RUN_B]), "plait-1hop")
    assert plait.x_rps.median == pytest.approx(1.1)
    assert (plait.x_rps.lo, plait.x_rps.hi) == pytest.approx((0.95, 1.25))
    assert (plait.rps_at_target, plait.x_rps.n) == (2, 3)


def test_cpu_at_the_fixed_rate_and_peak_rss():
    plait = row(pool.pool([RUN_A, RUN_B]), "plait-1hop")
    assert plait.x_cpu_at_rate.median == pytest.approx((50 / 40 + 60 / 50) / 2)
    assert plait.x_cpu_at_rate.n == 2  # run B has no CPU at the rate: not counted
    assert plait.rss_mib == 35.0


def test_failed_cases_and_the_baseline_itself_are_left_out():
    rows = pool.pool([RUN_A, RUN_B])
    assert [r.case.name for r in rows] == ["plait-1hop", "nginx-1hop", CONTROL]
    assert row(rows, "nginx-1hop").reps == 2
    control = row(rows, CONTROL)
    assert control.reps == 2
    assert control.run_medians == [pytest.approx((0.75 + 1.0) / 2), None]
    assert control.run_pooled == [pytest.approx((1.5 + 1.0) / (2.0 + 1.0)), None]


def test_the_report_says_which_targets_are_met():
    rows = pool.pool([RUN_A, RUN_B])
    text = pool.render(rows, ["out/a.json", "out/b.json"], [RUN_A, RUN_B])
    assert text.startswith(pool.SECTION + "\n")
    assert "2 run(s)" in text and "`out/a.json`, `out/b.json`" in text
    assert "| `plait-1hop` | 3 | 1.10× (0.95×–1.25×) | 2 of 3 | 0.50× |" in text
    assert "`plait-1hop`: throughput 1.10× (met, target ≥ 1×); added p99 pooled 0.50× (met" in text
    assert "| 0.50×, 0.50× | 0.50×, 0.50× | 1.12× |" in text  # each run's median, pooled; raw
    assert "target ≤ 1.2×), met by 2 of 2 runs alone" in text
    assert f"`{CONTROL}` (a second HAProxy" in text
    slow = run(
        "2026-11-29T04:00:00+00:00",
        [{"direct": res(1, 0.001), "plait-1hop": res(1, 0.005), "haproxy-1hop": res(2, 0.003)}],
    )
    lines = pool.verdicts(pool.pool([slow]))
    assert lines == [
        "`plait-1hop`: throughput 0.50× (NOT met, target ≥ 1×); added p99 pooled 2.00× "
        "(NOT met, target ≤ 1.2×), met by 0 of 1 runs alone"
    ]


def test_the_pooled_section_goes_after_the_data_plane_and_stays_in_place():
    existing = f"{TITLE}\n\nintro\n\n{SECTION}\n\ntables\n\n## What we changed\n\nrounds\n"
    first = merge_section(existing, f"{pool.SECTION}\n\nv1\n", pool.SECTION)
    titles = [line for line in first.splitlines() if line.startswith("## ")]
    assert titles == [SECTION, pool.SECTION, "## What we changed"]
    again = merge_section(first, f"{pool.SECTION}\n\nv2\n", pool.SECTION)
    assert "v1" not in again and "v2" in again
    assert [line for line in again.splitlines() if line.startswith("## ")] == titles
    # run.py rewriting its own section leaves the pooled one alone
    rewritten = merge_section(again, f"{SECTION}\n\nnew tables\n")
    assert "v2" in rewritten and "new tables" in rewritten and "\ntables" not in rewritten


def test_main_writes_its_section_and_rejects_what_is_not_a_run(tmp_path, capsys):
    a, b = tmp_path / "run-a.json", tmp_path / "run-b.json"
    b.write_text(json.dumps(RUN_B))
    a.write_text(json.dumps(RUN_A))
    results = tmp_path / "RESULTS.md"
    results.write_text(f"{TITLE}\n\n{SECTION}\n\ntables\n")
    assert pool.main([str(b), str(a), "--write", "--results", str(results)]) == 0
    text = results.read_text()
    assert pool.SECTION in text and "tables" in text
    assert "`run-a.json`, `run-b.json`" in text  # sorted by when each run started
    bad = tmp_path / "other.json"
    bad.write_text('{"rows": []}')
    with pytest.raises(SystemExit) as exc:
        pool.main([str(bad)])
    assert exc.value.code == 2
    assert f"{bad}: not a raw JSON of benchmarks/run.py" in capsys.readouterr().err
