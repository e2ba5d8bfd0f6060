"""proxy_instructions.py: callgrind's totals, h2load's arguments, the table, a real run."""

import shutil
from pathlib import Path

import pytest

import proxy_instructions as pi


def test_the_total_is_read_from_summary_or_totals() -> None:
    assert pi.callgrind_total("events: Ir\nfl=x\n0 5\nsummary: 123456\ntotals: 123456\n") == 123456
    assert pi.callgrind_total("events: Ir\ntotals: 42\n") == 42
    with pytest.raises(ValueError, match="summary"):
        pi.callgrind_total("events: Ir\nfl=x\n0 5\n")


def test_the_proxy_runs_under_callgrind_with_counting_off_until_switched_on() -> None:
    argv = pi.callgrind_argv(Path("/tmp/x"))
    assert argv[0] == "valgrind" and "--tool=callgrind" in argv
    assert "--instr-atstart=no" in argv
    assert "--callgrind-out-file=/tmp/x/callgrind.%p" in argv


def test_h2load_sends_a_count_of_requests_to_the_service() -> None:
    argv = pi.h2load_count_argv("http://127.0.0.1:9/", 4000)
    assert argv[:2] == ["h2load", "--h1"]
    assert argv[argv.index("-n") + 1] == "4000"
    assert ":authority: bench" in argv and argv[-1] == "http://127.0.0.1:9/"
    with pytest.raises(ValueError):
        pi.h2load_count_argv("http://127.0.0.1:9/", 0)


def test_the_table_gives_ratios_to_haproxy_only_when_it_was_measured() -> None:
    rows = pi.table({"haproxy": 48000.0, "plait": 33000.0}).splitlines()
    assert rows[2] == "| haproxy | 48,000 | 1.00× |"
    assert rows[3] == "| plait | 33,000 | 0.69× |"
    assert pi.table({"plait": 33000.0}).splitlines()[2] == "| plait | 33,000 | — |"


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        pi.main(["--requests", "0"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        pi.main(["--tree", "/nonexistent"])
    assert exc.value.code == 2
    assert "/nonexistent" in capsys.readouterr().err or shutil.which("valgrind") is None


TOOLS = ("valgrind", "callgrind_control", "nginx", "haproxy", "h2load", "taskset")


@pytest.mark.skipif(
    not all(shutil.which(t) for t in TOOLS), reason=f"needs {', '.join(TOOLS)} installed"
)
def test_a_real_haproxy_and_plait_are_counted(capsys: pytest.CaptureFixture[str]) -> None:
    assert pi.main(["--requests", "300"]) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in out.splitlines()}
    assert rows["haproxy"].endswith("| 1.00× |")
    for name in ("haproxy", "plait"):  # thousands of instructions per request, at least
        per_request = int(rows[name].split(" | ")[1].replace(",", ""))
        assert 1_000 < per_request < 10_000_000
