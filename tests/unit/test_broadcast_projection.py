"""Broadcast projection: last-writer-wins preferences and consents (v1 events, read as v2)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import time

from broadcast_service.projection import (
    EVERY_CHANNEL,
    ChannelPreferences,
    Consent,
    ConsentKey,
    QuietWindow,
    consent_changes,
    consent_from,
    evolve_consents,
    evolve_preferences,
    preferences_from,
)
from tests.unit.events_factory import at, event


def _preferences(customer: str, minutes: float, *channels: str, quiet=None, **kw):
    data: dict[str, object] = {"channels": list(channels)}
    if quiet is not None:
        data["quiet_hours"] = quiet
    return event("crm.channel_preference.set.v1", customer, data, minutes=minutes, **kw)


def _granted(customer: str, minutes: float, purpose: str, channel: str | None = None, **kw):
    data = {"purpose": purpose} | ({"channel": channel} if channel else {})
    return event("crm.consent.granted.v1", customer, data, minutes=minutes, **kw)


def _revoked(customer: str, minutes: float, purpose: str, channel: str | None = None, **kw):
    data = {"purpose": purpose} | ({"channel": channel} if channel else {})
    return event("crm.consent.revoked.v1", customer, data, minutes=minutes, **kw)


def _channels(record: ChannelPreferences) -> tuple[str, ...]:
    return tuple(setup.channel for setup in record.channels)


def _state(
    consents: Mapping[ConsentKey, Consent],
    customer: str,
    purpose: str,
    channel: str = EVERY_CHANNEL,
) -> Consent:
    return consents[(customer, purpose, channel)]


# --- channel preferences -------------------------------------------------------------------


def test_preferences_keep_channel_order_and_quiet_hours() -> None:
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Europe/London"}
    record = evolve_preferences({}, [_preferences("C1", 0, "sms", "email", quiet=quiet)])["C1"]
    assert _channels(record) == ("sms", "email")
    window = QuietWindow(time(22, 0), time(7, 0), "Europe/London")
    assert [setup.quiet_hours for setup in record.channels] == [window, window]
    assert record.timezone == "Europe/London"
    assert record.set_at == at(0)


def test_the_newest_preferences_win_whatever_the_order_of_arrival() -> None:
    events = [
        _preferences("C1", 0, "email"),
        _preferences("C1", 9, "push", "sms"),
        _preferences("C1", 4, "phone"),
    ]
    forward = evolve_preferences({}, events)["C1"]
    backward = evolve_preferences({}, list(reversed(events)))["C1"]
    assert forward == backward
    assert _channels(forward) == ("push", "sms")
    assert forward.set_at == at(9)


def test_a_late_older_preference_event_changes_nothing() -> None:
    stored = evolve_preferences({}, [_preferences("C1", 10, "email")])
    assert evolve_preferences(stored, [_preferences("C1", 5, "sms")]) == {}


def test_a_newer_preference_event_replaces_the_stored_record_and_clears_quiet_hours() -> None:
    quiet = {"start": "22:00", "end": "07:00"}
    stored = evolve_preferences({}, [_preferences("C1", 0, "email", quiet=quiet)])
    changed = evolve_preferences(stored, [_preferences("C1", 1, "sms")])
    assert _channels(changed["C1"]) == ("sms",)
    assert changed["C1"].channels[0].quiet_hours is None


def test_quiet_hours_default_to_utc() -> None:
    quiet = {"start": "01:00", "end": "02:00"}
    record = preferences_from(_preferences("C1", 0, "email", quiet=quiet))
    assert record.channels[0].quiet_hours == QuietWindow(time(1, 0), time(2, 0), "UTC")


def test_preferences_of_the_same_instant_are_ordered_by_source_and_id() -> None:
    a = _preferences("C1", 3, "email", event_id="a", source="shop")
    b = _preferences("C1", 3, "sms", event_id="b", source="shop")
    assert evolve_preferences({}, [a, b]) == evolve_preferences({}, [b, a])
    assert _channels(evolve_preferences({}, [a, b])["C1"]) == ("sms",)


def test_a_duplicated_preference_event_within_a_batch_is_harmless() -> None:
    once = _preferences("C1", 0, "email")
    assert evolve_preferences({}, [once, once]) == evolve_preferences({}, [once])
    stored = evolve_preferences({}, [once])
    assert evolve_preferences(stored, [once]) == {}


def test_preferences_of_customers_are_independent() -> None:
    changed = evolve_preferences({}, [_preferences("C1", 5, "email"), _preferences("C2", 0, "sms")])
    assert {c: _channels(r) for c, r in changed.items()} == {"C1": ("email",), "C2": ("sms",)}


# --- consents -------------------------------------------------------------------------------


def test_a_consent_without_channel_is_for_every_channel() -> None:
    consent = consent_from(_granted("C1", 0, "marketing"))
    assert consent.channel == EVERY_CHANNEL
    assert consent.granted
    assert consent_from(_revoked("C1", 0, "marketing", "sms")).channel == "sms"


def test_purpose_is_compared_without_case_or_surrounding_spaces() -> None:
    assert consent_from(_granted("C1", 0, " Marketing ")).purpose == "marketing"


def test_the_newest_consent_state_wins_whatever_the_order_of_arrival() -> None:
    events = [
        _granted("C1", 0, "marketing"),
        _revoked("C1", 10, "marketing"),
        _granted("C1", 5, "marketing"),
    ]
    forward = evolve_consents({}, events)
    backward = evolve_consents({}, list(reversed(events)))
    assert forward == backward
    state = _state(forward, "C1", "marketing")
    assert (state.granted, state.changed_at) == (False, at(10))


def test_a_late_grant_does_not_undo_a_newer_revocation_but_is_kept_in_history() -> None:
    stored = evolve_consents({}, [_revoked("C1", 10, "marketing", "email")])
    late = _granted("C1", 2, "marketing", "email")
    assert evolve_consents(stored, [late]) == {}
    history = consent_changes([late])
    assert [(c.granted, c.changed_at) for c in history] == [(True, at(2))]


def test_a_revocation_beats_a_grant_of_the_same_instant_in_any_order() -> None:
    grant = _granted("C1", 1, "marketing", event_id="z")
    revoke = _revoked("C1", 1, "marketing", event_id="a")
    for events in ([grant, revoke], [revoke, grant]):
        assert not _state(evolve_consents({}, events), "C1", "marketing").granted
    stored = evolve_consents({}, [revoke])
    assert evolve_consents(stored, [grant]) == {}


def test_a_same_instant_revocation_replaces_a_stored_grant_whatever_its_source_and_id() -> None:
    grant = _granted("C1", 1, "marketing", "email", event_id="z", source="zz-shop")
    revoke = _revoked("C1", 1, "marketing", "email", event_id="a", source="aa-shop")
    assert consent_from(revoke).version > consent_from(grant).version
    stored = evolve_consents({}, [grant])
    changed = evolve_consents(stored, [revoke])
    assert not _state(changed, "C1", "marketing", "email").granted
    assert evolve_consents(changed, [grant]) == {}


def test_purposes_and_channels_are_separate_states() -> None:
    changed = evolve_consents(
        {},
        [
            _granted("C1", 0, "marketing"),
            _revoked("C1", 1, "marketing", "sms"),
            _granted("C1", 2, "service", "email"),
        ],
    )
    assert set(changed) == {
        ("C1", "marketing", "*"),
        ("C1", "marketing", "sms"),
        ("C1", "service", "email"),
    }


def test_history_has_one_row_per_event_and_a_repeated_event_once() -> None:
    grant = _granted("C1", 0, "marketing")
    revoke = _revoked("C1", 1, "marketing")
    history = consent_changes([grant, revoke, grant])
    assert [(c.event_id, c.granted) for c in history] == [(grant.id, True), (revoke.id, False)]


def test_the_same_id_from_another_source_is_another_event() -> None:
    a = _granted("C1", 0, "marketing", event_id="1", source="shop")
    b = _revoked("C1", 1, "marketing", event_id="1", source="pos")
    assert len(consent_changes([a, b])) == 2
