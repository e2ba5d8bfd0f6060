"""/proc parsers (benchmarks/procs.py)."""

import os

from procs import (
    cpu_seconds,
    parse_cpu_times,
    parse_proc_stat,
    parse_vm_hwm,
    peak_rss_kib,
    steal_share,
)

STAT = "3627 (we ird) name)) R 3559 3559 24762 0 -1 4194304 101 0 0 0 17 5 0 0 20 0 1 0 176301"


def test_proc_stat_counts_fields_after_the_last_paren():
    assert parse_proc_stat(STAT) == (3559, 17, 5)


def test_vm_hwm():
    text = "Name:\tnginx\nVmPeak:\t  10 kB\nVmHWM:\t   15872 kB\nVmRSS:\t 15000 kB\n"
    assert parse_vm_hwm(text) == 15872
    assert parse_vm_hwm("Name:\tkthreadd\n") is None


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
    assert steal_share(before, after, 0) == 0.25
    assert steal_share(before, after, 1) is None  # no ticks between the readings
    assert steal_share(before, after, 2) is None


def test_readers_on_this_process():
    assert cpu_seconds([os.getpid()]) > 0
    assert peak_rss_kib([os.getpid()]) > 1000
