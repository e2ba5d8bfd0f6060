"""SpiffeId: strict parsing, round trips, and property tests (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plait.ca.spiffe import InvalidSpiffeId, SpiffeId

LABEL = st.from_regex(r"[a-z0-9_-]{1,20}", fullmatch=True)
TRUST_DOMAIN = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
SERVICE = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)


@given(TRUST_DOMAIN, SERVICE)
def test_round_trip(td, service):
    sid = SpiffeId.for_service(td, service)
    text = str(sid)
    assert text == f"spiffe://{td}/svc/{service}"
    assert SpiffeId.parse(text) == sid


@given(st.text(max_size=80))
def test_any_text_parses_exactly_or_raises_invalid(text):
    try:
        sid = SpiffeId.parse(text)
    except InvalidSpiffeId:
        return
    assert str(sid) == text


@given(TRUST_DOMAIN, SERVICE, st.sampled_from(["/", "/x", "?a=b", "#f", "%41", ":443"]))
def test_suffixes_are_refused(td, service, suffix):
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse(f"spiffe://{td}/svc/{service}{suffix}")


@given(TRUST_DOMAIN.filter(lambda t: any(c.isalpha() for c in t)), SERVICE)
def test_uppercase_trust_domain_is_refused(td, service):
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse(f"spiffe://{td.upper()}/svc/{service}")


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "spiffe:/plait.local/svc/a",
        "SPIFFE://plait.local/svc/a",
        "https://plait.local/svc/a",
        "spiffe://plait.local",
        "spiffe://plait.local/",
        "spiffe://plait.local/svc",
        "spiffe://plait.local/svc/",
        "spiffe://plait.local/svc/a/b",
        "spiffe://plait.local/ns/default/sa/a",
        "spiffe://plait.local//svc/a",
        "spiffe:///svc/a",
        "spiffe://user@plait.local/svc/a",
        "spiffe://plait.local:8443/svc/a",
        "spiffe://plait..local/svc/a",
        "spiffe://.plait.local/svc/a",
        "spiffe://plait.local./svc/a",
        "spiffe://plait local/svc/a",
        "spiffe://plait.local/svc/Orders",
        "spiffe://plait.local/svc/-orders",
        "spiffe://plait.local/svc/orders-",
        "spiffe://plait.local/svc/or_ders",
        "spiffe://plait.local/svc/or.ders",
        "spiffe://plait.local/svc/" + "a" * 64,
        "spiffe://" + "a" * 256 + "/svc/a",
        "spiffe://plait.local/svc/a%2F",
        " spiffe://plait.local/svc/a",
        "spiffe://plait.local/svc/a ",
    ],
)
def test_refused(uri):
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://plait.local/svc/orders",
        "spiffe://a/svc/b",
        "spiffe://prod_1.example-corp.com/svc/a1-b2",
        "spiffe://plait.local/svc/" + "a" * 63,
    ],
)
def test_accepted(uri):
    assert str(SpiffeId.parse(uri)) == uri


def test_fields_and_errors_name_the_rule():
    sid = SpiffeId.parse("spiffe://plait.local/svc/orders")
    assert (sid.trust_domain, sid.service) == ("plait.local", "orders")
    with pytest.raises(InvalidSpiffeId, match="DNS label"):
        SpiffeId.for_service("plait.local", "Orders")
    with pytest.raises(InvalidSpiffeId, match="trust domain"):
        SpiffeId.for_service("Plait.Local", "orders")
    with pytest.raises(ValueError):  # InvalidSpiffeId is a ValueError
        SpiffeId.parse("nope")
