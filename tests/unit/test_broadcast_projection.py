"""Broadcast projection: last-writer-wins preferences and consents, and the contact decision."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from broadcast_service.projection import (
    EVERY_CHANNEL,
    ChannelPreferences,
    Consent,
    ConsentKey,
    QuietWindow,
    consent_changes,
    consent_from,
    contact_decision,
    evolve_consents,
    evolve_preferences,
    preferences_from,
    quiet_until,
)
from tests.unit.events_factory import at, event

LONDON = ZoneInfo("Europe/London")


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
    assert record.channels == ("sms", "email")
    assert record.quiet_hours == QuietWindow(time(22, 0), time(7, 0), "Europe/London")
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
    assert forward.channels == ("push", "sms")
    assert forward.set_at == at(9)


def test_a_late_older_preference_event_changes_nothing() -> None:
    stored = evolve_preferences({}, [_preferences("C1", 10, "email")])
    assert evolve_preferences(stored, [_preferences("C1", 5, "sms")]) == {}


def test_a_newer_preference_event_replaces_the_stored_record_and_clears_quiet_hours() -> None:
    quiet = {"start": "22:00", "end": "07:00"}
    stored = evolve_preferences({}, [_preferences("C1", 0, "email", quiet=quiet)])
    changed = evolve_preferences(stored, [_preferences("C1", 1, "sms")])
    assert changed["C1"].channels == ("sms",)
    assert changed["C1"].quiet_hours is None


def test_quiet_hours_default_to_utc() -> None:
    quiet = {"start": "01:00", "end": "02:00"}
    record = preferences_from(_preferences("C1", 0, "email", quiet=quiet))
    assert record.quiet_hours == QuietWindow(time(1, 0), time(2, 0), "UTC")


def test_preferences_of_the_same_instant_are_ordered_by_source_and_id() -> None:
    a = _preferences("C1", 3, "email", event_id="a", source="shop")
    b = _preferences("C1", 3, "sms", event_id="b", source="shop")
    assert evolve_preferences({}, [a, b]) == evolve_preferences({}, [b, a])
    assert evolve_preferences({}, [a, b])["C1"].channels == ("sms",)


def test_a_duplicated_preference_event_within_a_batch_is_harmless() -> None:
    once = _preferences("C1", 0, "email")
    assert evolve_preferences({}, [once, once]) == evolve_preferences({}, [once])
    stored = evolve_preferences({}, [once])
    assert evolve_preferences(stored, [once]) == {}


def test_preferences_of_customers_are_independent() -> None:
    changed = evolve_preferences({}, [_preferences("C1", 5, "email"), _preferences("C2", 0, "sms")])
    assert {c: r.channels for c, r in changed.items()} == {"C1": ("email",), "C2": ("sms",)}


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
            _granted("C1", 2, "newsletter", "email"),
        ],
    )
    assert set(changed) == {
        ("C1", "marketing", "*"),
        ("C1", "marketing", "sms"),
        ("C1", "newsletter", "email"),
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


# --- contact decision -----------------------------------------------------------------------

WINTER = datetime(2024, 1, 15, tzinfo=UTC)
SUMMER = datetime(2024, 7, 15, tzinfo=UTC)


def _prefs(*channels: str, quiet: QuietWindow | None = None) -> ChannelPreferences:
    return ChannelPreferences("C1", channels, quiet, at(0), "test", "p1")


def _consent(
    purpose: str, channel: str = EVERY_CHANNEL, granted: bool = True, minutes: float = 0
) -> Consent:
    return Consent("C1", purpose, channel, granted, at(minutes), "test", f"{purpose}-{channel}")


def _local(day: datetime, hour: int, minute: int = 0, zone: ZoneInfo = LONDON) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)


NIGHT = QuietWindow(time(22, 0), time(7, 0), "Europe/London")


def test_without_preferences_nobody_is_contacted() -> None:
    decision = contact_decision(None, [_consent("marketing")], "marketing", WINTER)
    assert decision.channel is None
    assert not decision.contact
    assert decision.reason == "no channel preference set"


def test_the_first_preferred_channel_with_consent_is_chosen() -> None:
    decision = contact_decision(
        _prefs("sms", "email"), [_consent("marketing")], "marketing", WINTER
    )
    assert decision.contact
    assert decision.channel == "sms"
    assert decision.reason == "sms is the first preferred channel with consent for marketing"
    assert [(c.channel, c.consent, c.scope) for c in decision.checks] == [
        ("sms", "granted", "*"),
        ("email", "granted", "*"),
    ]


def test_without_any_consent_for_the_purpose_nobody_is_contacted() -> None:
    decision = contact_decision(_prefs("email"), [_consent("newsletter")], "marketing", WINTER)
    assert decision.channel is None
    assert decision.reason == "no consent for marketing"
    assert [(c.consent, c.scope) for c in decision.checks] == [("none", None)]


def test_a_revoked_consent_is_no_consent() -> None:
    decision = contact_decision(
        _prefs("email", "sms"), [_consent("marketing", granted=False)], "marketing", WINTER
    )
    assert decision.reason == "no consent for marketing"
    assert {c.consent for c in decision.checks} == {"revoked"}


def test_a_channel_revocation_overrides_a_grant_for_every_channel() -> None:
    consents = [_consent("marketing"), _consent("marketing", "sms", granted=False)]
    decision = contact_decision(_prefs("sms", "email"), consents, "marketing", WINTER)
    assert decision.channel == "email"
    assert [(c.consent, c.scope) for c in decision.checks] == [
        ("revoked", "sms"),
        ("granted", "*"),
    ]


def test_a_channel_grant_overrides_a_revocation_for_every_channel() -> None:
    consents = [_consent("marketing", granted=False), _consent("marketing", "email")]
    decision = contact_decision(_prefs("sms", "email"), consents, "marketing", WINTER)
    assert decision.channel == "email"


def test_a_later_refusal_for_every_channel_withdraws_an_older_channel_grant() -> None:
    consents = [
        _consent("marketing", "email", minutes=0),
        _consent("marketing", granted=False, minutes=60),
    ]
    decision = contact_decision(_prefs("email"), consents, "marketing", WINTER)
    assert decision.channel is None
    assert decision.reason == "no consent for marketing"


def test_a_later_channel_grant_reopens_that_channel_after_a_general_refusal() -> None:
    consents = [
        _consent("marketing", granted=False, minutes=0),
        _consent("marketing", "sms", minutes=60),
    ]
    decision = contact_decision(_prefs("email", "sms"), consents, "marketing", WINTER)
    assert decision.channel == "sms"


def test_a_grant_on_a_channel_the_customer_does_not_prefer_is_not_used() -> None:
    decision = contact_decision(
        _prefs("email"), [_consent("marketing", "sms")], "marketing", WINTER
    )
    assert decision.reason == "no consent for marketing"


def test_the_asked_purpose_is_normalised_like_the_stored_one() -> None:
    decision = contact_decision(_prefs("email"), [_consent("marketing")], " MARKETING", WINTER)
    assert decision.channel == "email"


@pytest.mark.parametrize(
    ("hour", "minute", "quiet"),
    [
        (21, 59, False),
        (22, 0, True),
        (23, 30, True),
        (0, 0, True),
        (6, 59, True),
        (7, 0, False),
        (12, 0, False),
    ],
)
def test_quiet_hours_crossing_midnight(hour: int, minute: int, quiet: bool) -> None:
    when = _local(WINTER, hour, minute)
    decision = contact_decision(
        _prefs("email", quiet=NIGHT), [_consent("marketing")], "marketing", when
    )
    assert decision.contact is not quiet
    if quiet:
        assert decision.reason == "quiet hours until 07:00 Europe/London"


def test_quiet_hours_end_the_next_morning_when_they_start_before_midnight() -> None:
    assert quiet_until(NIGHT, _local(WINTER, 23, 30)) == datetime(2024, 1, 16, 7, tzinfo=UTC)
    assert quiet_until(NIGHT, _local(WINTER, 2, 0)) == datetime(2024, 1, 15, 7, tzinfo=UTC)
    assert quiet_until(NIGHT, _local(WINTER, 12, 0)) is None


def test_quiet_hours_are_read_in_the_customers_summer_time() -> None:
    # 21:30 UTC is 22:30 in London in July (BST) but 21:30 in January (GMT).
    summer_evening = datetime(2024, 7, 15, 21, 30, tzinfo=UTC)
    winter_evening = datetime(2024, 1, 15, 21, 30, tzinfo=UTC)
    assert quiet_until(NIGHT, summer_evening) == datetime(2024, 7, 16, 6, tzinfo=UTC)
    assert quiet_until(NIGHT, winter_evening) is None


def test_quiet_hours_within_one_day_in_another_time_zone() -> None:
    lunch = QuietWindow(time(12, 0), time(14, 0), "America/New_York")
    new_york = ZoneInfo("America/New_York")
    assert quiet_until(lunch, _local(SUMMER, 11, 59, new_york)) is None
    assert quiet_until(lunch, _local(SUMMER, 13, 0, new_york)) == datetime(
        2024, 7, 15, 18, tzinfo=UTC
    )
    assert quiet_until(lunch, _local(SUMMER, 14, 0, new_york)) is None
    # 13:00 in London is 08:00 in New York: not quiet for this customer.
    assert quiet_until(lunch, _local(SUMMER, 13, 0)) is None


def test_a_window_that_starts_where_it_ends_is_never_quiet() -> None:
    empty = QuietWindow(time(8, 0), time(8, 0), "UTC")
    assert quiet_until(empty, datetime(2024, 1, 1, 8, tzinfo=UTC)) is None


def test_an_unknown_time_zone_is_read_as_utc_and_said_so() -> None:
    window = QuietWindow(time(22, 0), time(7, 0), "Mars/Olympus")
    decision = contact_decision(
        _prefs("email", quiet=window),
        [_consent("marketing")],
        "marketing",
        datetime(2024, 1, 1, 23, tzinfo=UTC),
    )
    assert decision.reason == "quiet hours until 07:00 UTC (unknown time zone 'Mars/Olympus')"
    assert decision.quiet_until == datetime(2024, 1, 2, 7, tzinfo=UTC)


def test_missing_consent_is_reported_before_quiet_hours() -> None:
    decision = contact_decision(_prefs("email", quiet=NIGHT), [], "marketing", _local(WINTER, 23))
    assert decision.reason == "no consent for marketing"
    assert decision.quiet_until is None


def test_quiet_hours_hold_back_every_channel_and_say_until_when() -> None:
    decision = contact_decision(
        _prefs("sms", "email", quiet=NIGHT),
        [_consent("marketing")],
        "marketing",
        _local(WINTER, 23),
    )
    assert decision.channel is None
    assert decision.quiet_until == datetime(2024, 1, 16, 7, tzinfo=UTC)


def test_the_time_may_be_given_with_any_offset() -> None:
    tokyo_morning = datetime(2024, 1, 16, 7, 30, tzinfo=ZoneInfo("Asia/Tokyo"))  # 22:30 in London
    decision = contact_decision(
        _prefs("email", quiet=NIGHT), [_consent("marketing")], "marketing", tokyo_morning
    )
    assert decision.reason == "quiet hours until 07:00 Europe/London"


def test_a_time_without_offset_is_refused() -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        contact_decision(_prefs("email"), [], "marketing", datetime(2024, 1, 1, 12))


def test_decision_from_folded_events() -> None:
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Europe/London"}
    preferences = evolve_preferences({}, [_preferences("C1", 0, "push", "email", quiet=quiet)])
    consents = evolve_consents(
        {},
        [
            _granted("C1", 0, "marketing"),
            _revoked("C1", 1, "marketing", "push"),
            _granted("C1", -5, "marketing", "push"),  # late and older: no effect
        ],
    )
    decision = contact_decision(
        preferences["C1"],
        consents.values(),
        "marketing",
        at(0),  # 11:00 in London
    )
    assert decision.channel == "email"
