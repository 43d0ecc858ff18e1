"""The demo load ends with a newsletter to the lapsed customers: the campaign event the gateway
publishes, due a few minutes after the load, that renders for a demo customer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broadcast_service.campaigns import Addressee, Product, campaign_from, render_for
from broadcast_service.templates import Links
from crm_shared.contracts.events import CAMPAIGN_DEFINED, CampaignDefined, validate_event
from crm_shared.ops.demo import newsletter
from crm_shared.ops.demo.load import demo_events
from crm_shared.ops.demo.retail import Row, transform

LOADED_AT = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
LINKS = Links("a-secret-for-the-unit-tests", "https://crm.example.com")


def _invoice(customer: str, invoice: str) -> Row:
    return Row(
        2,
        invoice,
        "85123A",
        "WHITE HANGING HEART T-LIGHT HOLDER",
        "6",
        "2010-12-01 08:26:00",
        "2.55",
        customer,
        "United Kingdom",
    )


def test_the_demo_load_publishes_the_newsletter_after_every_customer_fact() -> None:
    data = transform([_invoice("17850", "536365"), _invoice("13047", "536366")])
    documents = demo_events(data, seed=7, loaded_at=LOADED_AT)
    *facts, last = documents
    assert {"crm.order.placed.v1", "crm.consent.recorded.v2"} <= {d["type"] for d in facts}
    assert CAMPAIGN_DEFINED not in {d["type"] for d in facts}
    assert (last["type"], last["subject"]) == (CAMPAIGN_DEFINED, newsletter.CAMPAIGN_ID)


def test_the_newsletter_emails_the_lapsed_segment_five_minutes_after_the_load() -> None:
    event = validate_event(newsletter.definition(LOADED_AT))
    definition = event.data
    assert isinstance(definition, CampaignDefined)
    assert definition.target.segment == "lapsed"
    assert (definition.kind.value, definition.purpose.value) == ("newsletter", "marketing")
    assert [template.channel.value for template in definition.templates] == ["email"]
    assert definition.send_at == LOADED_AT + timedelta(minutes=5)
    assert event.time == LOADED_AT


def test_loading_again_defines_the_same_newsletter_event() -> None:
    first = newsletter.definition(LOADED_AT)
    again = newsletter.definition(LOADED_AT + timedelta(days=1))
    assert first["id"] == again["id"] == "demo-campaign-demo-newsletter"


def test_the_newsletter_renders_a_customers_picks_and_signed_links() -> None:
    campaign = campaign_from(validate_event(newsletter.definition(LOADED_AT)))
    who = Addressee(
        "17850",
        "Ann",
        (Product("85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "bought with 71053"),),
        (Product("22423", "REGENCY CAKESTAND 3 TIER", "new"),),
    )
    message = render_for(campaign, "email", who, "m-1", LINKS)
    assert message.subject == "Ann, we picked these for you"
    assert "- WHITE HANGING HEART T-LIGHT HOLDER (bought with 71053)" in message.text
    assert "- REGENCY CAKESTAND 3 TIER" in message.text
    assert "Unsubscribe: https://crm.example.com/unsubscribe?token=" in message.text
    nameless = render_for(campaign, "email", Addressee("13047"), "m-2", LINKS)
    assert nameless.subject == "We picked these for you"
