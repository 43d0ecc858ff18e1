"""Campaigns and newsletters: their definitions folded, when they are due, their plans, and
their messages rendered.

Pure: no I/O; time comes from events (the definition, the clock's ticks) and is passed in.
A campaign's definition is last-writer-wins by event time until it is due, then fixed. It is
planned once, at its send instant: the contact decision of each recipient (`decide`, the single
place this module asks for one), made once per decision signature (`plan_signatures`: recipients
with equal signatures get equal decisions), gives one narrow row per recipient who may be
contacted (who, on which channel and address, from when), written in SQL from the decisions of
the signatures, with an id derived from the campaign and the customer (`message_id_prefix`), so
planning again adds nothing. The row is rendered from the templates (`render_for`) when the
sender claims it, not when it is planned: planning costs a decision per signature and a narrow
row per recipient, and each message carries the recommendations current when it leaves.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal, NamedTuple

from pydantic import TypeAdapter

from broadcast_service.decision import (
    DEFAULT_POLICY,
    REGISTERED_FIELDS,
    ContactPolicy,
    CustomerReach,
    contact_decision,
)
from broadcast_service.projection import RecentSend
from broadcast_service.templates import Links, Personalisation, RenderedMessage, render
from crm_shared.contracts.events import (
    CAMPAIGN_CANCELLED,
    CAMPAIGN_DEFINED,
    CampaignCancelled,
    CampaignDefined,
    CustomerRegistered,
    CustomerUpdated,
    Event,
    RecommendationsRefreshed,
    RecommendedProduct,
)

CampaignState = Literal["scheduled", "planning", "planned", "cancelled"]

_MESSAGE_IDS = uuid.UUID("0b8f6f0e-3f5c-4d55-9a11-5e2f4c7d9a31")

PLANNED = "planned"
PLANNED_LATER = "planned for when a delay ends"
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

    @property
    def fixed(self) -> bool:
        """Being planned or planned: cancelling it cancels the messages planned so far."""
        return self.state in ("planning", "planned")


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

    A newer definition replaces a scheduled one; a campaign being planned, planned or cancelled
    keeps its plan (a cancellation of a planned campaign cancels what is not sent yet). A
    cancellation that arrives before its definition is kept, and the later definition does not
    revive it. An immediate definition starts planning as it is folded, event by event, so a
    replay that folds a definition and its redefinition in one batch keeps the first, as the live
    run that folded them apart did."""
    changed: dict[str, Campaign] = {}
    for event in events:
        before = changed.get(event.customer_id) or current.get(event.customer_id)
        if event.type == CAMPAIGN_DEFINED:
            candidate = started_if_due(campaign_from(event))
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


def message_id_prefix(campaign_id: str) -> bytes:
    """What a message id hashes before the customer id: a campaign's message to a customer is
    the UUID (version 8) of SHA-256 over this prefix and the customer id (UTF-8), made in SQL
    as planning writes the rows, so planning again gives the same ids (the plan's dedup key)."""
    return _MESSAGE_IDS.bytes + f"{campaign_id}\x1f".encode()


@dataclass(frozen=True)
class Product:
    product_id: str
    description: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Recipient:
    """What planning knows of one recipient: what the decision weighs."""

    customer_id: str
    reach: CustomerReach
    recent_sends: tuple[RecentSend, ...] = ()


@dataclass(frozen=True)
class Addressee:
    """What personalises one recipient's message when it is rendered."""

    customer_id: str
    name: str | None = None
    recommendations: tuple[Product, ...] = ()
    new_products: tuple[Product, ...] = ()


@dataclass(frozen=True)
class Reach:
    """The outcome of the decision for one recipient: a channel, its address and when, or why
    not (the decision's reason codes)."""

    channel: str | None
    reason: str
    not_before: datetime | None = None
    address: str | None = None
    codes: tuple[str, ...] = ()
    """The reason codes of the decision at the campaign's instant (`allowed` when planned)."""


def _campaign_channels(reach: CustomerReach, channels: Sequence[str]) -> CustomerReach:
    """The customer's set-up narrowed to the channels the campaign has a template for."""
    preferences = reach.preferences
    if preferences is None or all(s.channel in channels for s in preferences.channels):
        return reach
    allowed = tuple(s for s in preferences.channels if s.channel in channels)
    return replace(reach, preferences=replace(preferences, channels=allowed))


def decide(
    recipient: Recipient,
    purpose: str,
    channels: Sequence[str],
    at: datetime,
    policy: ContactPolicy = DEFAULT_POLICY,
) -> Reach:
    """The one contact decision per recipient: the campaign's channels, in the customer's order.

    The only call of the contact decision in planning (and dry runs). A recipient only delayed
    (quiet hours, a pause, a detractor hold, a full budget) is planned for the instant the
    decision says a channel becomes possible, if the decision at that instant allows it."""
    reach = _campaign_channels(recipient.reach, channels)
    sends = recipient.recent_sends
    decision = contact_decision(reach, sends, purpose, at, policy=policy)
    if decision.channel is not None:
        return Reach(decision.channel, PLANNED, at, decision.address, decision.codes)
    if decision.possible_at is not None:
        later = contact_decision(reach, sends, purpose, decision.possible_at, policy=policy)
        if later.channel is not None:
            return Reach(
                later.channel, PLANNED_LATER, decision.possible_at, later.address, decision.codes
            )
    return Reach(None, " + ".join(decision.codes), codes=decision.codes)


