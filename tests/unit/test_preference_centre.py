"""The preference centre's rules: what the page shows, what a submitted form publishes (only what
changed), the problems it names, and what a one-click unsubscribe withdraws."""

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from crm_shared.contracts.events import (
    CHANNEL_PREFERENCE_SET_V2,
    CONSENT_RECORDED,
    Channel,
    ChannelSetting,
    ConsentCapture,
    ConsentState,
    ContactPurpose,
)
from crm_shared.runtime.config import PlatformSettings
from crm_shared.runtime.links import LinkClaims
from gateway_service.preference_centre import (
    CHECKED,
    CentreState,
    InvalidForm,
    InvalidUnsubscribe,
    form_values,
    read_form,
    shown_values,
    state_from_broadcast,
    submission_events,
    unsubscribe_event_id,
    unsubscribe_record,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
TODAYS_ANSWER = {
    "customer_id": "c-1",
    "channels": ["sms", "email", "web"],
    "quiet_hours": {"start": "21:00", "end": "08:00", "timezone": "Europe/Berlin"},
    "consents": [
        {"purpose": "marketing", "channel": "*", "granted": True},
        {"purpose": "marketing", "channel": "sms", "granted": False},
        {"purpose": "personalisation", "channel": "*", "granted": True},
    ],
}


def _shown_of(state: CentreState) -> dict[str, str]:
    return form_values(state, NOW)


def test_todays_broadcast_answer_fills_the_page_in_the_customers_order() -> None:
    values = _shown_of(state_from_broadcast(TODAYS_ANSWER))
    assert values["timezone"] == "Europe/Berlin"
    assert (values["sms.rank"], values["email.rank"], values["phone.rank"]) == ("1", "2", "")
    assert values["email.enabled"] == CHECKED and values["phone.enabled"] == ""
    assert (values["sms.quiet_start"], values["sms.quiet_end"]) == ("21:00", "08:00")
    # "web" is not a channel we send on: it is left out, not shown wrong.
    assert "web.enabled" not in values
    # A consent for the channel itself decides; else the one for every channel.
    assert values["consent.marketing.email"] == CHECKED
    assert values["consent.marketing.sms"] == ""
    assert values["consent.service.email"] == ""
    assert values["consent.personalisation.all"] == CHECKED


def test_a_v2_channel_set_up_and_consent_states_are_read_too() -> None:
    answer = {
        "timezone": "America/New_York",
        "channels": ["sms", "email"],
        "channel_setup": [
            {"channel": "sms", "address": "+1 212 555 0100", "paused_until": None},
            {"channel": "email", "address": "ann@example.com", "max_per_week": 3},
        ],
        "consents": [
            {"purpose": "service", "channel": "email", "state": "pending", "granted": False},
            {"purpose": "service", "channel": "sms", "state": "granted", "granted": True},
        ],
    }
    values = _shown_of(state_from_broadcast(answer))
    assert values["timezone"] == "America/New_York"
    assert (values["sms.rank"], values["email.rank"]) == ("1", "2")
    assert values["email.address"] == "ann@example.com"
    assert values["email.max_per_week"] == "3"
    assert values["consent.service.email"] == ""  # pending is not granted until confirmed
    assert values["consent.service.sms"] == CHECKED


def test_an_unknown_customer_gets_an_empty_form() -> None:
    values = _shown_of(state_from_broadcast(None))
    assert values["timezone"] == "UTC"
    assert not any(value == CHECKED for value in values.values())


def test_a_pause_that_has_ended_is_not_shown() -> None:
    ended = ChannelSetting(channel=Channel.EMAIL, paused_until=NOW - timedelta(days=1))
    running = ChannelSetting(channel=Channel.SMS, paused_until=NOW + timedelta(days=3))
    values = _shown_of(CentreState("UTC", (ended, running)))
    assert values["email.paused_until"] == ""
    assert values["sms.paused_until"] == "2026-12-01"


def test_an_untouched_form_publishes_nothing() -> None:
    shown = _shown_of(state_from_broadcast(TODAYS_ANSWER))
    submitted = {name: value for name, value in shown.items() if value}  # unticked: absent
    submission = read_form(submitted, shown, NOW)
    assert not submission.changes_anything


def test_a_changed_set_up_is_published_whole_in_the_chosen_order() -> None:
    shown = _shown_of(CentreState())
    submitted = {
        **shown,
        "timezone": "Europe/London",
        "email.enabled": CHECKED,
        "email.rank": "2",
        "email.address": "ann@example.com",
        "email.quiet_start": "22:00",
        "email.quiet_end": "07:30",
        "email.max_per_week": "2",
        "sms.enabled": CHECKED,
        "sms.rank": "1",
        "sms.paused_until": "2026-12-24",
        "mail.enabled": CHECKED,  # no rank: after the ranked ones
    }
    setup = read_form(submitted, shown, NOW).setup
    assert setup is not None
    assert [s.channel for s in setup.channels] == [Channel.SMS, Channel.EMAIL, Channel.MAIL]
    assert setup.timezone == "Europe/London"
    email = setup.channels[1]
    assert email.address == "ann@example.com" and email.max_per_week == 2
    assert email.quiet_hours is not None
    assert (email.quiet_hours.start, email.quiet_hours.end) == ("22:00", "07:30")
    assert email.quiet_hours.timezone == "Europe/London"
    # The pause ends when the chosen day starts in the customer's zone (GMT in December).
    assert setup.channels[0].paused_until == datetime(2026, 12, 24, tzinfo=UTC)


def test_only_the_consents_the_customer_changed_become_events() -> None:
    shown = _shown_of(state_from_broadcast(TODAYS_ANSWER))
    submitted = {name: value for name, value in shown.items() if value}
    submitted["consent.marketing.sms"] = CHECKED  # was refused
    del submitted["consent.marketing.email"]  # was granted
    submission = read_form(submitted, shown, NOW)
    assert submission.setup is None
    assert submission.consents == {
        (ContactPurpose.MARKETING, "sms"): True,
        (ContactPurpose.MARKETING, "email"): False,
    }
    events = submission_events(submission, "wording-7", "preference centre")
    assert [kind for kind, _ in events] == [CONSENT_RECORDED, CONSENT_RECORDED]
    revoked, granted = (record for _, record in events)  # in page order: e-mail, then SMS
    assert granted.model_dump(exclude_none=True) == {
        "purpose": "marketing",
        "channel": "sms",
        "state": "granted",
        "capture_method": "preference_centre",
        "wording_version": "wording-7",
        "evidence": "preference centre",
    }
    assert revoked.model_dump()["state"] == ConsentState.REVOKED


def test_personalisation_is_one_consent_for_every_channel() -> None:
    shown = _shown_of(CentreState())
    submission = read_form({**shown, "consent.personalisation.all": CHECKED}, shown, NOW)
    [(kind, record)] = submission_events(submission, "w-1", "preference centre")
    assert kind == CONSENT_RECORDED
    assert record.model_dump()["channel"] is None


def test_a_changed_set_up_comes_before_the_consents() -> None:
    shown = _shown_of(CentreState())
    submitted = {**shown, "email.enabled": CHECKED, "consent.service.email": CHECKED}
    events = submission_events(read_form(submitted, shown, NOW), "w-1", "e")
    assert [kind for kind, _ in events] == [CHANNEL_PREFERENCE_SET_V2, CONSENT_RECORDED]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("email.address", "not-an-address", "not an e-mail address"),
        ("sms.address", "call me", "not a phone number"),
        ("email.quiet_start", "25:00", "HH:MM"),
        ("email.max_per_day", "-1", "whole number"),
        ("email.max_per_day", "1001", "less than or equal to 1000"),
        ("email.rank", "9", "from 1 to 6"),
        ("email.paused_until", "2026-11-28", "after today"),
        ("email.paused_until", "next week", "YYYY-MM-DD"),
        ("timezone", "Mars/Olympus", "time zone"),
    ],
)
def test_invalid_fields_are_named_with_what_to_do(field: str, value: str, message: str) -> None:
    shown = _shown_of(CentreState())
    submitted = {**shown, "email.enabled": CHECKED, "sms.enabled": CHECKED, field: value}
    with pytest.raises(InvalidForm) as raised:
        read_form(submitted, shown, NOW)
    assert message in raised.value.problems[field]


