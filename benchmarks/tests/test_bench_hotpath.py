"""The in-process request-path benchmark (benchmarks/hotpath.py) measures real requests."""

import pytest

import hotpath


def test_rig_relays_a_request_and_its_response() -> None:
    rig = hotpath.Rig()
    try:
        rig.one()
        rig.check()
        assert rig.up.writes == 1 and rig.down.writes == 1
        rig.writer.flush()
        line = rig.log.getvalue()
        assert b'"destination":"bench"' in line and b'"status":200' in line
        rig.one()  # the same pooled upstream connection serves the next request
        rig.check()
        assert rig.up.writes == 2
    finally:
        rig.close()


def test_check_refuses_a_wrong_answer() -> None:
    rig = hotpath.Rig()
    try:
        rig.one()
        rig.server.data_received(b"GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n")  # no route: 404
        assert rig.down.last.startswith(b"HTTP/1.1 404 ")
        with pytest.raises(SystemExit, match="client got"):
            rig.check()
    finally:
        rig.close()


def test_measure_reports_per_request_times() -> None:
    times = hotpath.measure(200, repeat=2)
    assert len(times) == 2 and all(0 < t < 10_000 for t in times)


def test_breakdown_variants_name_existing_attributes() -> None:
    # a variant whose target moved would otherwise measure nothing
    for patches, _options in hotpath.VARIANTS.values():
        for module, dotted, value in patches:
            obj, name, old = hotpath._patch(module, dotted, value)
            setattr(obj, name, old)


def test_breakdown_prices_every_variant() -> None:
    costs = hotpath.breakdown(100, 1)
    assert list(costs) == list(hotpath.VARIANTS)
    assert all(us > 0 for us in costs.values())
