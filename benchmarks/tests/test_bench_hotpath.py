"""The in-process request-path benchmark (benchmarks/hotpath.py) measures real requests."""

import pytest
from plait.proxy import native

import hotpath

# --breakdown patches Python functions: it runs on the interpreted request path (make test
# runs this file again with PLAIT_PURE=1).
interpreted_only = pytest.mark.skipif(
    not native.STATE.startswith("interpreted"),
    reason="--breakdown needs the interpreted request path (PLAIT_PURE=1)",
)


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


@interpreted_only
def test_breakdown_variants_name_existing_attributes() -> None:
    # a variant whose target moved would otherwise measure nothing
    for patches, _options in hotpath.VARIANTS.values():
        for module, dotted, value in patches:
            obj, name, old = hotpath._patch(module, dotted, value)
            setattr(obj, name, old)


@interpreted_only
def test_breakdown_prices_every_variant() -> None:
    costs = hotpath.breakdown(100, 1)
    assert list(costs) == list(hotpath.VARIANTS)
    assert all(us > 0 for us in costs.values())


def test_breakdown_refuses_the_compiled_request_path(capsys: pytest.CaptureFixture[str]) -> None:
    if native.STATE.startswith("interpreted"):
        assert hotpath.main(["--breakdown", "--requests", "50", "--repeat", "1"]) == 0
        return
    with pytest.raises(SystemExit):
        hotpath.main(["--breakdown"])
    assert "run with PLAIT_PURE=1" in capsys.readouterr().err


def test_inbound_rig_relays_what_the_outbound_proxy_sends() -> None:
    rig = hotpath.InboundRig()
    try:
        assert len(set(rig.requests)) == hotpath.RING  # a fresh request id each
        first = rig.requests[0]
        assert first.startswith(b"GET / HTTP/1.1\r\nhost: bench\r\nvia: 1.1 bench-out\r\n")
        assert b"\r\nx-request-id: " in first
        slot = rig.dp.listeners[hotpath.INBOUND]
        assert slot.direction == "inbound" and slot.service == "bench"
        route = rig.dp.snapshot.config.listeners[hotpath.INBOUND].route_table  # inline, "*"
        assert route is not None and route.virtual_hosts[0].domains == ("*",)
        assert route.virtual_hosts[0].routes[0].timeout is None  # the caller owns the deadline
        for _ in range(3):
            rig.one()
            rig.check()
        rig.writer.flush()
        line = rig.log.getvalue()
        assert b'"direction":"inbound"' in line and b'"destination":"bench"' in line
        rid = rig.sent.partition(b"x-request-id: ")[2][:32]
        assert b'"request_id":"' + rid + b'"' in line  # the caller's id, not a new one
    finally:
        rig.close()


def test_two_hop_outbound_rig_gets_the_inbound_proxys_answer() -> None:
    rig = hotpath.TwoHopOutboundRig()
    try:
        assert b"\r\nvia: 1.1 bench-in\r\n" in rig.response
        rig.one()
        rig.check()
    finally:
        rig.close()


def test_every_hop_measures_and_breaks_down() -> None:
    for hop in hotpath.RIGS:
        assert len(hotpath.measure(50, repeat=1, hop=hop)) == 1
    argv = ["--hop", "inbound", "--requests", "50", "--repeat", "1", "--wall-step-us", "20"]
    assert hotpath.main(argv) == 0
    request, response = hotpath.canned_heads("inbound")
    assert request.via == b"1.1 bench-out" and request.request_id is not None
    assert response.status == 200
