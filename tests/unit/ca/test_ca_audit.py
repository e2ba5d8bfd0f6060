"""The audit log: JSON lines, appended, mode 0600, None fields left out."""

from __future__ import annotations

import json
import os
import stat

from ca_fixtures import NOW

from plait.ca.audit import AuditLog, audit_line


def test_line_format():
    line = audit_line("refused", NOW, service="orders", reason="token expired", serial=None)
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {
        "time": "2026-03-01T12:00:00.000000Z",
        "event": "refused",
        "service": "orders",
        "reason": "token expired",
    }


def test_newlines_in_values_cannot_forge_lines():
    line = audit_line("refused", NOW, reason='x\n{"event":"issued"}')
    assert line.count("\n") == 1


def test_appends_with_mode_0600(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    log.record("issued", NOW, service="orders", serial="ab")
    log.record("refused", NOW, service="orders", reason="token unknown")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    events = [json.loads(x)["event"] for x in path.read_text().splitlines()]
    assert events == ["issued", "refused"]
