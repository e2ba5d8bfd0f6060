"""benchmarks/tls_roundtrip.py: real round trips over the proxy's TLS transport."""

from pathlib import Path

import uvloop

import tls_roundtrip


def test_round_trips_complete_over_the_proxies_contexts(tmp_path: Path) -> None:
    server_ctx, client_ctx = tls_roundtrip.contexts(tmp_path)
    assert uvloop.run(tls_roundtrip.round_trips(server_ctx, client_ctx, 300)) == 300


def test_main_reports_cpu_per_round_trip(capsys) -> None:  # type: ignore[no-untyped-def]
    assert tls_roundtrip.main(["--trips", "200"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("200 round trips in ")
    assert "µs per round trip (both ends); request path " in out
