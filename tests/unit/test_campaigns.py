"""Campaigns, purely: definitions folded, templates checked, recipients decided and planned (one
narrow row each, ids stable, quiet hours and throttle in not_before), messages rendered."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import time, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from broadcast_service.campaigns import (
    PLANNED,
    PLANNED_LATER,
    Addressee,
    Campaign,
    Product,
    Reached,
    Recipient,
    campaign_from,
    evolve_campaigns,
    newest_contacts,
    newest_recommendations,
    plan_signatures,
    render_for,
    started_if_due,
)
from broadcast_service.decision import reach_of, registered_addresses
from broadcast_service.metrics import count_planned
from broadcast_service.projection import ChannelPreferences, ChannelSetup, Consent, QuietWindow
from broadcast_service.store import cut_ranges
from broadcast_service.templates import Links, LinksUnavailable
from crm_shared.contracts.events import (
    CAMPAIGN_CANCELLED,
    CAMPAIGN_DEFINED,
    InvalidEvent,
    build_event,
)
from crm_shared.runtime.links import read_link
from tests.campaign_reference import message_id, plan_batch, planned_row
from tests.unit.events_factory import T0, at, event

LINKS = Links("a-secret-for-the-unit-tests", "https://crm.example.com")
EMAIL_TEMPLATE = {
    "channel": "email",
    "subject": "For you, {{ name or 'friend' }}",
    "text": "{% for p in recommendations %}{{ p.description }} ({{ p.reason }})\n{% endfor %}"
    "New: {% for p in new_products %}{{ p.description }}{% endfor %}\n"
    "Unsubscribe: {{ unsubscribe_url }}",
    "html": "<p>Hello {{ name }}</p><a href='{{ preference_centre_url }}'>preferences</a>",
}


def _definition(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "Spring picks",
        "kind": "newsletter",
        "purpose": "marketing",
        "target": {"segment": "vip"},
        "templates": [EMAIL_TEMPLATE, {"channel": "sms", "text": "Hi {{ name }}"}],
        "include_recommendations": True,
        "max_recommendations": 2,
    } | overrides


def _campaign(campaign_id: str = "spring", minutes: float = 0, **overrides: Any) -> Campaign:
    return campaign_from(
        event(CAMPAIGN_DEFINED, campaign_id, _definition(**overrides), minutes=minutes)
    )


def _recipient(
    customer: str,
    *channels: str,
    quiet: QuietWindow | None = None,
    addresses: dict[str, str] | None = None,
    consents: tuple[Consent, ...] | None = None,
) -> Recipient:
    where = (
        {"email": f"{customer}@example.com", "sms": "+441234"} if addresses is None else addresses
    )
    setups = tuple(ChannelSetup(channel, where.get(channel), quiet) for channel in channels)
    preferences = ChannelPreferences(customer, setups, "Europe/London", T0, "test", f"p-{customer}")
    confirmed = Consent(
        customer, "marketing", "*", "granted", T0, "test", f"c-{customer}", "double_opt_in"
    )
    reach = reach_of(preferences, (confirmed,) if consents is None else consents)
    return Recipient(customer, reach)


def _addressee(customer: str, name: str | None = "Ada") -> Addressee:
    return Addressee(
        customer,
        name,
        tuple(Product(f"P{i}", f"Product {i}", f"because {i}") for i in range(1, 4)),
        (Product("N1", "Brand new", "new"),),
    )


def test_a_template_naming_an_unknown_variable_is_refused_when_defined() -> None:
    bad = _definition(templates=[{"channel": "email", "text": "Hi {{ first_name }}"}])
    with pytest.raises(InvalidEvent, match=r"unknown template variable.*first_name"):
        build_event(CAMPAIGN_DEFINED, "c1", bad, source="test")


def test_a_template_that_does_not_compile_is_refused_with_its_line() -> None:
    bad = _definition(
        templates=[{"channel": "email", "text": "ok\n{% for p in recommendations %}"}]
    )
    with pytest.raises(InvalidEvent, match="email text: template syntax error on line 2"):
        build_event(CAMPAIGN_DEFINED, "c1", bad, source="test")


def test_a_target_names_a_segment_or_a_list_not_both() -> None:
    both = _definition(target={"segment": "vip", "customer_ids": ["C1"]})
    with pytest.raises(InvalidEvent, match="either a segment or a list"):
        build_event(CAMPAIGN_DEFINED, "c1", both, source="test")


def test_a_scheduled_definition_is_replaced_by_a_newer_one_until_planned() -> None:
    first = event(CAMPAIGN_DEFINED, "c1", _definition(name="one"), minutes=0)
    second = event(CAMPAIGN_DEFINED, "c1", _definition(name="two"), minutes=1)
    folded = evolve_campaigns({}, [second, first])  # late first loses
    assert folded["c1"].definition.name == "two"
    planned = {"c1": Campaign(**{**vars(folded["c1"]), "state": "planned"})}
    third = event(CAMPAIGN_DEFINED, "c1", _definition(name="three"), minutes=2)
    assert evolve_campaigns(planned, [third]) == {}


def test_a_cancellation_cancels_and_a_later_definition_does_not_revive_it() -> None:
    defined = event(CAMPAIGN_DEFINED, "c1", _definition(), minutes=0)
    cancelled = event(CAMPAIGN_CANCELLED, "c1", {"reason": "typo"}, minutes=1)
    again = event(CAMPAIGN_DEFINED, "c1", _definition(), minutes=2)
    folded = evolve_campaigns({}, [defined, cancelled, again])
    assert folded["c1"].state == "cancelled"
    assert folded["c1"].cancel_reason == "typo"


def test_an_immediate_campaign_is_due_when_defined_and_a_scheduled_one_at_its_time() -> None:
    now = _campaign()
    later = _campaign(send_at=at(30).isoformat())
    assert now.due(now.defined_at)
    assert not later.due(later.defined_at)
    assert not later.due(at(29))
    assert later.due(at(30))


def test_planning_writes_a_narrow_row_with_a_stable_id() -> None:
    plan = plan_batch(_campaign(), [_recipient("C1", "email")], at(0), 0)
    (row,) = plan.messages
    assert planned_row(row) == (
        message_id("spring", "C1"),
        "spring",
        "C1",
        "email",
        "C1@example.com",
        "marketing",
        at(0),
    )
    assert plan.reasons == {PLANNED: 1}


def test_rendering_gives_personal_recommendations_and_signed_links() -> None:
    msg_id = message_id("spring", "C1")
    message = render_for(_campaign(), "email", _addressee("C1"), msg_id, LINKS)
    assert message.subject == "For you, Ada"
    assert "Product 1 (because 1)\nProduct 2 (because 2)\n" in message.text
    assert "Product 3" not in message.text  # max_recommendations
    assert "New: Brand new" in message.text
    token = message.text.rsplit("?token=", 1)[1]
    claims = read_link(LINKS.secret or "", token)
    assert (claims.customer_id, claims.purpose, claims.channel, claims.message_id) == (
        "C1",
        "marketing",
        "email",
        msg_id,
    )
    assert message.html is not None and "https://crm.example.com/preferences?token=" in (
        message.html
    )


def test_html_bodies_escape_what_customers_typed() -> None:
    message = render_for(_campaign(), "email", _addressee("C1", "<b>Bo</b>"), "m1", LINKS)
    assert "<p>Hello &lt;b&gt;Bo&lt;/b&gt;</p>" in (message.html or "")


def test_the_customers_order_picks_among_the_campaigns_channels() -> None:
    email_only = _campaign(templates=[EMAIL_TEMPLATE])
    plan = plan_batch(email_only, [_recipient("C1", "sms", "email")], at(0), 0)
    assert [m.channel for m in plan.messages] == ["email"]
    both = plan_batch(_campaign(), [_recipient("C1", "sms", "email")], at(0), 0)
    assert [m.channel for m in both.messages] == ["sms"]
    assert render_for(_campaign(), "sms", _addressee("C1"), "m1", LINKS).text == "Hi Ada"


def test_recipients_who_may_not_be_contacted_are_counted_by_reason_codes() -> None:
    no_consent = _recipient("C2", "email", consents=())
    no_address = _recipient("C3", "email", addresses={})
    unknown = Recipient("C4", reach_of(None))
    recipients = [_recipient("C1", "email"), no_consent, no_address, unknown]
    plan = plan_batch(_campaign(), recipients, at(0), 0)
    assert [m.customer_id for m in plan.messages] == ["C1"]
    expected = {PLANNED: 1, "no_consent": 1, "no_address": 1, "no_preferences": 1}
    assert plan.reasons == expected
    groups = [(n, r, 1) for n, r in enumerate(recipients)]
    assert plan_signatures(_campaign(), groups, at(0)).reasons == expected


def test_a_channel_without_its_own_address_uses_the_registered_one() -> None:
    setup = ChannelPreferences("C1", (ChannelSetup("email"),), "UTC", T0, "test", "p")
    confirmed = Consent("C1", "marketing", "*", "granted", T0, "test", "c", "double_opt_in")
    registered = registered_addresses("ada@example.com", None)
    recipient = Recipient("C1", reach_of(setup, (confirmed,), registered=registered))
    (message,) = plan_batch(_campaign(), [recipient], at(0), 0).messages
    assert message.address == "ada@example.com"


def test_quiet_hours_move_the_message_to_their_end() -> None:
    night = QuietWindow(time(9, 0), time(12, 0), "Europe/London")  # T0 is 11:00 in London
    plan = plan_batch(_campaign(), [_recipient("C1", "email", quiet=night)], at(0), 0)
    assert plan.messages[0].not_before == at(60)
    assert plan.reasons == {PLANNED_LATER: 1}


def test_a_throttle_spreads_the_messages_over_time_across_batches() -> None:
    campaign = _campaign(throttle_per_second=2)
    first = plan_batch(campaign, [_recipient(f"C{i}", "email") for i in range(3)], at(0), 0)
    second = plan_batch(campaign, [_recipient("C9", "email")], at(0), 3)
    assert [m.not_before - at(0) for m in [*first.messages, *second.messages]] == [
        timedelta(seconds=s) for s in (0, 0.5, 1, 1.5)
    ]


def test_a_template_failing_for_one_recipient_raises_for_that_recipient_only() -> None:
    campaign = _campaign(templates=[{"channel": "email", "text": "{{ 1 // (name | length) }}"}])
    assert render_for(campaign, "email", _addressee("C1"), "m1", LINKS).text == "0"
    with pytest.raises(ZeroDivisionError):
        render_for(campaign, "email", _addressee("C2", ""), "m2", LINKS)


def test_links_without_a_secret_fail_the_rendering() -> None:
    with pytest.raises(LinksUnavailable):
        render_for(_campaign(), "email", _addressee("C1"), "m1", Links(None, "x"))


def test_an_immediate_campaign_is_marked_planning_and_a_scheduled_one_waits() -> None:
    now, later = _campaign("now"), _campaign("later", send_at=at(30).isoformat())
    marked = {"now": started_if_due(now), "later": started_if_due(later)}
    assert (marked["now"].state, marked["later"].state) == ("planning", "scheduled")
    assert marked["now"].fixed and not marked["later"].fixed


def test_a_redefinition_after_an_immediate_one_is_ignored_however_the_events_are_batched() -> None:
    # Live, the two definitions came in two batches and the first was planning when the second
    # arrived; a rebuild may fold both in one batch and must keep the same definition.
    first = event(CAMPAIGN_DEFINED, "c1", _definition(name="Spring picks"), minutes=0)
    again = event(CAMPAIGN_DEFINED, "c1", _definition(name="Changed"), minutes=1)
    live = evolve_campaigns({}, [first])
    assert evolve_campaigns(live, [again]) == {}
    together = evolve_campaigns({}, [first, again])
    assert together == live
    assert together["c1"].state == "planning"


def test_a_signature_is_reached_at_the_place_of_its_channel_in_the_set_up() -> None:
    # The example's sms has its own address and its e-mail the registered one: the recipients
    # sharing its signature are reached at their own address at that place, or the registered
    # one the channel falls back on (planning fills it in SQL).
    setups = (ChannelSetup("sms", "+1"), ChannelSetup("email"))
    preferences = ChannelPreferences("C1", setups, "UTC", T0, "test", "p-C1")
    consent = Consent("C1", "marketing", "*", "granted", T0, "test", "c-C1", "double_opt_in")
    reach = reach_of(preferences, (consent,), registered={"email": "c1@example.com"})
    example = Recipient("C1", reach)
    refused = _recipient("C3", "email", addresses={}, consents=())
    plan = plan_signatures(_campaign(), [(1, example, 2), (2, refused, 1)], at(0))
    assert plan.reached == [Reached(1, "sms", 0, "phone", at(0))]
    assert plan.reasons == {PLANNED: 2, "no_address + no_consent": 1}
    email_only = _campaign(templates=[{"channel": "email", "text": "Hi"}])
    plan = plan_signatures(email_only, [(1, example, 2)], at(0))
    assert plan.reached == [Reached(1, "email", 1, "email", at(0))]


def test_a_preferred_channel_without_an_address_gives_way_to_the_next() -> None:
    sms_first = _recipient("C1", "sms", "email", addresses={"email": "c1@example.com"})
    plan = plan_batch(_campaign(), [sms_first], at(0), 0)
    assert [(m.channel, m.address) for m in plan.messages] == [("email", "c1@example.com")]
    no_address = _recipient("C2", "sms", "email", addresses={})
    assert plan_signatures(_campaign(), [(1, no_address, 3)], at(0)).reasons == {"no_address": 3}


def test_message_ids_are_the_sha256_uuid_of_campaign_and_customer() -> None:
    namespace = uuid.UUID("0b8f6f0e-3f5c-4d55-9a11-5e2f4c7d9a31")
    for campaign, customer in [("spring", "C1"), ("été", "Zoë-7"), ("", "")]:
        name = f"{campaign}\x1f{customer}".encode()
        digest = bytearray(hashlib.sha256(namespace.bytes + name).digest()[:16])
        digest[6], digest[8] = digest[6] & 0x0F | 0x80, digest[8] & 0x3F | 0x80
        expected = uuid.UUID(bytes=bytes(digest))
        assert message_id(campaign, customer) == str(expected)
        assert (expected.version, expected.variant) == (8, uuid.RFC_4122)


def test_planning_twice_gives_the_same_message_ids() -> None:
    recipients = [_recipient(f"C{i}", "email") for i in range(5)]
    once = plan_batch(_campaign(), recipients, at(0), 0)
    twice = plan_batch(_campaign(), recipients, at(0), 0)
    assert [m.message_id for m in once.messages] == [m.message_id for m in twice.messages]
    assert len({m.message_id for m in once.messages}) == 5


def test_the_highest_recommendation_version_wins_within_a_batch() -> None:
    def refreshed(version: int, product: str) -> Any:
        pick = {"product_id": product, "description": product, "score": 1.0, "reason": "r"}
        data = {"picks": [pick], "personalised": True, "version": version}
        return event("crm.recommendations.refreshed.v1", "C1", data)

    (newest,) = newest_recommendations([refreshed(3, "B"), refreshed(2, "A")])
    assert newest.version == 3
    assert json.loads(newest.picks_json) == [{"product_id": "B", "description": "B", "reason": "r"}]


def test_a_customer_update_keeps_fields_it_does_not_name() -> None:
    registered = event("crm.customer.registered.v1", "C1", {"name": "Ada", "email": "a@x"})
    updated = event("crm.customer.updated.v1", "C1", {"phone": "+44"}, minutes=1)
    (contact,) = newest_contacts([updated, registered])
    assert (contact.name, contact.email, contact.phone) == ("Ada", "a@x", "+44")


def test_planned_recipients_count_as_decisions_by_purpose_outcome_and_reason_code() -> None:
    def count(outcome: str, reason: str) -> float:
        labels = {"purpose": "marketing", "outcome": outcome, "reason": reason}
        return REGISTRY.get_sample_value("crm_broadcast_decisions_total", labels) or 0.0

    night = QuietWindow(time(9, 0), time(12, 0), "Europe/London")  # T0 is 11:00 in London
    recipients = [
        _recipient("C1", "email"),
        _recipient("C2", "email", quiet=night),
        _recipient("C3", "email", consents=()),
        _recipient("C4", "email", consents=()),
    ]
    plan = plan_batch(_campaign(), recipients, at(0), 0)
    assert plan.decided == {
        (PLANNED, ("allowed",)): 1,
        (PLANNED_LATER, ("quiet_hours",)): 1,
        ("no_consent", ("no_consent",)): 2,
    }
    keys = [("contact", "allowed"), ("delayed", "quiet_hours"), ("refused", "no_consent")]
    before = [count(*key) for key in keys]
    count_planned("marketing", plan.decided)
    assert [count(*key) - was for key, was in zip(keys, before, strict=True)] == [1.0, 1.0, 2.0]


def test_a_plan_is_cut_into_ranges_ending_at_each_end_and_one_open_ended() -> None:
    assert cut_ranges(None, ["C10", "C20"]) == [(None, "C10"), ("C10", "C20"), ("C20", None)]
    assert cut_ranges("C05", ["C15"]) == [("C05", "C15"), ("C15", None)]
    assert cut_ranges(None, []) == [(None, None)]
