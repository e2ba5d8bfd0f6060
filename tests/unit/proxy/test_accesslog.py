"""Access log lines and the buffered writer."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.proxy.accesslog import KEYS, AccessLog, BufferedWriter, format_record

RECORD: dict[str, Any] = {
    "node": "host-a",
    "details": "",
    "error": "",
    "bytes_out": 512,
    "bytes_in": 0,
    "duration_ms": 1.25,
    "status": 200,
    "upstream": "10.0.0.2:8080",
    "path": "/orders?id=1",
    "method": "GET",
    "destination": "orders",
    "source": "web",
    "direction": "outbound",
    "request_id": "3f2a",
    "time": 1700000000.5,
}


def test_line_has_fixed_key_order_and_compact_separators() -> None:
    lines: list[str] = []
    AccessLog(lines.append).log(RECORD)
    assert lines == [
        '{"time":1700000000.5,"request_id":"3f2a","direction":"outbound","source":"web",'
        '"destination":"orders","method":"GET","path":"/orders?id=1",'
        '"upstream":"10.0.0.2:8080","status":200,"duration_ms":1.25,"bytes_in":0,'
        '"bytes_out":512,"error":"","details":"","node":"host-a"}\n'
    ]
    assert list(json.loads(lines[0])) == list(KEYS)


def test_missing_keys_are_null_and_extra_keys_follow() -> None:
    line = format_record({"status": 503, "zeta": 1, "error": "connection_refused", "alpha": 2})
    parsed = json.loads(line)
    assert list(parsed) == [*KEYS, "zeta", "alpha"]
    assert parsed["time"] is None and parsed["status"] == 503
    assert parsed["error"] == "connection_refused"


def test_non_finite_and_unserializable_values_still_give_valid_json() -> None:
    line = format_record({"duration_ms": float("nan"), "extra": [float("inf"), 1.0], "b": b"x"})
    parsed = json.loads(line)  # strict JSON: no NaN/Infinity literals
    assert "NaN" not in line and "Infinity" not in line
    assert parsed["duration_ms"] is None and parsed["extra"] == [None, 1.0]
    assert parsed["b"] == "b'x'"


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*KEYS, "other"]),
        st.one_of(st.none(), st.integers(), st.floats(), st.text(), st.booleans()),
    )
)
def test_every_record_is_one_valid_json_line(record: dict[str, Any]) -> None:
    line = format_record(record)
    assert line.endswith("\n") and line.count("\n") == 1
    assert line.isascii()
    parsed = json.loads(line)
    assert list(parsed)[: len(KEYS)] == list(KEYS)


# --- BufferedWriter --------------------------------------------------------------------


class RecordingFile(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.flushes = 0

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)

    def flush(self) -> None:
        self.flushes += 1


def test_buffers_until_flush_then_writes_once() -> None:
    f = RecordingFile()
    w = BufferedWriter(f)
    log = AccessLog(w.write)
    for i in range(3):
        log.log({"status": i})
    assert f.writes == [] and w.pending > 0
    w.flush()
    assert len(f.writes) == 1 and f.flushes == 1
    assert [json.loads(line)["status"] for line in f.getvalue().splitlines()] == [0, 1, 2]
    assert w.written_lines == 3 and w.pending == 0
    w.flush()  # nothing pending: no write
    assert len(f.writes) == 1


def test_flushes_when_the_buffer_is_full_and_never_splits_lines() -> None:
    f = RecordingFile()
    w = BufferedWriter(f, max_buffer=100)
    lines = [f"line {i:03d} " + "x" * 30 + "\n" for i in range(20)]
    for line in lines:
        w.write(line)
    w.close()
    assert len(f.writes) > 1
    for chunk in f.writes:
        assert chunk.endswith("\n")
        assert len(chunk) < 100 + len(lines[0])
    assert "".join(f.writes) == "".join(lines)


def test_adds_a_missing_newline() -> None:
    f = RecordingFile()
    w = BufferedWriter(f)
    w.write("a")
    w.write("b\n")
    w.flush()
    assert f.getvalue() == "a\nb\n"


def test_close_flushes_is_idempotent_and_refuses_later_writes() -> None:
    f = RecordingFile()
    w = BufferedWriter(f)
    w.write("last\n")
    w.close()
    w.close()
    assert f.getvalue() == "last\n"
    assert not f.closed  # not owned
    with pytest.raises(ValueError):
        w.write("late\n")


def test_owned_file_is_closed_and_binary_files_work(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    fileobj = open(path, "ab")  # noqa: SIM115 - the writer owns and closes it
    with BufferedWriter(fileobj, owns_file=True) as w:
        AccessLog(w.write).log({"status": 200, "details": "caf\u00e9"})
    assert fileobj.closed
    line = path.read_text()
    assert json.loads(line)["details"] == "caf\u00e9"
    assert line.endswith("\n")


def test_bytesio_is_treated_as_binary() -> None:
    f = io.BytesIO()
    w = BufferedWriter(f)
    w.write("x\n")
    w.flush()
    assert f.getvalue() == b"x\n"


def test_write_errors_drop_the_batch_without_raising() -> None:
    class Broken(RecordingFile):
        def write(self, s: str) -> int:
            raise BrokenPipeError("reader went away")

    f = Broken()
    w = BufferedWriter(f)
    w.write("a\n")
    w.write("b\n")
    w.flush()
    assert w.dropped_lines == 2 and isinstance(w.last_error, BrokenPipeError)
    assert w.pending == 0


def test_max_buffer_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BufferedWriter(io.StringIO(), max_buffer=0)


@settings(max_examples=200, deadline=None)
@given(
    st.text(),
    st.one_of(st.none(), st.text()),
    st.one_of(st.none(), st.text()),
    st.one_of(st.none(), st.text()),
    st.floats(min_value=0, max_value=1e6),
)
def test_request_line_is_the_same_as_the_record_line(
    request_id: str, path: str | None, details: str | None, peer: str | None, ms: float
) -> None:
    from plait.proxy.accesslog import request_prefix, request_suffix

    fast: list[str] = []
    AccessLog(fast.append).request(
        1700000000.123,
        request_id,
        request_prefix("outbound", "web", 'or"ders'),
        "GET",
        path,
        "10.0.0.2:80",
        200,
        ms,
        0,
        1024,
        None,
        details,
        request_suffix("host-a", peer, None),
    )
    record = {
        "time": 1700000000.123,
        "request_id": request_id,
        "direction": "outbound",
        "source": "web",
        "destination": 'or"ders',
        "method": "GET",
        "path": path,
        "upstream": "10.0.0.2:80",
        "status": 200,
        "duration_ms": ms,
        "bytes_in": 0,
        "bytes_out": 1024,
        "error": None,
        "details": details,
        "node": "host-a",
        "peer": peer,
        "rbac": None,
    }
    assert fast == [format_record(record)]
