"""Collapsed-stack summaries of py-spy output (benchmarks/profile_plait.py)."""

from profile_plait import frame_key, parse_collapsed, tally

M = "<module> (plait/proxy/__main__.py:7)"
R = "run (asyncio/runners.py:118)"
RAW = "\n".join(
    [
        f"{M};{R};data_received (plait/proxy/http1.py:200) 30",
        f"{M};{R};data_received (plait/proxy/http1.py:210);parse (plait/proxy/checks.py:50) 50",
        f"{M};write (plait/proxy/accesslog.py:9) 20",
        "garbage line",
    ]
)


def test_parse_collapsed():
    stacks = parse_collapsed(RAW.splitlines())
    assert len(stacks) == 3
    assert stacks[1][1] == 50
    assert stacks[1][0][-1] == "parse (plait/proxy/checks.py:50)"


def test_frame_key_drops_line_numbers_and_prefixes():
    assert frame_key("f (/x/site-packages/a/b.py:3)", ("/x/site-packages/",)) == "f (a/b.py)"
    assert frame_key("<native>") == "<native>"


def test_tally_self_inclusive_and_files():
    self_c, incl, files, total = tally(parse_collapsed(RAW.splitlines()))
    assert total == 100
    assert self_c["parse (plait/proxy/checks.py)"] == 50
    assert self_c["data_received (plait/proxy/http1.py)"] == 30
    # inclusive counts a function once per stack even when two lines of it appear
    assert incl["data_received (plait/proxy/http1.py)"] == 80
    assert incl["<module> (plait/proxy/__main__.py)"] == 100
    assert files["plait/proxy/checks.py"] == 50
