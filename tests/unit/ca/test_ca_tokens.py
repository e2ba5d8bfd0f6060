"""Join tokens: creation, the hash-only record, every verify outcome, revoke, persistence."""

from __future__ import annotations

import hashlib
from dataclasses import astuple
from datetime import timedelta

import pytest
from ca_fixtures import NOW, rng
from hypothesis import given
from hypothesis import strategies as st

from plait.ca import tokens as tk
from plait.ca.tokens import JoinTokens, TokenRecord
from plait.control.store import Store

HOUR = timedelta(hours=1)


def test_create_shows_the_secret_once_and_keeps_only_its_hash():
    table = JoinTokens()
    token_id, secret = table.create("orders", HOUR, NOW, rng(1))
    prefix, tid, raw = secret.split(".")
    assert prefix == "plait-jt" and tid == token_id and len(token_id) == 16
    assert len(raw) == 43  # 32 bytes, base64url without padding
    record = table.get(token_id)
    assert record is not None
    assert record.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert all(raw not in str(field) for field in astuple(record))
    assert record.service == "orders"
    assert (record.created_at, record.expires_at) == (NOW, NOW + HOUR)
    assert "secret_hash" not in record.to_dict(NOW)


def test_creation_is_deterministic_with_an_injected_rng():
    a = JoinTokens().create("orders", HOUR, NOW, rng(4))
    b = JoinTokens().create("orders", HOUR, NOW, rng(4))
    assert a == b
    assert JoinTokens().create("orders", HOUR, NOW, rng(5)) != a


def test_verify_outcomes():
    table = JoinTokens()
    token_id, secret = table.create("orders", HOUR, NOW, rng(1))
    assert table.verify(secret, "orders", NOW).ok
    assert table.verify(secret, "orders", NOW).token_id == token_id
    assert table.verify(secret, "orders", NOW + HOUR - timedelta(seconds=1)).ok
    assert table.verify(secret, "orders", NOW + HOUR).reason == tk.EXPIRED
    assert table.verify(secret, "payments", NOW).reason == tk.WRONG_SERVICE
    assert table.verify(secret + "x", "orders", NOW).reason == tk.UNKNOWN
    assert table.verify(secret[:-1] + "A", "orders", NOW).reason in (tk.UNKNOWN, tk.OK)
    assert table.verify("plait-jt.ffffffffffffffff.x", "orders", NOW).reason == tk.UNKNOWN
    assert table.verify("", "orders", NOW).reason == tk.UNKNOWN
    table.revoke(token_id, NOW)
    assert table.verify(secret, "orders", NOW).reason == tk.REVOKED
    # revoked wins over expired and wrong service
    assert table.verify(secret, "payments", NOW + 2 * HOUR).reason == tk.REVOKED


def test_unknown_never_names_a_token():
    table = JoinTokens()
    token_id, _secret = table.create("orders", HOUR, NOW, rng(1))
    table.revoke(token_id, NOW)
    forged = f"plait-jt.{token_id}.{'A' * 43}"
    check = table.verify(forged, "orders", NOW)
    assert check.reason == tk.UNKNOWN and check.token_id is None


@given(st.text(max_size=120), st.text(max_size=20))
def test_verify_never_raises(secret, service):
    table = JoinTokens()
    table.create("orders", HOUR, NOW, rng(1))
    check = table.verify(secret, service, NOW)
    assert check.reason in (tk.UNKNOWN, tk.OK, tk.WRONG_SERVICE)
    assert not check.ok


def test_revoke_is_idempotent_and_unknown_ids_raise():
    table = JoinTokens()
    token_id, _ = table.create("orders", HOUR, NOW, rng(1))
    first = table.revoke(token_id, NOW)
    again = table.revoke(token_id, NOW + HOUR)
    assert first.revoked_at == again.revoked_at == NOW
    assert first.state(NOW) == tk.REVOKED
    with pytest.raises(KeyError):
        table.revoke("0000000000000000", NOW)


def test_list_and_states():
    table = JoinTokens()
    a, _ = table.create("orders", HOUR, NOW, rng(1))
    b, _ = table.create("payments", 2 * HOUR, NOW + timedelta(minutes=1), rng(2))
    table.revoke(b, NOW)
    assert [r.id for r in table.list()] == [a, b]
    assert [r.state(NOW + 90 * timedelta(minutes=1)) for r in table.list()] == [
        tk.EXPIRED,
        tk.REVOKED,
    ]


@pytest.mark.parametrize(
    ("service", "ttl", "match"),
    [
        ("Orders", HOUR, "DNS label"),
        ("plait-control", HOUR, "reserved"),
        ("orders", timedelta(seconds=30), "ttl"),
        ("orders", timedelta(days=31), "ttl"),
    ],
)
def test_bad_requests(service, ttl, match):
    with pytest.raises(ValueError, match=match):
        JoinTokens().create(service, ttl, NOW, rng(1))


def test_id_collision_is_refused():
    table = JoinTokens()
    table.create("orders", HOUR, NOW, rng(1))
    with pytest.raises(ValueError, match="collision"):
        table.create("orders", HOUR, NOW, rng(1))


def test_records_survive_the_store(tmp_path):
    table = JoinTokens()
    _a, secret = table.create("orders", HOUR, NOW, rng(1))
    b, _ = table.create("payments", HOUR, NOW, rng(2))
    table.revoke(b, NOW + timedelta(minutes=5))
    store = Store(str(tmp_path))
    try:
        for record in table.list():
            store.save_token(record)
        store.save_token(table.revoke(b, NOW))  # an update keeps the first revocation
        loaded = store.load_tokens()
    finally:
        store.close()
    assert loaded == table.list()
    assert all(isinstance(r, TokenRecord) for r in loaded)
    again = JoinTokens(loaded)
    assert again.verify(secret, "orders", NOW).ok
    assert secret not in (tmp_path / "plait.db").read_bytes().decode("latin-1")
