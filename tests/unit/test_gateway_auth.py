"""Gateway API keys: format, hashing, revocation, scopes and where the key is read from."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway_service.auth import (
    CUSTOMERS_READ,
    EVENTS_WRITE,
    INVALID_TOKEN,
    REALM,
    Forbidden,
    KeyCache,
    StoredKey,
    Unauthorized,
    check_key,
    check_scope,
    format_key,
    hash_secret,
    parse_key,
    parse_scopes,
    parse_sources,
    presented_key,
)

KEY_ID = "a78299dbb4c62035"
SECRET = "btfzHEyWi05-BioC17a23v_htU2jQKpyQ1SAUxCG27M"  # token_urlsafe may contain '_' and '-'
CREATED = datetime(2024, 5, 1, tzinfo=UTC)


def _stored(**overrides: object) -> StoredKey:
    fields: dict[str, object] = {
        "key_id": KEY_ID,
        "name": "demo",
        "key_hash": hash_secret(SECRET),
        "scopes": frozenset({CUSTOMERS_READ}),
        "sources": frozenset(),
        "created_at": CREATED,
    }
    fields.update(overrides)
    return StoredKey(**fields)  # type: ignore[arg-type]


def test_a_formatted_key_parses_back_even_with_underscores_in_the_secret() -> None:
    presented = parse_key(format_key(KEY_ID, SECRET))
    assert (presented.key_id, presented.secret) == (KEY_ID, SECRET)


@pytest.mark.parametrize(
    "text",
    [
        "hello",
        f"sk_{KEY_ID}_{SECRET}",
        f"crm_{KEY_ID}",
        f"crm_{KEY_ID}_",
        f"crm__{SECRET}",
        f"crm_NOT-HEX_{SECRET}",
        f"crm_{KEY_ID}_short",
        f"crm_{KEY_ID}_{SECRET} trailing",
    ],
)
def test_malformed_keys_are_unauthorized(text: str) -> None:
    with pytest.raises(Unauthorized, match="malformed") as raised:
        parse_key(text)
    assert raised.value.challenge == INVALID_TOKEN


def test_only_a_hash_of_the_secret_is_compared_and_it_is_not_the_secret() -> None:
    assert hash_secret(SECRET) != SECRET
    assert len(hash_secret(SECRET)) == 64
    assert check_key(parse_key(format_key(KEY_ID, SECRET)), _stored()) == _stored()


def test_a_wrong_secret_and_an_unknown_key_get_the_same_answer() -> None:
    wrong = parse_key(format_key(KEY_ID, SECRET[:-1] + "X"))
    with pytest.raises(Unauthorized) as wrong_secret:
        check_key(wrong, _stored())
    with pytest.raises(Unauthorized) as unknown:
        check_key(parse_key(format_key(KEY_ID, SECRET)), None)
    assert str(wrong_secret.value) == str(unknown.value) == "the API key is not valid"


def test_a_revoked_key_is_refused_and_says_since_when() -> None:
    revoked = _stored(revoked_at=datetime(2024, 6, 1, tzinfo=UTC))
    with pytest.raises(Unauthorized, match="revoked at 2024-06-01"):
        check_key(parse_key(format_key(KEY_ID, SECRET)), revoked)


def test_a_revoked_key_with_a_wrong_secret_does_not_reveal_the_revocation() -> None:
    revoked = _stored(revoked_at=datetime(2024, 6, 1, tzinfo=UTC))
    with pytest.raises(Unauthorized, match="not valid"):
        check_key(parse_key(format_key(KEY_ID, SECRET[:-1] + "X")), revoked)


def test_a_missing_scope_is_forbidden_and_named() -> None:
    check_scope(_stored(), CUSTOMERS_READ)
    with pytest.raises(
        Forbidden, match=r"lacks the scope 'events:write' \(it grants: customers:read\)"
    ):
        check_scope(_stored(), EVENTS_WRITE)


def test_scopes_parse_from_a_comma_separated_list() -> None:
    assert parse_scopes("customers:read, events:write,") == {CUSTOMERS_READ, EVENTS_WRITE}
    assert parse_scopes(["events:write"]) == {EVENTS_WRITE}


@pytest.mark.parametrize(
    ("text", "problem"), [("", "at least one"), ("admin", "unknown scope admin")]
)
def test_unknown_or_no_scopes_are_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_scopes(text)


def test_sources_parse_from_a_comma_separated_list_for_a_key_that_writes_events() -> None:
    writer = {CUSTOMERS_READ, EVENTS_WRITE}
    assert parse_sources(" shop,pos, shop,", writer) == {"shop", "pos"}
    assert parse_sources(["call-centre"], writer) == {"call-centre"}
    assert parse_sources("", {CUSTOMERS_READ}) == frozenset()


@pytest.mark.parametrize(
    ("text", "scopes", "problem"),
    [
        ("", {EVENTS_WRITE}, "needs the sources it may publish as"),
        (" , ", {EVENTS_WRITE}, "needs the sources it may publish as"),
        ("shop," + "x" * 257, {EVENTS_WRITE}, "invalid source 'xxx.*at most 256 characters"),
        ("shop", {CUSTOMERS_READ}, "sources are for keys with the scope events:write"),
    ],
)
def test_a_writer_without_sources_an_overlong_source_or_sources_for_a_reader_are_refused(
    text: str, scopes: set[str], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_sources(text, scopes)


def test_the_key_is_read_from_a_bearer_header_in_any_case_or_from_x_api_key() -> None:
    assert presented_key("Bearer abc", None) == "abc"
    assert presented_key("bearer  abc ", None) == "abc"
    assert presented_key(None, " abc ") == "abc"
    assert presented_key("Bearer abc", "other") == "abc"  # Authorization wins


def test_another_authorization_scheme_falls_back_to_x_api_key_or_is_refused() -> None:
    assert presented_key("Basic dXNlcjpwdw==", "abc") == "abc"
    with pytest.raises(Unauthorized, match="must read 'Bearer"):
        presented_key("Basic dXNlcjpwdw==", None)
    with pytest.raises(Unauthorized, match="must read 'Bearer"):
        presented_key("Bearer ", None)


def test_no_key_at_all_asks_for_one_with_a_plain_challenge() -> None:
    with pytest.raises(Unauthorized, match="an API key is required") as raised:
        presented_key(None, "  ")
    assert raised.value.challenge == REALM


def test_a_cached_key_is_served_until_its_time_is_up_then_read_again() -> None:
    cache = KeyCache(ttl=5)
    key = _stored()
    cache.put(key, now=100.0)
    assert cache.get(KEY_ID, now=104.9) is key
    assert cache.get(KEY_ID, now=105.0) is None  # a revocation is seen within the ttl
    assert cache.get(KEY_ID, now=101.0) is None  # and the stale entry is gone


def test_a_key_cache_forgets_when_the_clock_steps_back_and_keeps_nothing_without_a_ttl() -> None:
    cache = KeyCache(ttl=5)
    cache.put(_stored(), now=100.0)
    assert cache.get(KEY_ID, now=99.0) is None
    uncached = KeyCache(ttl=0)
    uncached.put(_stored(), now=100.0)
    assert uncached.get(KEY_ID, now=100.0) is None
    assert cache.get("another", now=100.0) is None
