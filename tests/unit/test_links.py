"""Signed links in messages: they say who, they cannot be forged, and they expire."""

from datetime import UTC, datetime, timedelta

import pytest

from crm_shared.runtime.links import InvalidLink, LinkClaims, link_url, read_link, sign_link

SECRET = "a-secret-of-the-platform-0123456789"


def test_a_link_carries_its_claims_back() -> None:
    claims = LinkClaims("cust-1", purpose="marketing", channel="email", message_id="m-1")
    assert read_link(SECRET, sign_link(SECRET, claims)) == claims


def test_a_link_signed_with_another_secret_or_altered_is_refused() -> None:
    token = sign_link(SECRET, LinkClaims("cust-1"))
    with pytest.raises(InvalidLink, match="not valid"):
        read_link("another-secret-0123456789abcdef", token)
    other_payload = sign_link(SECRET, LinkClaims("cust-2")).rsplit(".", 2)[0]
    forged = ".".join([other_payload, *token.rsplit(".", 2)[1:]])
    with pytest.raises(InvalidLink, match="not valid"):
        read_link(SECRET, forged)


def test_a_link_expires() -> None:
    token = sign_link(SECRET, LinkClaims("cust-1"))
    later = datetime.now(UTC) + timedelta(days=2)
    assert read_link(SECRET, token, max_age=timedelta(days=3), now=later).customer_id == "cust-1"
    with pytest.raises(InvalidLink, match="expired"):
        read_link(SECRET, token, max_age=timedelta(days=1), now=later)


def test_the_token_is_quoted_into_the_url() -> None:
    assert link_url("https://crm.example/", "/preferences", "a+b") == (
        "https://crm.example/preferences?token=a%2Bb"
    )


def test_a_link_dated_in_the_future_beyond_clock_skew_is_refused() -> None:
    soon = datetime.now(UTC) + timedelta(minutes=2)
    assert read_link(SECRET, sign_link(SECRET, LinkClaims("cust-1"), now=soon)).customer_id == (
        "cust-1"
    )
    later = datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(InvalidLink, match="not valid"):
        read_link(SECRET, sign_link(SECRET, LinkClaims("cust-1"), now=later))


def test_only_the_exact_signature_passes_not_another_spelling_of_it() -> None:
    """The signature's last base64 character carries unused bits: a token differing only there
    decodes to the same bytes, and must still be refused."""
    token = sign_link(SECRET, LinkClaims("cust-1"))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for other in alphabet.replace(token[-1], ""):
        with pytest.raises(InvalidLink, match="not valid"):
            read_link(SECRET, token[:-1] + other)


@pytest.mark.parametrize(
    "token", ["", ".", "no-dot", "a.b.c", "%%%.???", "é.é", "e30.AAAA"], ids=repr
)
def test_garbage_is_refused_as_not_valid(token: str) -> None:
    with pytest.raises(InvalidLink, match="not valid"):
        read_link(SECRET, token)


def test_a_customer_id_with_any_characters_round_trips() -> None:
    claims = LinkClaims('cust "1"./é', purpose="marketing")
    assert read_link(SECRET, sign_link(SECRET, claims)) == claims
