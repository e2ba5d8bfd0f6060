"""`plait certs` flags and helpers (pure functions of plait.cli.ca_cmds)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from plait.cli.ca_cmds import cert_flags, current_certs, parse_time, relative

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def row(start: datetime, hours: float = 24, **extra):
    end = start + timedelta(hours=hours)
    return {
        "spiffe_id": "spiffe://plait.local/svc/orders",
        "node": "host-a",
        "not_before": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "old_root": False,
        **extra,
    }


def test_flags():
    assert cert_flags(row(NOW - timedelta(hours=1)), NOW) == []
    assert cert_flags(row(NOW - timedelta(hours=19)), NOW) == ["EXPIRING"]
    assert cert_flags(row(NOW - timedelta(hours=25)), NOW) == ["EXPIRED"]
    assert cert_flags(row(NOW - timedelta(hours=20), old_root=True), NOW) == [
        "EXPIRING",
        "OLD-ROOT",
    ]


def test_current_certs_keeps_the_newest_per_identity():
    old = row(NOW - timedelta(hours=13), serial="a")
    new = row(NOW - timedelta(hours=1), serial="b")
    other = row(NOW - timedelta(hours=2), serial="c", node="host-b")
    assert [c["serial"] for c in current_certs([new, old, other])] == ["b", "c"]


def test_relative_and_parse():
    assert parse_time("2026-03-01T12:00:00Z") == NOW
    assert parse_time("junk") is None and parse_time(None) is None
    assert relative(NOW + timedelta(hours=3, minutes=5), NOW) == "in 3h05m"
    assert relative(NOW - timedelta(minutes=2), NOW) == "2m00s ago"
    assert relative(NOW + timedelta(days=2, hours=1), NOW) == "in 2d1h"
    assert relative(None, NOW) == "?"