def outcome_of(reason: str) -> str:
    """A recipient's decision as the contact decision's outcomes name it: contact (planned now),
    delayed (planned for when a delay ends) or refused (not planned)."""
    return "contact" if reason == PLANNED else "delayed" if reason == PLANNED_LATER else "refused"


@dataclass(frozen=True)
class PlannedMessage:
    """A ready-made message, its content given (a one-off message, or a benchmark's)."""

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


class Reached(NamedTuple):
    """How the recipients sharing a decision signature are reached: planning writes their rows
    from it in SQL, each at their own address."""

    signature: int
    """The signature's number in its chunk (`store.SignatureGroup.number`)."""
    channel: str
    position: int | None
    """The channel's place in their set-up: its address there is theirs, else the registered
    one (None: the decision picked no address)."""
    registered: str | None
    """Which registered address the channel falls back on (`REGISTERED_FIELDS`)."""
    not_before: datetime


@dataclass
class SignedPlan:
    """What deciding a chunk's decision signatures gave: how the reached ones are reached, and
    recipients per reason."""

    reached: list[Reached] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    decided: Counter[tuple[str, tuple[str, ...]]] = field(default_factory=Counter)
    """Recipients per (reason, the decision's codes): the reasons above, code by code."""


def plan_signatures(
    campaign: Campaign,
    groups: Iterable[tuple[int, Recipient, int]],
    at: datetime,
    policy: ContactPolicy = DEFAULT_POLICY,
) -> SignedPlan:
    """One decision per decision signature: each group is a signature, one of its recipients
    (read whole by `store.recipients_of`) and how many share it, who all get its decision (a
    plan's, or a dry run's answer: its reasons)."""
    definition = campaign.definition
    channels = [t.channel.value for t in definition.templates]
    purpose = definition.purpose.value
    plan = SignedPlan()
    for signature, example, recipients in groups:
        reach = decide(_indexed(example), purpose, channels, at, policy)
        plan.decided[reach.reason, reach.codes] += recipients
        plan.reasons[reach.reason] += recipients
        if reach.channel is not None and reach.not_before is not None:
            position = None if reach.address is None else int(reach.address)
            registered = REGISTERED_FIELDS.get(reach.channel)
            plan.reached.append(
                Reached(signature, reach.channel, position, registered, reach.not_before)
            )
    return plan


def _indexed(recipient: Recipient) -> Recipient:
    """The recipient with each address replaced by the position of its channel in the set-up.
    The decision only asks whether a channel has an address and passes the one it picks
    through, so deciding for one recipient of a signature names the position, and each
    recipient sharing the signature is reached at their own address there."""
    preferences = recipient.reach.preferences
    if preferences is None:
        return recipient
    setups = tuple(
        s if s.address is None else replace(s, address=str(i))
        for i, s in enumerate(preferences.channels)
    )
    reach = replace(recipient.reach, preferences=replace(preferences, channels=setups))
    return replace(recipient, reach=reach)


def render_for(
    campaign: Campaign, channel: str, who: Addressee, msg_id: str, links: Links
) -> RenderedMessage:
    """A planned message's content from its campaign's template for its channel; raises what
    the template raises (the sender cancels that message with TEMPLATE_FAILED)."""
    definition = campaign.definition
    template = next(t for t in definition.templates if t.channel.value == channel)
    limit = definition.max_recommendations
    personal = Personalisation(
        customer_id=who.customer_id,
        name=who.name,
        campaign=definition.name,
        purpose=definition.purpose.value,
        channel=channel,
        message_id=msg_id,
        recommendations=who.recommendations[:limit],
        new_products=who.new_products[:limit],
    )
    return render(template, personal, links)


def started_if_due(campaign: Campaign) -> Campaign:
    """The campaign marked 'planning' if it is due at its definition (an immediate one): the
    worker's planning job plans it in chunks, outside the fold."""
    return replace(campaign, state="planning") if campaign.due(campaign.defined_at) else campaign


@dataclass(frozen=True)
class CustomerProducts:
    """A customer's latest recommendation list, as the JSON its table keeps."""

    customer_id: str
    picks_json: str
    new_products_json: str
    version: int
    changed_at: datetime


_PRODUCTS = TypeAdapter(tuple[RecommendedProduct, ...])
_KEPT_FIELDS = {"__all__": {"product_id", "description", "reason"}}
"""What a message shows of a recommended product (not its score)."""


def _products_json(products: tuple[RecommendedProduct, ...]) -> str:
    """The products as their table keeps them, serialised by pydantic's own serializer: half
    the CPU of building dicts for json.dumps, for every list the recommendation service
    refreshes."""
    return _PRODUCTS.dump_json(products, include=_KEPT_FIELDS).decode()


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
