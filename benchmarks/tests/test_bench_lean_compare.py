"""lean_compare.py --rate: added p99 against direct in the same round, pooled as sums."""

import pytest

from lean_compare import rate_table


def run(p99_ms, user=10.0, system=20.0, p50_ms=0.5):
    return {"p50": p50_ms / 1e3, "p99": p99_ms / 1e3, "user": user, "system": system, "failed": 0}


def test_added_p99_is_taken_per_round_and_pooled_as_sums():
    runs = {
        "direct": [run(0.5), run(0.4)],
        # added 0.3 and 0.1 (sum 0.4); lean 0.2 and 0.4 (sum 0.6): pooled 1.5x, although
        # the same-round ratios (0.67x and 4x) have a median of 2.33x
        "haproxy": [run(0.8, user=20, system=20), run(0.5, user=20, system=20)],
        "lean": [run(0.7, user=30, system=30), run(0.8, user=20, system=20)],
    }
    table = rate_table(runs).splitlines()
    assert table[0].startswith("| case | p50 ms | p99 ms | added p99 ms |")
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in table[2:]}
    assert rows["direct"] == "| direct | 0.500 | 0.450 | — | — | 10.0 | 20.0 | — |"
    assert " | 1.00× | " in rows["haproxy"]
    lean = rows["lean"].split(" | ")
    assert lean[3] == "0.300"  # the median of 0.2 and 0.4 ms
    assert lean[4] == "1.50×"
    # CPU: same-round ratios 60/40 and 40/40, median 1.25x
    assert lean[7] == "1.25× |"


def test_a_round_missing_for_a_case_is_an_error():
    runs = {"direct": [run(0.5), run(0.4)], "haproxy": [run(0.8)]}
    with pytest.raises(ValueError):
        rate_table(runs)


def test_a_tree_that_is_not_a_checkout_exits_2_before_starting_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lean_compare import main

    with pytest.raises(SystemExit) as exc:
        main(["--rate", "1000", "--tree", "/nonexistent"])
    assert exc.value.code == 2
    assert "--tree /nonexistent: no src/plait there" in capsys.readouterr().err
