"""THE contact decision (broadcast_service.decision) and the v2 folds it reads: channel set-ups,
consents with evidence and double opt-in, do-not-contact entries, complaint and detractor holds."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from broadcast_service.decision import (
    ContactPolicy,
    CustomerReach,
    Decision,
    contact_decision,
    quiet_until,
    reach_of,
)
from broadcast_service.metrics import count_decision
from broadcast_service.projection import (
    ChannelPreferences,
    ChannelSetup,
    ComplaintHold,
    Consent,
    ConsentStateName,
    DetractorHold,
    DoNotContact,
    QuietWindow,
    RecentSend,
    consent_from,
    evolve_complaints,
    evolve_consents,
    evolve_detractors,
    evolve_do_not_contact,
    evolve_preferences,
    preferences_from,
)
from tests.unit.events_factory import at, event

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)  # 13:00 in London (summer time)
NIGHT = QuietWindow(time(22, 0), time(7, 0), "Europe/London")


def _setup(
    channel: str = "email", address: str | None = "a@example.com", **kw: Any
) -> ChannelSetup:
    return ChannelSetup(channel, address, **kw)


def _consent(
    purpose: str = "marketing",
    channel: str = "*",
    state: ConsentStateName = "granted",
    minutes: float = -60,
    capture: str = "double_opt_in",
) -> Consent:
    return Consent(
        "C1",
        purpose,
        channel,
        state,
        NOW + timedelta(minutes=minutes),
        "test",
        f"{purpose}-{channel}-{minutes}",
        capture_method=capture,
    )


def _reach(
    *setups: ChannelSetup,
    consents: tuple[Consent, ...] = (),
    dnc: tuple[tuple[str, str], ...] = (),
    complaints: tuple[str, ...] = (),
    detractor_days_ago: float | None = None,
) -> CustomerReach:
    preferences = ChannelPreferences("C1", setups, "Europe/London", at(0), "test", "p1")
    return reach_of(
        preferences,
        consents,
        [DoNotContact("C1", ch, True, reason, None, at(0), "test", ch) for ch, reason in dnc],
        [ComplaintHold("C1", case, True, at(0), "test", case) for case in complaints],
        None
        if detractor_days_ago is None
        else DetractorHold("C1", "nps", 3, NOW - timedelta(days=detractor_days_ago), "i", "d"),
    )


def _decide(reach: CustomerReach, purpose: str = "marketing", **kw: Any) -> Decision:
    sends = kw.pop("sends", ())
    return contact_decision(reach, sends, purpose, kw.pop("at", NOW), **kw)


def _codes(decision: Decision) -> list[list[str]]:
    return [[r.code for r in verdict.reasons] for verdict in decision.channels]


GRANTED = (_consent(),)


# --- set-up and consent ---------------------------------------------------------------------


def test_without_a_channel_set_up_nobody_is_contacted() -> None:
    decision = _decide(reach_of(None, GRANTED))
    assert not decision.contact
    assert decision.codes == ("no_preferences",)
    assert decision.possible_at is None


def test_the_first_preferred_channel_that_may_be_used_is_chosen_with_its_address() -> None:
    reach = _reach(
        _setup("sms", "+4470000"),
        _setup("email"),
        consents=(_consent(channel="email"),),
    )
    decision = _decide(reach)
    assert (decision.channel, decision.address) == ("email", "a@example.com")
    assert _codes(decision) == [["no_consent"], ["allowed"]]
    assert decision.reason == "email is the first preferred channel that may be used now"


@pytest.mark.parametrize("state", ["revoked", "denied"])
def test_a_refused_consent_is_no_consent_and_does_not_pass_with_time(
    state: ConsentStateName,
) -> None:
    decision = _decide(_reach(_setup(), consents=(_consent(state=state),)))
    assert _codes(decision) == [["consent_refused"]]
    assert decision.possible_at is None
    assert state in decision.reason


def test_the_newer_of_the_channel_state_and_the_every_channel_state_decides() -> None:
    older_general_refusal = (
        _consent(state="revoked", minutes=-100),
        _consent(channel="email", minutes=-50),
    )
    assert _decide(_reach(_setup(), consents=older_general_refusal)).contact
    newer_general_refusal = (
        _consent(channel="email", minutes=-100),
        _consent(state="revoked", minutes=-50),
    )
    assert not _decide(_reach(_setup(), consents=newer_general_refusal)).contact


def test_a_channel_without_address_is_not_used() -> None:
    decision = _decide(_reach(_setup(address=None), consents=GRANTED))
    assert _codes(decision) == [["no_address"]]


def test_the_purpose_is_normalised() -> None:
    assert _decide(_reach(_setup(), consents=GRANTED), " Marketing ").contact


# --- double opt-in ---------------------------------------------------------------------------


def test_a_marketing_email_grant_from_a_web_form_waits_for_double_opt_in() -> None:
    signed_up = _consent(capture="web_form", minutes=-10)
    reach = _reach(_setup(), _setup("sms", "+44"), consents=(signed_up,))
    decision = _decide(reach)
    assert _codes(decision) == [["consent_unconfirmed"], ["allowed"]]
    assert decision.channel == "sms"  # double opt-in is required on e-mail only


def test_a_later_double_opt_in_grant_confirms_the_email_consent() -> None:
    signed_up = _consent(capture="web_form", minutes=-10)
    confirmed = _consent(channel="email", capture="double_opt_in", minutes=-5)
    assert _decide(_reach(_setup(), consents=(signed_up, confirmed))).channel == "email"


def test_a_pending_consent_is_no_consent() -> None:
    decision = _decide(_reach(_setup("sms", "+44"), consents=(_consent(state="pending"),)))
    assert _codes(decision) == [["consent_pending"]]


def test_double_opt_in_applies_only_where_the_policy_requires_it() -> None:
    reach = _reach(_setup(), consents=(_consent(capture="web_form"),))
    assert _decide(reach, policy=ContactPolicy(double_opt_in=frozenset())).contact
    service = _reach(_setup(), consents=(_consent("service", capture="web_form"),))
    assert _decide(service, "service").contact


# --- do-not-contact and transactional -------------------------------------------------------


def test_do_not_contact_stops_marketing_on_that_channel_only() -> None:
    reach = _reach(_setup(), _setup("sms", "+44"), consents=GRANTED, dnc=(("email", "complaint"),))
    decision = _decide(reach)
    assert decision.channel == "sms"
    assert _codes(decision) == [["do_not_contact"], ["allowed"]]
    assert "complaint" in decision.channels[0].reasons[0].text


def test_a_do_not_contact_on_every_channel_stops_every_channel() -> None:
    reach = _reach(_setup(), _setup("sms", "+44"), consents=GRANTED, dnc=(("*", "unsubscribed"),))
    assert _codes(_decide(reach)) == [["do_not_contact"], ["do_not_contact"]]


def test_transactional_needs_no_consent_and_ignores_quiet_hours_pause_caps_and_unsubscribes() -> (
    None
):
    at_night = datetime(2024, 5, 1, 23, 30, tzinfo=UTC)
    setup = _setup(quiet_hours=NIGHT, max_per_day=1, paused_until=at_night + timedelta(days=1))
    sends = [RecentSend("email", "marketing", at_night - timedelta(hours=1))]
    reach = _reach(setup, dnc=(("email", "unsubscribed"),), complaints=("K1",))
    decision = _decide(reach, "transactional", at=at_night, sends=sends)
    assert decision.channel == "email"


@pytest.mark.parametrize("reason", ["legal", "bounced"])
def test_a_legal_or_bounced_do_not_contact_stops_transactional_too(reason: str) -> None:
    decision = _decide(_reach(_setup(), dnc=(("*", reason),)), "transactional")
    assert _codes(decision) == [["do_not_contact"]]


def test_an_explicit_refusal_of_transactional_messages_counts() -> None:
    reach = _reach(_setup(), consents=(_consent("transactional", state="revoked"),))
    assert _codes(_decide(reach, "transactional")) == [["consent_refused"]]


# --- quiet hours across time zones and daylight saving -------------------------------------


@pytest.mark.parametrize(
    ("hour", "minute", "quiet"),
    [(21, 59, False), (22, 0, True), (23, 30, True), (0, 0, True), (6, 59, True), (7, 0, False)],
)
def test_quiet_hours_crossing_midnight(hour: int, minute: int, quiet: bool) -> None:
    winter = datetime(2024, 1, 15, hour, minute, tzinfo=UTC)  # London is on UTC in winter
    assert (quiet_until(NIGHT, winter) is not None) == quiet


def test_quiet_hours_end_on_the_local_morning_after_the_spring_change() -> None:
    # London moves to summer time at 01:00 UTC on 31 March 2024: 07:00 local is 06:00 UTC.
    evening = datetime(2024, 3, 30, 22, 30, tzinfo=UTC)
    assert quiet_until(NIGHT, evening) == datetime(2024, 3, 31, 6, 0, tzinfo=UTC)
    assert quiet_until(NIGHT, datetime(2024, 3, 30, 21, 30, tzinfo=UTC)) is None


def test_quiet_hours_end_on_the_local_morning_after_the_autumn_change() -> None:
    # Back to GMT at 01:00 UTC on 27 October 2024: 22:00 local on the 26th is 21:00 UTC.
    evening = datetime(2024, 10, 26, 21, 30, tzinfo=UTC)
    assert quiet_until(NIGHT, evening) == datetime(2024, 10, 27, 7, 0, tzinfo=UTC)


def test_quiet_hours_in_new_york_across_the_spring_change() -> None:
    window = QuietWindow(time(21, 0), time(8, 0), "America/New_York")
    # 22:00 EST on 9 March 2024; clocks go forward at 02:00 on the 10th: 08:00 EDT = 12:00 UTC.
    assert quiet_until(window, datetime(2024, 3, 10, 3, 0, tzinfo=UTC)) == datetime(
        2024, 3, 10, 12, 0, tzinfo=UTC
    )


def test_quiet_hours_delay_and_say_until_when() -> None:
    at_night = datetime(2024, 5, 1, 22, 30, tzinfo=UTC)  # 23:30 in London
    decision = _decide(_reach(_setup(quiet_hours=NIGHT), consents=GRANTED), at=at_night)
    assert _codes(decision) == [["quiet_hours"]]
    assert decision.possible_at == datetime(2024, 5, 2, 6, 0, tzinfo=UTC)
    assert "07:00 Europe/London" in decision.reason


def test_another_channel_outside_its_quiet_hours_is_used() -> None:
    at_night = datetime(2024, 5, 1, 22, 30, tzinfo=UTC)
    push = _setup("push", "token", quiet_hours=QuietWindow(time(1, 0), time(5, 0), "UTC"))
    reach = _reach(_setup(quiet_hours=NIGHT), push, consents=GRANTED)
    assert _decide(reach, at=at_night).channel == "push"


def test_a_quiet_window_without_its_own_zone_is_read_in_the_customers_zone() -> None:
    data = {
        "timezone": "America/New_York",
        "channels": [
            {
                "channel": "email",
                "address": "a@b.c",
                "quiet_hours": {"start": "21:00", "end": "08:00"},
            },
            {
                "channel": "sms",
                "address": "+1",
                "quiet_hours": {"start": "21:00", "end": "08:00", "timezone": "UTC"},
            },
        ],
    }
    record = preferences_from(event("crm.channel_preference.set.v2", "C1", data))
    assert [s.quiet_hours.timezone for s in record.channels if s.quiet_hours] == [
        "America/New_York",
        "UTC",
    ]


# --- pause and frequency budget -------------------------------------------------------------


def test_a_paused_channel_is_delayed_until_the_pause_ends() -> None:
    until = NOW + timedelta(days=2)
    decision = _decide(_reach(_setup(paused_until=until), consents=GRANTED))
    assert _codes(decision) == [["paused"]]
    assert decision.possible_at == until
    assert _decide(_reach(_setup(paused_until=until), consents=GRANTED), at=until).contact


def test_the_instant_a_delay_ends_is_moved_past_quiet_hours() -> None:
    pause_ends = datetime(2024, 5, 1, 22, 30, tzinfo=UTC)  # 23:30 in London: quiet
    decision = _decide(_reach(_setup(paused_until=pause_ends, quiet_hours=NIGHT), consents=GRANTED))
    assert decision.possible_at == datetime(2024, 5, 2, 6, 0, tzinfo=UTC)


def _sent(hours_ago: float, channel: str = "email", purpose: str = "marketing") -> RecentSend:
    return RecentSend(channel, purpose, NOW - timedelta(hours=hours_ago))


def test_the_daily_cap_counts_every_purpose_on_the_channel_and_frees_a_day_after() -> None:
    consents = (_consent(), _consent("service"))
    reach = _reach(_setup(max_per_day=2), consents=consents)
    sends = [_sent(20, purpose="service"), _sent(3, purpose="marketing"), _sent(2, channel="sms")]
    decision = _decide(reach, "service", sends=sends)
    assert _codes(decision) == [["daily_cap"]]
    assert decision.possible_at == NOW + timedelta(hours=4)  # when the 20-hour-old send leaves
    assert _decide(reach, "service", sends=sends[1:]).contact  # one e-mail in the last day


def test_marketing_leaves_the_last_message_of_the_budget_to_service() -> None:
    reach = _reach(_setup(max_per_day=2), consents=(_consent(), _consent("service")))
    sends = [_sent(3)]
    assert _codes(_decide(reach, "marketing", sends=sends)) == [["daily_cap"]]
    assert _decide(reach, "service", sends=sends).contact
    assert _decide(reach, "marketing").contact
    single = _reach(_setup(max_per_day=1), consents=GRANTED)
    assert _decide(single).contact  # a budget of one is not split


def test_the_weekly_cap_counts_the_last_seven_days() -> None:
    reach = _reach(_setup(max_per_week=3), consents=(_consent("service"),))
    sends = [_sent(24 * 6), _sent(24 * 3), _sent(30), _sent(24 * 8)]
    decision = _decide(reach, "service", sends=sends)
    assert _codes(decision) == [["weekly_cap"]]
    assert decision.possible_at == NOW + timedelta(days=1)


def test_a_cap_of_zero_refuses_without_an_instant() -> None:
    decision = _decide(_reach(_setup(max_per_day=0), consents=GRANTED))
    assert _codes(decision) == [["daily_cap"]]
    assert decision.possible_at is None


# --- holds -----------------------------------------------------------------------------------


def test_an_open_complaint_holds_back_marketing_but_not_service() -> None:
    consents = (_consent(), _consent("service"))
    reach = _reach(_setup(), consents=consents, complaints=("K-7",))
    decision = _decide(reach)
    assert _codes(decision) == [["complaint_open"]]
    assert decision.possible_at is None
    assert "K-7" in decision.reason
    assert _decide(reach, "service").contact


def test_a_recent_detractor_is_held_back_from_marketing_for_the_window() -> None:
    consents = (_consent(), _consent("service"))
    reach = _reach(_setup(), consents=consents, detractor_days_ago=10)
    decision = _decide(reach)
    assert _codes(decision) == [["detractor"]]
    assert decision.possible_at == NOW + timedelta(days=20)
    assert _decide(reach, "service").contact
    assert _decide(reach, policy=ContactPolicy(detractor_hold=timedelta(days=5))).contact
    assert _decide(_reach(_setup(), consents=consents, detractor_days_ago=31)).contact


# --- the question asked ---------------------------------------------------------------------


def test_asking_about_one_channel_considers_only_that_channel() -> None:
    reach = _reach(_setup(), _setup("sms", "+44"), consents=GRANTED)
    assert _decide(reach, channel="sms").channel == "sms"
    decision = _decide(reach, channel="push")
    assert decision.codes == ("channel_not_chosen",)


def test_a_refused_channel_gives_every_refusal_and_no_delay() -> None:
    at_night = datetime(2024, 5, 1, 22, 30, tzinfo=UTC)
    reach = _reach(
        _setup(address=None, quiet_hours=NIGHT),
        consents=(_consent(state="revoked"),),
        complaints=("K1",),
    )
    decision = _decide(reach, at=at_night)
    assert decision.codes == ("no_address", "consent_refused", "complaint_open")
    assert decision.possible_at is None


def test_a_delayed_channel_gives_every_delay_and_the_instant_they_have_all_passed() -> None:
    at_night = datetime(2024, 5, 1, 22, 30, tzinfo=UTC)
    paused = at_night + timedelta(days=3)
    reach = _reach(
        _setup(quiet_hours=NIGHT, paused_until=paused), consents=GRANTED, detractor_days_ago=29
    )
    decision = _decide(reach, at=at_night)
    assert decision.codes == ("paused", "quiet_hours", "detractor")
    # The pause ends last, at 23:30 in London: quiet, so 07:00 the next morning.
    assert decision.possible_at == datetime(2024, 5, 5, 6, 0, tzinfo=UTC)


def test_the_earliest_delayed_channel_gives_the_decisions_instant() -> None:
    reach = _reach(
        _setup(paused_until=NOW + timedelta(hours=5)),
        _setup("sms", "+44", paused_until=NOW + timedelta(hours=2)),
        _setup("push", None),
        consents=GRANTED,
    )
    assert _decide(reach).possible_at == NOW + timedelta(hours=2)


def test_a_time_without_offset_is_refused() -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        _decide(_reach(_setup()), at=datetime(2024, 1, 1, 12))


# --- folds of v2 events and v1 read as v2 ---------------------------------------------------


def test_a_v2_set_up_keeps_addresses_order_caps_and_pause() -> None:
    data = {
        "timezone": "Europe/London",
        "channels": [
            {"channel": "sms", "address": "+44", "max_per_day": 1, "max_per_week": 3},
            {"channel": "email", "address": "a@b.c", "paused_until": "2024-06-01T00:00:00+02:00"},
        ],
    }
    record = evolve_preferences({}, [event("crm.channel_preference.set.v2", "C1", data)])["C1"]
    assert record.channels == (
        ChannelSetup("sms", "+44", None, 1, 3, None),
        ChannelSetup("email", "a@b.c", None, None, None, datetime(2024, 5, 31, 22, tzinfo=UTC)),
    )
    assert record.timezone == "Europe/London"


def test_a_v1_set_up_drops_channels_the_company_does_not_send_on() -> None:
    v1 = event("crm.channel_preference.set.v1", "C1", {"channels": ["web", "sms", "store"]})
    assert [s.channel for s in preferences_from(v1).channels] == ["sms"]


def test_a_v2_and_a_v1_set_up_are_one_last_writer_wins_record() -> None:
    v2 = event(
        "crm.channel_preference.set.v2", "C1", {"channels": [{"channel": "push"}]}, minutes=5
    )
    v1 = event("crm.channel_preference.set.v1", "C1", {"channels": ["sms"]}, minutes=1)
    changed = evolve_preferences({}, [v2, v1])
    assert [s.channel for s in changed["C1"].channels] == ["push"]


def test_a_v2_consent_keeps_its_evidence() -> None:
    data = {
        "purpose": "marketing",
        "channel": "email",
        "state": "granted",
        "capture_method": "web_form",
        "wording_version": "2024-04",
        "evidence": "https://shop/signup from 10.0.0.1",
    }
    consent = consent_from(event("crm.consent.recorded.v2", "C1", data, source="shop"))
    assert (consent.state, consent.capture_method, consent.wording_version, consent.evidence) == (
        "granted",
        "web_form",
        "2024-04",
        "https://shop/signup from 10.0.0.1",
    )
    assert consent.source == "shop"


@pytest.mark.parametrize(
    ("purpose", "granted_as", "revoked_as"),
    [
        ("Marketing", ("marketing", "granted"), ("marketing", "revoked")),
        ("newsletter", ("marketing", "granted"), ("marketing", "revoked")),
        ("Personalization", ("personalisation", "granted"), ("personalisation", "revoked")),
        ("partner-offers-xyz", ("marketing", "pending"), ("marketing", "revoked")),
    ],
)
def test_v1_purposes_are_read_as_the_four_purposes(
    purpose: str, granted_as: tuple[str, str], revoked_as: tuple[str, str]
) -> None:
    grant = consent_from(event("crm.consent.granted.v1", "C1", {"purpose": purpose}))
    revoke = consent_from(event("crm.consent.revoked.v1", "C1", {"purpose": purpose}))
    assert (grant.purpose, grant.state) == granted_as
    assert (revoke.purpose, revoke.state) == revoked_as
    assert grant.capture_method == "api"
    assert purpose in (grant.evidence or "")


def test_a_refusal_beats_a_pending_consent_which_beats_a_grant_of_the_same_instant() -> None:
    def recorded(state: str, event_id: str) -> Any:
        data = {"purpose": "marketing", "state": state, "capture_method": "web_form"}
        return event("crm.consent.recorded.v2", "C1", data, event_id=event_id)

    events = [recorded("granted", "z"), recorded("pending", "y"), recorded("denied", "a")]
    for order in (events, events[::-1]):
        assert evolve_consents({}, order)[("C1", "marketing", "*")].state == "denied"
    assert evolve_consents({}, events[:2])[("C1", "marketing", "*")].state == "pending"


def test_do_not_contact_entries_are_last_writer_wins_and_an_entry_beats_its_removal() -> None:
    added = event(
        "crm.do_not_contact.added.v1",
        "C1",
        {"channel": "sms", "reason": "legal"},
        minutes=1,
        event_id="a",
    )
    removed = event(
        "crm.do_not_contact.removed.v1", "C1", {"channel": "sms"}, minutes=1, event_id="z"
    )
    for order in ([added, removed], [removed, added]):
        entry = evolve_do_not_contact({}, order)[("C1", "sms")]
        assert (entry.listed, entry.reason) == (True, "legal")
    later = replace_time(removed, 2)
    stored = evolve_do_not_contact({}, [added])
    assert not evolve_do_not_contact(stored, [later])[("C1", "sms")].listed


def replace_time(original: Any, minutes: float) -> Any:
    return replace(original, time=at(minutes), id=f"{original.id}-later")


def test_complaints_open_and_close_by_case_and_the_latest_detractor_score_is_kept() -> None:
    step = {"topic": "late delivery", "priority": "high", "department": "support"}
    opened = event("crm.complaint.opened.v1", "C1", {"case_id": "K1", **step}, minutes=0)
    closed = event(
        "crm.complaint.closed.v1", "C1", {"case_id": "K1", "outcome": "resolved"}, minutes=5
    )
    other = event("crm.complaint.opened.v1", "C1", {"case_id": "K2", **step}, minutes=1)
    holds = evolve_complaints({}, [closed, opened, other])
    assert {case: h.open for (_, case), h in holds.items()} == {"K1": False, "K2": True}
    score = {"measure": "nps", "touchpoint": "delivery", "feedback_source": "s", "feedback_id": "f"}
    scores = [
        event("crm.customer.detractor_scored.v1", "C1", {**score, "score": s}, minutes=m)
        for s, m in ((2, 10), (5, 3))
    ]
    assert evolve_detractors({}, scores)["C1"].score == 2


def test_reach_of_keeps_only_listed_entries_and_open_complaints() -> None:
    reach = reach_of(
        None,
        (),
        [
            DoNotContact("C1", "sms", False, None, None, at(0), "t", "1"),
            DoNotContact("C1", "*", True, "legal", None, at(0), "t", "2"),
        ],
        [
            ComplaintHold("C1", "K1", False, at(0), "t", "3"),
            ComplaintHold("C1", "K2", True, at(0), "t", "4"),
        ],
    )
    assert list(reach.do_not_contact) == ["*"]
    assert reach.holds.open_complaints == ("K2",)


def test_a_decision_is_the_same_for_the_same_inputs() -> None:
    reach = _reach(_setup(quiet_hours=NIGHT, max_per_day=3), consents=GRANTED)
    assert _decide(reach, sends=[_sent(1)]) == _decide(replace(reach), sends=[_sent(1)])


def test_decisions_are_counted_by_purpose_outcome_and_each_reason_code() -> None:
    def count(outcome: str, reason: str) -> float:
        labels = {"purpose": "marketing", "outcome": outcome, "reason": reason}
        return REGISTRY.get_sample_value("crm_broadcast_decisions_total", labels) or 0.0

    before = (
        count("refused", "no_address"),
        count("delayed", "paused"),
        count("contact", "allowed"),
    )
    count_decision(_decide(_reach(_setup(address=None), consents=GRANTED)))
    count_decision(_decide(_reach(_setup(paused_until=NOW + timedelta(1)), consents=GRANTED)))
    count_decision(_decide(_reach(_setup(), consents=GRANTED)))
    after = (
        count("refused", "no_address"),
        count("delayed", "paused"),
        count("contact", "allowed"),
    )
    assert [b - a for a, b in zip(before, after, strict=True)] == [1.0, 1.0, 1.0]
