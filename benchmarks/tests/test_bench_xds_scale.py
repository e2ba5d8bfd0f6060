"""The control-plane load test's mesh and report pieces (benchmarks/xds_scale.py): the
``--calls`` ring, who a change concerns, and the RESULTS.md sections it writes."""

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from xds_scale import (
    SECTION,
    callers_of,
    calls_of,
    parse_args,
    section_title,
    services_yaml,
    svc,
    write_section,
)


@given(st.integers(2, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n - 1))))
def test_a_change_concerns_exactly_the_services_that_call_it(nk: tuple[int, int]) -> None:
    n, k = nk
    for s in range(n):
        callers = callers_of(s, n, k)
        assert callers is not None
        assert callers == [i for i in range(n) if s in calls_of(i, n, k)]
        assert len(callers) == k  # the ring: every service is called by exactly k others
        assert s not in callers
    for i in range(n):
        assert len(set(calls_of(i, n, k))) == k and i not in calls_of(i, n, k)


def test_without_calls_every_proxy_is_concerned() -> None:
    assert callers_of(3, 10, None) is None
    assert calls_of(3, 10, None) == []


def test_services_yaml_declares_calls_only_when_asked() -> None:
    plain = list(yaml.safe_load_all(services_yaml(3)))
    assert [d["metadata"]["name"] for d in plain] == [svc(0), svc(1), svc(2)]
    assert all("calls" not in d["spec"] for d in plain)
    scoped = list(yaml.safe_load_all(services_yaml(4, 2)))
    assert [d["spec"]["calls"] for d in scoped] == [
        [svc(1), svc(2)],
        [svc(2), svc(3)],
        [svc(3), svc(0)],
        [svc(0), svc(1)],
    ]


def test_calls_must_leave_room_in_the_ring(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--services", "10", "--calls", "9"]).calls == 9
    for bad in ("0", "10"):
        with pytest.raises(SystemExit):
            parse_args(["--services", "10", "--calls", bad])
        assert "--calls" in capsys.readouterr().err


def test_scoped_and_unscoped_runs_keep_their_own_sections(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# results\n\n## Data plane\n\nkept\n")
    scoped = section_title({"calls": 5})
    assert scoped != SECTION and scoped.startswith(SECTION)
    write_section(path, f"{SECTION}\n\nunscoped 1\n", SECTION)
    write_section(path, f"{scoped}\n\nscoped 1\n\n### Findings\n\nmine\n", scoped)
    write_section(path, f"{SECTION}\n\nunscoped 2\n", SECTION)
    write_section(path, f"{scoped}\n\nscoped 2\n", scoped)
    text = path.read_text()
    assert "kept" in text and "unscoped 1" not in text and "scoped 1" not in text
    assert text.count(SECTION + "\n") == 1 and text.count(scoped + "\n") == 1
    assert "unscoped 2" in text and "scoped 2" in text
    assert text.index("scoped 2") < text.index("### Findings\n\nmine")  # findings kept
