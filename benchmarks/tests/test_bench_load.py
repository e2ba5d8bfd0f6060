"""wrk/h2load command lines and parsers, and the percentile math (benchmarks/load.py)."""

from pathlib import Path

import pytest

from load import (
    durations_within,
    h2load_argv,
    latency_summary,
    merge_h2load,
    merge_wrk,
    parse_duration_s,
    parse_h2load,
    parse_h2load_log,
    parse_h2load_rows,
    parse_wrk,
    percentile,
    pname,
    wrk_argv,
)

WRK_OK = """\
Running 3s test @ http://127.0.0.1:56637/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.05ms    1.68ms  10.18ms   83.01%
    Req/Sec    27.84k     1.98k   31.85k    76.67%
  Latency Distribution
     50%    1.06ms
     75%    3.12ms
     90%    4.90ms
     99%    7.38ms
  83220 requests in 3.01s, 90.71MB read
Requests/sec:  27672.94
Transfer/sec:     30.16MB
"""

WRK_ERRORS = """\
Running 10s test @ http://127.0.0.1:1/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   573.00us    1.00ms   1.20s    99.00%
    Req/Sec     1.00k     0.10k    1.20k    70.00%
  Latency Distribution
     50%  573.00us
     75%  800.00us
     90%    1.00ms
     99%    1.20s
  10000 requests in 1.00m, 1.00MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:    166.50
Transfer/sec:     17.07KB
"""

H2LOAD = """\
starting benchmark...
spawning thread #0: 10 total client(s). Timing-based test with 0s of warm-up time and 2s \
of main duration for measurements.
Main benchmark duration is over for thread #0. Stopping all clients.

finished in 2.00s, 1000.00 req/s, 1.11MB/s
requests: 2000 total, 2010 started, 2000 done, 1990 succeeded, 10 failed, 1 errored, 2 timeout
status codes: 1990 2xx, 0 3xx, 3 4xx, 7 5xx
traffic: 2.23MB (2334000) total, 203.13KB (208000) headers (space savings 0.00%), 1.95MB data
                     min         max         mean         sd        +/- sd
time for request:      128us      9.40ms      1.22ms      1.72ms    81.90%
"""


def test_wrk_report_is_parsed():
    r = parse_wrk(WRK_OK)
    assert r["requests"] == 83220
    assert r["seconds"] == pytest.approx(3.01)
    assert r["rps"] == pytest.approx(27672.94)
    assert r["errors"] == 0
    assert r["latency_s"] == pytest.approx(
        {"p50": 1.06e-3, "p75": 3.12e-3, "p90": 4.90e-3, "p99": 7.38e-3}
    )


def test_wrk_errors_are_counted():
    r = parse_wrk(WRK_ERRORS)
    assert r["socket_errors"] == {"connect": 1, "read": 2, "write": 3, "timeout": 4}
    assert r["non_2xx"] == 5
    assert r["errors"] == 15
    assert r["seconds"] == 60.0
    assert r["latency_s"]["p50"] == pytest.approx(573e-6)
    assert r["latency_s"]["p99"] == pytest.approx(1.2)


def test_wrk_slices_merge_into_one_run():
    """A saturation run cut into slices: requests, seconds and errors add up, rps is the
    total over the total time (not the mean of the slices' rates), and wrk's percentiles,
    which do not add up, stay per slice."""
    ok, errs = parse_wrk(WRK_OK), parse_wrk(WRK_ERRORS)
    m = merge_wrk([ok, errs])
    assert m["requests"] == ok["requests"] + errs["requests"]
    assert m["seconds"] == pytest.approx(63.01)
    assert m["rps"] == pytest.approx(m["requests"] / 63.01)
    assert m["errors"] == 15 and m["non_2xx"] == 5
    assert m["socket_errors"] == {"connect": 1, "read": 2, "write": 3, "timeout": 4}
    assert m["latency_s"] == {}
    assert m["slices_latency_s"] == [ok["latency_s"], errs["latency_s"]]
    assert m["slices_rps"] == [ok["rps"], errs["rps"]]
    one = merge_wrk([ok])
    assert one["latency_s"] == ok["latency_s"] and one["requests"] == ok["requests"]
    with pytest.raises(ValueError, match="no wrk results"):
        merge_wrk([])


