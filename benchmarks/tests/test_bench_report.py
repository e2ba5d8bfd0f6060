"""Medians, ratios to HAProxy in the same repetition, Markdown tables (benchmarks/report.py)."""

import pytest

from report import (
    CONTROL,
    NOT_YET,
    SECTION,
    TITLE,
    Case,
    Stat,
    all_cases,
    fmt_stat,
    latency_table,
    merge_section,
    per_rep_metrics,
    ratio,
    render,
    summarize,
    throughput_table,
    write_section,
)


def res(rps, p99, cpu=None, p50=0.001, quiet_p99=None):
    out = {
        "rps": rps,
        "requests": int(rps * 10),
        "errors": 0,
        "latency_s": {"p50": p50, "p90": p99 / 2, "p99": p99, "p99.9": p99 * 2},
        "latency_rps": 1000.0,
        "latency_errors": 0,
        "latency_steal_on_proxy_cpu": 0.015,
        "latency_quiet_s": {"p99": quiet_p99 if quiet_p99 is not None else p99 / 2},
        "latency_quiet_share": 0.8,
    }
    if cpu is not None:
        out.update(cpu_per_10k=cpu, cpu_busy=1.0, peak_rss_kib=2048)
    return out


CASES = [c for c in all_cases() if c.hops <= 1]
REPS = [
    {
        "direct": res(50000, 0.001),
        "haproxy-1hop": res(20000, 0.003, cpu=0.5),
        "plait-1hop": res(5000, 0.009, cpu=2.0),
        "nginx-1hop": res(25000, 0.002, cpu=0.4),
    },
    {  # a slower repetition: ratios are taken within it
        "direct": res(40000, 0.002),
        "haproxy-1hop": res(10000, 0.006, cpu=1.0),
        "plait-1hop": res(3000, 0.010, cpu=3.0),
        "nginx-1hop": {"error": "nginx-1hop-out exited"},
    },
    {
        "direct": res(45000, 0.001),
        "haproxy-1hop": res(16000, 0.002, cpu=0.5),
        "plait-1hop": res(4000, 0.005, cpu=2.5),
        "nginx-1hop": res(24000, 0.003, cpu=0.5),
    },
]


def test_all_cases_shape():
    names = [c.name for c in all_cases()]
    assert names[0] == "direct"
    assert len(names) == 10
    assert {"plait-2hop-mtls", "haproxy-2hop-mtls", "nginx-2hop-mtls"} <= set(names)
    unavailable = [c.name for c in all_cases() if c.unavailable]
    assert unavailable == ["plait-2hop-mtls"]
    assert Case("nginx-2hop-mtls", "nginx", 2, True).baseline == "haproxy-2hop-mtls"
    assert Case("direct", "direct", 0).baseline is None
    assert "mTLS" in Case("x", "nginx", 2, True).path


def test_the_control_is_a_second_haproxy_compared_with_the_first():
    names = [c.name for c in all_cases(control=True)]
    assert len(names) == 11 and names.count(CONTROL) == 1
    assert names[names.index("nginx-1hop") + 1] == CONTROL  # last of the one-hop path
    control = next(c for c in all_cases(control=True) if c.control)
    assert (control.kind, control.hops, control.mtls) == ("haproxy", 1, False)
    assert control.baseline == "haproxy-1hop"
    rep = {**REPS[0], CONTROL: res(25000, 0.004, cpu=0.4)}
    m = per_rep_metrics(rep, control)
    assert m is not None
    assert m["x_rps"] == pytest.approx(25000 / 20000)
    assert m["x_added_p99"] == pytest.approx((0.004 - 0.001) / (0.003 - 0.001))
    assert m["x_cpu"] == pytest.approx(0.4 / 0.5)
    # a raw run file from before the control (no "control" key) still loads
    assert Case(**{"name": "direct", "kind": "direct", "hops": 0}).control is False


def test_per_rep_ratios_use_the_same_repetition():
    plait = Case("plait-1hop", "plait", 1)
    m = per_rep_metrics(REPS[1], plait)
    assert m["x_rps"] == pytest.approx(0.3)
    assert m["added_p99"] == pytest.approx(0.008)
    assert m["x_added_p99"] == pytest.approx(0.008 / 0.004)
    assert m["x_cpu"] == pytest.approx(3.0)
    assert m["rss_mib"] == 2.0
    # steal-free: (0.010 / 2 - 0.002 / 2) / (0.006 / 2 - 0.002 / 2)
    assert m["added_quiet_p99"] == pytest.approx(0.004)
    assert m["x_added_quiet_p99"] == pytest.approx(2.0)
    assert m["quiet_share"] == 0.8


def test_a_run_without_steal_free_latency_has_no_ratio():
    rep = {name: dict(r) for name, r in REPS[0].items()}
    rep["direct"]["latency_quiet_s"] = {}  # too few steal-free requests
    m = per_rep_metrics(rep, Case("plait-1hop", "plait", 1))
    assert m["quiet_p99"] == pytest.approx(0.0045)
    assert m["added_quiet_p99"] is None
    assert m["x_added_quiet_p99"] is None
    base = per_rep_metrics(rep, Case("haproxy-1hop", "haproxy", 1))
    assert base["x_added_quiet_p99"] is None  # the baseline too: no value, no 1.00×
    assert base["x_added_p99"] == 1.0


