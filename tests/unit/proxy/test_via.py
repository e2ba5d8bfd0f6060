"""Via entries (RFC 9110 section 7.6.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plait.proxy.via import append_via, pseudonym, via_entry

TCHAR = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@pytest.mark.parametrize(
    ("node_id", "expected"),
    [
        ("host-a", "1.1 host-a"),
        ("Host_A.example", "1.1 Host_A.example"),
        ("host a/1", "1.1 host-a-1"),
        ("h\u00f4te", "1.1 h-te"),
        ("  ", "1.1 plait"),
        ("", "1.1 plait"),
        ("a,b;c", "1.1 a-b-c"),
    ],
)
def test_via_entry(node_id: str, expected: str) -> None:
    assert via_entry(node_id) == expected


def test_via_entry_protocol() -> None:
    assert via_entry("host-a", "2") == "2 host-a"


@given(st.text(max_size=300))
def test_pseudonym_is_always_a_token(node_id: str) -> None:
    token = pseudonym(node_id)
    assert token and set(token) <= TCHAR and len(token) <= 128


def test_append_via() -> None:
    assert append_via(None, "1.1 b") == "1.1 b"
    assert append_via("", "1.1 b") == "1.1 b"
    assert append_via("1.0 fred, 1.1 a", "1.1 b") == "1.0 fred, 1.1 a, 1.1 b"
    assert append_via(b"1.1 a", b"1.1 b") == b"1.1 a, 1.1 b"
    assert append_via(None, b"1.1 b") == b"1.1 b"
    with pytest.raises(TypeError):
        append_via("1.1 a", b"1.1 b")  # type: ignore[call-overload]
