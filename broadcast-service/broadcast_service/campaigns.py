"""Campaigns and newsletters: their definitions folded, when they are due, and their plans.

Pure: no I/O; time comes from events (the definition, the clock's ticks) and is passed in.
A campaign's definition is last-writer-wins by event time until it is planned, then fixed. It
is planned once, at its send instant: one contact decision per recipient (`decide`, the single
place this module asks for one), one message per recipient who may be contacted, with an id
derived from the campaign and the customer, so planning again adds nothing.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from broadcast_service import projection
from broadcast_service.projection import ChannelPreferences, Consent, RecentSend
from broadcast_service.templates import Links, Personalisation, RenderedMessage, render
from crm_shared.contracts.events import (
    CAMPAIGN_CANCELLED,
    CAMPAIGN_DEFINED,
    CampaignCancelled,
    CampaignDefined,
    Channel,
    CustomerRegistered,
    CustomerUpdated,
    Event,
    MessageTemplate,
    RecommendationsRefreshed,
    RecommendedProduct,
)

CampaignState = Literal["scheduled", "planned", "cancelled"]

_MESSAGE_IDS = uuid.UUID("0b8f6f0e-3f5c-4d55-9a11-5e2f4c7d9a31")

PLANNED = "planned"
PLANNED_AFTER_QUIET_HOURS = "planned after quiet hours"
TEMPLATE_FAILED = "template failed to render"


@dataclass(frozen=True)
class Campaign:
    """A campaign as the broadcast service knows it."""

    campaign_id: str
    definition: CampaignDefined
    send_at: datetime
    state: CampaignState
    defined_at: datetime
    source: str
    event_id: str
    planned_at: datetime | None = None
    cancelled_at: datetime | None = None
    cancel_reason: str | None = None

    @property
    def version(self) -> tuple[datetime, str, str]:
        return (self.defined_at, self.source, self.event_id)

    def due(self, now: datetime) -> bool:
        """Whether it is to be planned at `now` (a tick's time, or its definition's)."""
        return self.state == "scheduled" and self.send_at <= now


def campaign_from(event: Event) -> Campaign:
    data = event.data
    assert isinstance(data, CampaignDefined)
    return Campaign(
        campaign_id=event.customer_id,  # the subject of campaign events is the campaign
        definition=data,
        send_at=data.send_at or event.time,
        state="scheduled",
        defined_at=event.time,
        source=event.source,
        event_id=event.id,
    )


def evolve_campaigns(
    current: Mapping[str, Campaign], events: Iterable[Event]
) -> dict[str, Campaign]:
    """Fold definitions and cancellations in order; returns only the campaigns that changed.

    A newer definition replaces a scheduled one; a planned or cancelled campaign keeps its plan
    (a cancellation of a planned campaign cancels what is not sent yet), and a cancelled one
    stays cancelled. A cancellation of a campaign never defined changes nothing."""
    changed: dict[str, Campaign] = {}
    for event in events:
        before = changed.get(event.customer_id) or current.get(event.customer_id)
        if event.type == CAMPAIGN_DEFINED:
            candidate = campaign_from(event)
            replaces = before is None or before.state == "scheduled"
            if replaces and (before is None or candidate.version > before.version):
                changed[event.customer_id] = candidate
        elif (
            event.type == CAMPAIGN_CANCELLED and before is not None and before.state != "cancelled"
        ):
            # A campaign's events share its key, so its definition always came first.
            data = event.data
            assert isinstance(data, CampaignCancelled)
            changed[event.customer_id] = replace(
                before, state="cancelled", cancelled_at=event.time, cancel_reason=data.reason
            )
    return changed


def message_id(campaign_id: str, customer_id: str) -> str:
    """The same campaign and customer always give the same message id (the plan's dedup key)."""
    return str(uuid.uuid5(_MESSAGE_IDS, f"{campaign_id}\x1f{customer_id}"))


@dataclass(frozen=True)
class Product:
    product_id: str
    description: str | None
    reason: str


@dataclass(frozen=True)
class Recipient:
    """What planning knows of one recipient: what the decision weighs, and what personalises."""

    customer_id: str
    preferences: ChannelPreferences | None
    consents: tuple[Consent, ...]
    recent_sends: tuple[RecentSend, ...] = ()
    name: str | None = None
    addresses: Mapping[str, str] = field(default_factory=dict)
    recommendations: tuple[Product, ...] = ()
    new_products: tuple[Product, ...] = ()


@dataclass(frozen=True)
class Reach:
    """The outcome of the decision for one recipient: a channel and when, or why not."""

    channel: str | None
    reason: str
    not_before: datetime | None = None


def decide(recipient: Recipient, purpose: str, channels: Sequence[str], at: datetime) -> Reach:
    """The one contact decision per recipient, among the campaign's channels the customer has
    an address for, in the customer's order.

    The only call of the contact decision in planning (and dry runs), so that the decision can
    be swapped in one place. A decision held back by quiet hours is planned for their end."""
    preferences = recipient.preferences
    if preferences is not None:
        allowed = [c for c in preferences.channels if c in channels]
        reachable = tuple(c for c in allowed if c in recipient.addresses)
        if allowed and not reachable:
            return Reach(None, f"no address for {', '.join(allowed)}")
        if reachable != preferences.channels:
            preferences = replace(preferences, channels=reachable)
    decision = projection.contact_decision(preferences, recipient.consents, purpose, at)
    if decision.channel is not None:
        return Reach(decision.channel, PLANNED, at)
    if decision.quiet_until is not None:
        later = projection.contact_decision(
            preferences, recipient.consents, purpose, decision.quiet_until
        )
        if later.channel is not None:
            return Reach(later.channel, PLANNED_AFTER_QUIET_HOURS, decision.quiet_until)
        return Reach(None, later.reason)
    return Reach(None, decision.reason)


@dataclass(frozen=True)
class PlannedMessage:
    """One row of outbound_messages as planning writes it."""

    message_id: str
    campaign_id: str
    customer_id: str
    channel: str
    address: str
    purpose: str
    subject: str | None
    body_text: str
    body_html: str | None
    not_before: datetime


@dataclass
class Plan:
    """What planning a batch of recipients gave: the messages, and recipients per reason."""

    messages: list[PlannedMessage] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)