def test_every_problem_of_a_channel_is_named_at_once() -> None:
    shown = _shown_of(CentreState())
    submitted = {
        **shown,
        "email.enabled": CHECKED,
        "email.address": "ann at example",
        "email.max_per_day": "5000",
        "email.quiet_start": "7pm",
    }
    with pytest.raises(InvalidForm) as raised:
        read_form(submitted, shown, NOW)
    assert set(raised.value.problems) == {
        "email.address",
        "email.max_per_day",
        "email.quiet_start",
        "email.quiet_end",
    }


def test_quiet_hours_need_both_ends_apart() -> None:
    shown = _shown_of(CentreState())
    submitted = {**shown, "email.enabled": CHECKED, "email.quiet_start": "22:00"}
    with pytest.raises(InvalidForm) as raised:
        read_form(submitted, shown, NOW)
    assert "email.quiet_end" in raised.value.problems
    submitted["email.quiet_end"] = "22:00"
    with pytest.raises(InvalidForm, match="another time"):
        read_form(submitted, shown, NOW)


def test_unticking_every_channel_says_how_to_stop_messages_instead() -> None:
    shown = _shown_of(state_from_broadcast(TODAYS_ANSWER))
    submitted = {name: value for name, value in shown.items() if not name.endswith(".enabled")}
    with pytest.raises(InvalidForm) as raised:
        read_form(submitted, shown, NOW)
    assert "untick the consents" in raised.value.problems["channels"]