def test_h2load_slices_merge_into_one_run():
    one = parse_h2load(H2LOAD)
    one["log_non_ok"] = 2
    m = merge_h2load([one, one])
    assert m["seconds"] == pytest.approx(2 * one["seconds"])
    assert m["rps"] == pytest.approx(one["rps"])
    assert m["requests"] == {k: 2 * v for k, v in one["requests"].items()}
    assert m["status"] == {k: 2 * v for k, v in one["status"].items()}
    assert m["errors"] == 2 * one["errors"] and m["log_non_ok"] == 4
    assert m["slices_rps"] == [one["rps"], one["rps"]]
    with pytest.raises(ValueError, match="no h2load results"):
        merge_h2load([])


def test_wrk_garbage_is_an_error():
    with pytest.raises(ValueError, match="cannot parse wrk"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_h2load_summary_is_parsed():
    r = parse_h2load(H2LOAD)
    assert r["rps"] == 1000.0
    assert r["seconds"] == 2.0
    assert r["requests"]["succeeded"] == 1990
    assert r["status"] == {"2xx": 1990, "3xx": 0, "4xx": 3, "5xx": 7}
    assert r["errors"] == 10 + 1 + 2 + 3 + 7


def test_h2load_log_keeps_ok_durations_and_counts_the_rest():
    log = "1795708730998974\t200\t475\n1795708730998983\t-1\t543\n1\t304\t1000\n\n2\t503\t9\n"
    ok, bad = parse_h2load_log(log)
    assert ok == pytest.approx([475e-6, 1000e-6])
    assert bad == 2


def test_durations_within_keep_requests_that_began_and_ended_in_one_window():
    log = "\n".join(
        [
            "10000000\t200\t1000",  # 10.0-10.001 s: kept
            "10999500\t200\t1000",  # ends 11.0005, after the first window: dropped
            "11200000\t200\t2000",  # between the windows: dropped
            "12000000\t503\t100",  # not a 2xx/3xx: not counted
            "12100000\t200\t3000",  # kept
            "11999000\t200\t500",  # unsorted in the log, kept
            "14000000\t200\t100",  # after the last window: dropped
        ]
    )
    rows = parse_h2load_rows(log)
    kept, ok = durations_within(rows, [(10.0, 11.0), (11.5, 13.0)])
    assert kept == pytest.approx([1e-3, 500e-6, 3e-3])
    assert ok == 6
    assert durations_within(rows, []) == ([], 6)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("573.00us", 573e-6), ("1.82ms", 1.82e-3), ("2.02s", 2.02), ("1.5m", 90.0)],
)
def test_durations(text, seconds):
    assert parse_duration_s(text) == pytest.approx(seconds)


def test_duration_refuses_nonsense():
    with pytest.raises(ValueError):
        parse_duration_s("fast")


def test_percentile_interpolates_linearly_between_ranks():
    xs = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 100) == 4.0
    assert percentile(xs, 50) == 2.5
    assert percentile(xs, 25) == pytest.approx(1.75)
    assert percentile([7.0], 99.9) == 7.0


def test_percentile_matches_the_classic_definition_on_a_long_series():
    xs = [float(i) for i in range(1, 1001)]  # 1..1000
    assert percentile(xs, 99) == pytest.approx(990.01)
    assert percentile(xs, 99.9) == pytest.approx(999.001)


@pytest.mark.parametrize("bad", [-1, 100.1])
def test_percentile_range(bad):
    with pytest.raises(ValueError):
        percentile([1.0], bad)


def test_percentile_of_nothing():
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latency_summary_names():
    s = latency_summary([0.001] * 10)
    assert set(s) == {"p50", "p90", "p99", "p99.9", "samples"}
    assert s["samples"] == 10
    assert pname(99.9) == "p99.9"
    assert pname(50) == "p50"


def test_command_lines():
    assert wrk_argv("http://h/", host="bench", connections=50, threads=1, duration=8) == [
        "wrk",
        "-t1",
        "-c50",
        "-d8s",
        "--latency",
        "-H",
        "Host: bench",
        "http://h/",
    ]
    argv = h2load_argv(
        "http://h/", host="bench", clients=10, rate=1000, duration=8, log_file=Path("/x")
    )
    assert argv[:8] == ["h2load", "--h1", "-c", "10", "-t", "1", "--rps", "100"]
    assert argv[-3:-1] == ["-H", ":authority: bench"]
    assert argv[10:12] == ["--log-file", "/x"]
    with pytest.raises(ValueError, match="multiple"):
        h2load_argv("http://h/", host=None, clients=3, rate=1000, duration=1, log_file=Path("/x"))