def reach_each(
    campaign: Campaign, recipients: Iterable[Recipient], at: datetime
) -> Iterator[tuple[Recipient, Reach]]:
    """The decision for each recipient at `at`."""
    definition = campaign.definition
    channels = [t.channel.value for t in definition.templates]
    for recipient in recipients:
        yield recipient, decide(recipient, definition.purpose.value, channels, at)


def dry_run(campaign: Campaign, recipients: Iterable[Recipient], at: datetime) -> Counter[str]:
    """Recipients per decision reason, planned ones included: a dry run's whole answer."""
    return Counter(reach.reason for _, reach in reach_each(campaign, recipients, at))


def plan_batch(
    campaign: Campaign, recipients: Iterable[Recipient], at: datetime, links: Links, first: int
) -> Plan:
    """Messages for the recipients who may be reached at `at`, rendered from the templates.

    `first` is how many messages the earlier batches planned: with a throttle, message n is
    not sent before at + n / throttle, so the sender spreads the campaign by not_before. A
    template that fails for one recipient (e.g. a division by zero) is that recipient's reason."""
    definition = campaign.definition
    templates = {t.channel.value: t for t in definition.templates}
    throttle = definition.throttle_per_second
    plan = Plan()
    for recipient, reach in reach_each(campaign, recipients, at):
        if reach.channel is None or reach.not_before is None:
            plan.reasons[reach.reason] += 1
            continue
        msg_id = message_id(campaign.campaign_id, recipient.customer_id)
        try:
            rendered = _render(campaign, templates[reach.channel], recipient, msg_id, links)
        except Exception:  # a template's runtime error (or a missing link secret) is its reason
            plan.reasons[TEMPLATE_FAILED] += 1
            continue
        plan.reasons[reach.reason] += 1
        number = first + len(plan.messages)
        paced = at + timedelta(seconds=number / throttle) if throttle else at
        plan.messages.append(
            PlannedMessage(
                message_id=msg_id,
                campaign_id=campaign.campaign_id,
                customer_id=recipient.customer_id,
                channel=reach.channel,
                address=recipient.addresses[reach.channel],
                purpose=definition.purpose.value,
                subject=rendered.subject,
                body_text=rendered.text,
                body_html=rendered.html,
                not_before=max(paced, reach.not_before),
            )
        )
    return plan


