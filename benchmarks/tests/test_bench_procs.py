"""/proc parsers (benchmarks/procs.py)."""

import os
import threading
import time

from procs import (
    TickSampler,
    cpu_seconds,
    ctxt_switches,
    parse_cpu_times,
    parse_ctxt_switches,
    parse_proc_stat,
    parse_vm_hwm,
    peak_rss_kib,
    quiet_windows,
    steal_share,
    ticks_spent,
)

STAT = "3627 (we ird) name)) R 3559 3559 24762 0 -1 4194304 101 0 0 0 17 5 0 0 20 0 1 0 176301"


def test_proc_stat_counts_fields_after_the_last_paren():
    assert parse_proc_stat(STAT) == (3559, 17, 5)


def test_vm_hwm():
    text = "Name:\tnginx\nVmPeak:\t  10 kB\nVmHWM:\t   15872 kB\nVmRSS:\t 15000 kB\n"
    assert parse_vm_hwm(text) == 15872
    assert parse_vm_hwm("Name:\tkthreadd\n") is None


def test_ctxt_switches_parsed_and_read_per_thread():
    text = (
        "Name:\tpython\nThreads:\t2\nvoluntary_ctxt_switches:\t1542\n"
        "nonvoluntary_ctxt_switches:\t37\n"
    )
    assert parse_ctxt_switches(text) == (1542, 37)
    assert parse_ctxt_switches("Name:\tx\n") == (0, 0)
    # A second thread that sleeps 20 times: its switches count in the process's.
    before = ctxt_switches([os.getpid()])[0]
    slept, done = threading.Event(), threading.Event()

    def sleeper() -> None:
        for _ in range(20):
            time.sleep(0.001)
        slept.set()
        done.wait()

    t = threading.Thread(target=sleeper)
    t.start()
    try:
        assert slept.wait(10)
        assert ctxt_switches([os.getpid()])[0] >= before + 20
    finally:
        done.set()
        t.join()
    assert ctxt_switches([2**22 + 12345]) == (0, 0)  # no such process


def test_cpu_times_per_cpu():
    text = (
        "cpu  174236 0 30780 143015 1064 0 2236 94 0 0\n"
        "cpu0 85045 0 15166 73918 242 0 1237 46 0 0\n"
        "cpu1 89190 0 15613 69097 822 0 999 48 0 0\n"
        "intr 1 2 3\n"
    )
    t = parse_cpu_times(text)
    assert set(t) == {0, 1}
    total0 = 85045 + 15166 + 73918 + 242 + 1237 + 46
    assert t[0] == (total0 - 73918 - 242, total0, 46)


def test_steal_share_between_two_readings():
    before = {0: (100, 1000, 10), 1: (5, 1000, 0)}
    after = {0: (300, 1200, 60), 1: (5, 1000, 0)}
    spent = ticks_spent([(before, after)])
    assert steal_share(spent, 0) == 0.25
    assert steal_share(spent, 1) is None  # no ticks between the readings
    assert steal_share(spent, 2) is None


def test_ticks_spent_add_up_over_spans():
    """A saturation run in slices: the busy, total and steal ticks of each span, summed;
    a CPU missing at either end of a span counts nothing for that span."""
    spans = [
        ({0: (100, 1000, 10), 1: (5, 1000, 0)}, {0: (300, 1200, 60), 1: (55, 1100, 0)}),
        ({0: (400, 1300, 60)}, {0: (450, 1400, 70), 1: (60, 1200, 1)}),
    ]
    assert ticks_spent(spans) == {0: (250, 300, 60), 1: (50, 100, 0)}
    assert ticks_spent([]) == {}


def test_readers_on_this_process():
    assert cpu_seconds([os.getpid()]) > 0
    assert peak_rss_kib([os.getpid()]) > 1000


def ticks(steal0, steal1):
    return {0: (0, 100, steal0), 1: (0, 100, steal1)}


def test_quiet_windows_are_the_spans_without_steal_on_any_given_cpu():
    samples = [
        (10.0, ticks(0, 0)),
        (10.5, ticks(0, 0)),
        (11.0, ticks(0, 0)),  # 10.0-11.0 quiet, merged
        (11.5, ticks(2, 0)),  # CPU 0 stolen from
        (12.0, ticks(2, 0)),  # quiet
        (12.5, ticks(2, 1)),  # CPU 1 stolen from
        (13.0, ticks(2, 1)),  # quiet
    ]
    assert quiet_windows(samples, (0, 1)) == [(10.0, 11.0), (11.5, 12.0), (12.5, 13.0)]
    assert quiet_windows(samples, (0,)) == [(10.0, 11.0), (11.5, 13.0)]
    assert quiet_windows(samples, (2,)) == []  # a CPU the samples do not have
    assert quiet_windows(samples[:1], (0,)) == []


def test_tick_sampler_samples_on_entry_while_running_and_on_exit():
    with TickSampler(0.05) as sampler:
        time.sleep(0.3)
    times = [t for t, _ in sampler.samples]
    assert len(times) >= 4
    assert times == sorted(times)
    assert times[-1] - times[0] >= 0.3
    assert all(0 in t for _, t in sampler.samples)