def test_an_altered_copy_of_the_shown_values_publishes_the_whole_form() -> None:
    assert shown_values("{not json") == {}
    assert shown_values('["a"]') == {}
    shown = _shown_of(state_from_broadcast(TODAYS_ANSWER))
    submitted = {name: value for name, value in shown.items() if value}
    submission = read_form(submitted, shown_values("{not json"), NOW)
    assert submission.setup is not None
    assert submission.consents[(ContactPurpose.MARKETING, "email")] is True


def test_an_unsubscribe_link_withdraws_the_consent_it_names_with_its_message_as_evidence() -> None:
    claims = LinkClaims("c-1", purpose="marketing", channel="email", message_id="msg-9")
    record = unsubscribe_record(claims, "192.0.2.7")
    assert record.model_dump() == {
        "purpose": "marketing",
        "channel": "email",
        "state": "revoked",
        "capture_method": ConsentCapture.UNSUBSCRIBE_LINK,
        "wording_version": None,
        "evidence": "one-click unsubscribe, link from message msg-9, client 192.0.2.7",
    }
    assert unsubscribe_record(LinkClaims("c-1"), None).model_dump()["channel"] is None


def test_transactional_messages_and_unknown_purposes_cannot_be_unsubscribed() -> None:
    with pytest.raises(InvalidUnsubscribe, match="cannot be unsubscribed"):
        unsubscribe_record(LinkClaims("c-1", purpose="transactional"), None)
    with pytest.raises(InvalidUnsubscribe, match="do not know"):
        unsubscribe_record(LinkClaims("c-1", purpose="marketing", channel="pigeon"), None)


def test_the_same_link_gives_the_same_unsubscribe_event_id() -> None:
    assert unsubscribe_event_id("token-a") == unsubscribe_event_id("token-a")
    assert unsubscribe_event_id("token-a") != unsubscribe_event_id("token-b")


def test_the_link_secret_is_long_or_unset() -> None:
    assert PlatformSettings(link_secret=SecretStr("")).link_secret is None
    with pytest.raises(ValueError, match="CRM_LINK_SECRET must be at least 16"):
        PlatformSettings(link_secret=SecretStr("short"))
    secret = PlatformSettings(link_secret=SecretStr("0123456789abcdef")).link_secret
    assert secret is not None and secret.get_secret_value() == "0123456789abcdef"