def _render(
    campaign: Campaign,
    template: MessageTemplate,
    recipient: Recipient,
    msg_id: str,
    links: Links,
) -> RenderedMessage:
    limit = campaign.definition.max_recommendations
    personal = Personalisation(
        customer_id=recipient.customer_id,
        name=recipient.name,
        campaign=campaign.definition.name,
        purpose=campaign.definition.purpose.value,
        channel=template.channel.value,
        message_id=msg_id,
        recommendations=recipient.recommendations[:limit],
        new_products=recipient.new_products[:limit],
    )
    return render(template, personal, links)


def addresses_of(email: str | None, phone: str | None) -> dict[str, str]:
    """Where a customer's registered e-mail and phone reach them, by channel."""
    found: dict[str, str] = {}
    if email:
        found[Channel.EMAIL.value] = email
    if phone:
        found[Channel.SMS.value] = phone
        found[Channel.PHONE.value] = phone
    return found


@dataclass(frozen=True)
class CustomerProducts:
    """A customer's latest recommendation list, as the JSON its table keeps."""

    customer_id: str
    picks_json: str
    new_products_json: str
    version: int
    changed_at: datetime


def _products_json(products: Iterable[RecommendedProduct]) -> str:
    return json.dumps(
        [
            {"product_id": p.product_id, "description": p.description, "reason": p.reason}
            for p in products
        ]
    )


def newest_recommendations(events: Iterable[Event]) -> list[CustomerProducts]:
    """Each customer's highest-version list in the batch (the table's guard keeps the stored
    one when it is higher)."""
    newest: dict[str, tuple[int, Event]] = {}
    for event in events:
        data = event.data
        assert isinstance(data, RecommendationsRefreshed)
        held = newest.get(event.customer_id)
        if held is None or data.version > held[0]:
            newest[event.customer_id] = (data.version, event)
    lists = []
    for customer_id, (version, event) in newest.items():
        data = event.data
        assert isinstance(data, RecommendationsRefreshed)
        lists.append(
            CustomerProducts(
                customer_id,
                _products_json(data.picks),
                _products_json(data.new_products),
                version,
                event.time,
            )
        )
    return lists


@dataclass(frozen=True)
class CustomerContact:
    """A customer's name and addresses as one registration or update states them."""

    customer_id: str
    name: str | None
    email: str | None
    phone: str | None
    changed_at: datetime


def newest_contacts(events: Iterable[Event]) -> list[CustomerContact]:
    """One row per customer: the fields of their events in time order, later ones winning."""
    merged: dict[str, CustomerContact] = {}
    for event in sorted(events, key=lambda e: (e.time, e.source, e.id)):
        data = event.data
        assert isinstance(data, CustomerRegistered | CustomerUpdated)
        held = merged.get(event.customer_id)
        merged[event.customer_id] = CustomerContact(
            event.customer_id,
            data.name or (held.name if held else None),
            data.email or (held.email if held else None),
            data.phone or (held.phone if held else None),
            event.time,
        )
    return list(merged.values())