def test_summary_medians_and_ranges():
    rows = {r.case.name: r for r in summarize(CASES, REPS)}
    plait = rows["plait-1hop"].stats
    assert plait["rps"] == Stat(4000, 3000, 5000, 3)
    # per-rep throughput ratios 0.25, 0.30, 0.25 -> median 0.25
    assert plait["x_rps"].median == pytest.approx(0.25)
    assert plait["x_rps"].hi == pytest.approx(0.30)
    # added p99: 8/2 = 4.0, 8/4 = 2.0, 4/1 = 4.0
    assert plait["x_added_p99"].median == pytest.approx(4.0)
    assert plait["x_added_p99"].lo == pytest.approx(2.0)
    assert rows["haproxy-1hop"].stats["x_rps"].median == 1.0
    nginx = rows["nginx-1hop"]
    assert nginx.reps == 2
    assert nginx.failures == ["nginx-1hop-out exited"]
    assert rows["direct"].stats["x_rps"] is None
    assert rows["direct"].stats["cpu_per_10k"] is None


def test_ratio_guards():
    assert ratio(1.0, 0.0) is None
    assert ratio(1.0, -1.0) is None
    assert ratio(None, 1.0) is None
    assert ratio(3.0, 2.0) == 1.5


def test_fmt_stat():
    assert fmt_stat(None) == "—"
    assert fmt_stat(Stat(12345.4, 11900, 12800, 3)) == "12,345 (11,900–12,800)"
    assert fmt_stat(Stat(0.25, 0.25, 0.3, 3), digits=2, suffix="×") == "0.25× (0.25×–0.30×)"
    assert fmt_stat(Stat(0.0012, 0.0012, 0.0012, 1), scale=1000, digits=2) == "1.20"


def test_tables_and_report():
    cases = all_cases()
    rows = summarize(cases, REPS)
    t = throughput_table(rows)
    assert t.splitlines()[0].startswith("| case | path | throughput req/s | × HAProxy")
    assert len(t.splitlines()) == 2 + len(cases)
    assert NOT_YET in t
    assert "| `haproxy-2hop` | load → outbound → inbound → upstream | failed: no result" in t
    lat = latency_table(rows)
    assert "| `plait-1hop` | 1.00 |" in lat
    assert "| achieved req/s | CPU 0 steal | steal-free p99 ms |" in lat.splitlines()[0]
    # plait-1hop, rep 1: steal-free p99s 4.5 ms, direct 0.5 ms, HAProxy 1.5 ms -> 4.0 / 1.0
    assert (
        "| 1,000 | 1.5% | 4.50 (2.50–5.00) | 4.00 (2.00–4.00) | 4.00× (2.00×–4.00×) | 80% |" in lat
    )
    text = render(
        rows,
        machine={"CPU": "test CPU"},
        settings={
            "reps": 3,
            "duration": 8,
            "latency_duration": 8,
            "connections": 50,
            "rate": 1000,
            "clients": 10,
        },
        commands=["benchmarks/run.py --reps 3"],
        date="2026-01-01 00:00 UTC",
        raw_file="out/run-x.json",
        notes=["a note"],
    )
    assert text.startswith(SECTION + "\n")
    assert "\n## " not in text  # one section: everything below is ###
    assert "| CPU | test CPU |" in text
    assert "- a note" in text
    assert "benchmarks/run.py --reps 3" in text
    assert "### Saturation throughput (wrk, 50 keep-alive connections, 8 s)\n" in text
    sliced = render(
        rows,
        machine={},
        settings={
            "reps": 3,
            "duration": 8,
            "slice": 2,
            "latency_duration": 8,
            "connections": 50,
            "rate": 1000,
            "clients": 10,
        },
        commands=[],
        date="2026-01-01 00:00 UTC",
        raw_file="out/run-x.json",
        notes=[],
    )
    assert (
        "(wrk, 50 keep-alive connections, 8 s per case, in 2-s runs alternated with the "
        "other cases of its path)" in sliced
    )


OTHER = "## Control plane at scale\n\nxds table\n\n### Findings\n\nkept\n"


def test_merge_into_nothing():
    out = merge_section("", SECTION + "\n\nmine\n")
    assert out.startswith(TITLE + "\n")
    assert out.count(SECTION) == 1
    assert out.rstrip().endswith("mine")


def test_merge_keeps_other_sections_and_replaces_only_its_own():
    first = merge_section(OTHER, SECTION + "\n\nold\n")
    assert first.index(SECTION) < first.index("## Control plane at scale")
    again = merge_section(first, SECTION + "\n\nnew\n```sh\n## not a heading\n```\n")
    assert "old" not in again
    assert "new" in again
    assert again.count(SECTION) == 1
    assert again.endswith(OTHER)
    # a section written after ours by another script stays after it
    third = merge_section(again + "\n## Zed\n\nz\n", SECTION + "\n\nnewer\n")
    assert third.index("newer") < third.index("## Control plane") < third.index("## Zed")
    assert "## not a heading" not in third


def test_merge_replaces_the_legacy_layout():
    legacy = (
        "# plait benchmark results\n\nGenerated by `benchmarks/run.py` on X.\n\n"
        "## Saturation throughput (wrk)\n\nt\n\n## Latency at a fixed 1000 req/s\n\nl\n\n"
        "## Notes\n\nn\n\n## Machine\n\nm\n\n## Commands\n\n```sh\n# c\n```\n\n" + OTHER
    )
    out = merge_section(legacy, SECTION + "\n\nmine\n")
    assert "Generated by `benchmarks/run.py` on X" not in out
    assert "## Saturation" not in out and "## Machine" not in out
    assert out.startswith(TITLE)
    assert out.index(SECTION) < out.index("## Control plane at scale")
    assert out.endswith(OTHER)


def test_write_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(OTHER)
    write_section(path, SECTION + "\n\nmine\n")
    assert OTHER in path.read_text()
    assert list(tmp_path.iterdir()) == [path]
