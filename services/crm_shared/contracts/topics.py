"""The topic catalogue: which event types travel on which topic, and how each topic is configured.

Event types are grouped by domain so that each service subscribes only to what it folds.
Besides its own types, every event topic carries the clock's ticks, one per partition
(see crm_shared.runtime.clock): time reaches each partition in the log's own order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crm_shared.contracts.events import (
    CAMPAIGN_CANCELLED,
    CAMPAIGN_DEFINED,
    CASE_SIGNAL_TYPES,
    CASE_STEP_TYPES,
    CHANNEL_PREFERENCE_SET_V2,
    CLOCK_TICKED,
    CONSENT_RECORDED,
    CONTACT_LOGGED_V2,
    DETRACTOR_SCORED,
    DO_NOT_CONTACT_ADDED,
    DO_NOT_CONTACT_REMOVED,
    EVENT_TYPES,
    FEEDBACK_GIVEN_V2,
    JOURNEY_STAGE_CHANGED,
    MERGE_TYPES,
    MESSAGE_OUTCOME_RECORDED,
    OPINION_TYPES,
    PRODUCT_CATALOGUED,
    RECOMMENDATIONS_REFRESHED,
    SEGMENT_DEFINED,
    SEGMENT_ENTERED,
    SEGMENT_LEFT,
    SEGMENT_RETIRED,
    SESSION_RECORDED,
)

DEFAULT_PARTITIONS = 12
_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
# Event topics accept records up to 4 MiB so that an oversized event reaches a worker and is
# dead-lettered with its reason instead of being refused, unseen, at the producer.
_EVENT_TOPIC_CONFIG = {
    **_FOREVER,
    "max.message.bytes": str(4 * 1024 * 1024),
    "min.insync.replicas": "1",
}


@dataclass(frozen=True)
class Topic:
    """A topic, what travels on it, who writes it and which services fold it."""

    name: str
    description: str
    event_types: tuple[str, ...]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    config: dict[str, str] = field(default_factory=lambda: dict(_EVENT_TOPIC_CONFIG))


CUSTOMERS = Topic(
    "crm.customers",
    "Identity and profile changes of customers (merges and unmerges too), and what they tell "
    "of the brand and its competitors (dislikes, competitor purchases, reasons for not buying).",
    (
        "crm.customer.registered.v1",
        "crm.customer.updated.v1",
        *sorted(MERGE_TYPES),
        *sorted(OPINION_TYPES),
    ),
    producers=("shop", "pos", "call-centre", "survey-tool", "gateway-service"),
    consumers=("profile-service", "broadcast-service"),
)
ORDERS = Topic(
    "crm.orders",
    "Purchases and refunds from the shop, POS and every other sales channel.",
    ("crm.order.placed.v1", "crm.order.refunded.v1", "crm.order.cancelled.v1"),
    producers=("shop", "pos", "gateway-service"),
    consumers=("profile-service", "interaction-service", "recommendation-service"),
)
BROWSING = Topic(
    "crm.browsing",
    "What customers look at on the web site and in apps.",
    ("crm.product.viewed.v1",),
    producers=("web-site", "gateway-service"),
    consumers=("recommendation-service", "interaction-service"),
)
CONTACTS = Topic(
    "crm.contacts",
    "Touchpoints with employees and departments, and the feedback customers give.",
    ("crm.contact.logged.v1", CONTACT_LOGGED_V2, "crm.feedback.given.v1", FEEDBACK_GIVEN_V2),
    producers=("call-centre", "e-mail-service", "web-site", "gateway-service"),
    consumers=("interaction-service",),
)
PREFERENCES = Topic(
    "crm.preferences",
    "How each customer wants to be reached, what they consent to (with its evidence), and "
    "where they must not be contacted.",
    (
        "crm.channel_preference.set.v1",
        CHANNEL_PREFERENCE_SET_V2,
        "crm.consent.granted.v1",
        "crm.consent.revoked.v1",
        CONSENT_RECORDED,
        DO_NOT_CONTACT_ADDED,
        DO_NOT_CONTACT_REMOVED,
    ),
    producers=("web-site", "call-centre", "e-mail-service", "gateway-service", "broadcast-service"),
    consumers=("broadcast-service", "interaction-service", "recommendation-service"),
)
SEGMENTS = Topic(
    "crm.segments",
    "Who entered and who left a segment, derived by the profile service from what it folded.",
    (SEGMENT_ENTERED, SEGMENT_LEFT),
    producers=("profile-service",),
    consumers=("broadcast-service", "recommendation-service"),
)
SEGMENT_DEFINITIONS = Topic(
    "crm.segment-definitions",
    "Operator-defined segments: their rules and retirements, keyed by the segment's name.",
    (SEGMENT_DEFINED, SEGMENT_RETIRED),
    producers=("gateway-segments",),
    consumers=("profile-service",),
)
SESSIONS = Topic(
    "crm.sessions",
    "Visits to the web site and sessions in apps, one event per session when it ends.",
    (SESSION_RECORDED,),
    producers=("web-site", "mobile-app", "gateway-service"),
    consumers=("interaction-service",),
)
MESSAGES = Topic(
    "crm.messages",
    "What became of each message the broadcast service sent (sent, delivered, bounced, opened, "
    "clicked, failed, unsubscribed), derived by the broadcast service.",
    (MESSAGE_OUTCOME_RECORDED,),
    producers=("broadcast-service",),
    consumers=("interaction-service",),
)
CASES = Topic(
    "crm.cases",
    "The lifecycle of customers' requests, questions and complaints: opened, assigned, "
    "transferred, escalated, resolved, reopened, closed; each step carries the case id.",
    tuple(sorted(CASE_STEP_TYPES)),
    producers=("call-centre", "gateway-service"),
    consumers=("interaction-service",),
)
CASE_SIGNALS = Topic(
    "crm.case-signals",
    "What the interaction service derives from cases: SLA breaches (driven by the clock), and "
    "complaints becoming open or no longer open (so promotions can be held back).",
    tuple(sorted(CASE_SIGNAL_TYPES)),
    producers=("interaction-service",),
    consumers=("profile-service", "broadcast-service"),
)
EXPERIENCE = Topic(
    "crm.experience",
    "Detractor scores and journey stage changes, derived by the interaction service from the "
    "feedback, contacts and orders it folds.",
    (DETRACTOR_SCORED, JOURNEY_STAGE_CHANGED),
    producers=("interaction-service",),
    consumers=("broadcast-service",),
)
RECOMMENDATIONS = Topic(
    "crm.recommendations",
    "Each customer's personal top-k products and new products whenever the list changes, "
    "derived by the recommendation service (for messages that carry recommendations).",
    (RECOMMENDATIONS_REFRESHED,),
    producers=("recommendation-service",),
    consumers=("broadcast-service",),
)
CAMPAIGNS = Topic(
    "crm.campaigns",
    "Campaigns and newsletters operators define and cancel, keyed by the campaign's id.",
    (CAMPAIGN_DEFINED, CAMPAIGN_CANCELLED),
    producers=("gateway-campaigns",),
    consumers=("broadcast-service",),
)
CATALOGUE = Topic(
    "crm.catalogue",
    "The product catalogue: each product's current record (name, category, price, availability, "
    "kind) whenever it is listed or changes, keyed by the product.",
    (PRODUCT_CATALOGUED,),
    producers=("shop", "pim", "gateway-service"),
    consumers=("recommendation-service", "profile-service"),
)
DEAD_LETTER = Topic(
    "crm.deadletter",
    "Records that could not be processed: original bytes as the value, the reason and origin "
    "in headers (crm.reason, crm.topic, crm.partition, crm.offset, crm.consumer).",
    (),
    producers=(
        "profile-service",
        "interaction-service",
        "broadcast-service",
        "recommendation-service",
        "demo-loader",
    ),
    consumers=(),
    config={**_FOREVER, "max.message.bytes": str(8 * 1024 * 1024)},
)

EVENT_TOPICS: tuple[Topic, ...] = (
    CUSTOMERS,
    ORDERS,
    BROWSING,
    CONTACTS,
    PREFERENCES,
    SEGMENTS,
    SEGMENT_DEFINITIONS,
    SESSIONS,
    MESSAGES,
    CASES,
    CASE_SIGNALS,
    EXPERIENCE,
    RECOMMENDATIONS,
    CAMPAIGNS,
    CATALOGUE,
)
CLOCK_PRODUCER = "crm-clock"
"""Who publishes the ticks that every event topic carries."""
ALL_TOPICS: tuple[Topic, ...] = (*EVENT_TOPICS, DEAD_LETTER)

TOPIC_OF_TYPE: dict[str, str] = {
    event_type: topic.name for topic in EVENT_TOPICS for event_type in topic.event_types
}

_unrouted = set(EVENT_TYPES) - set(TOPIC_OF_TYPE) - {CLOCK_TICKED}
if _unrouted:  # pragma: no cover - a programming error caught at import in every test run
    raise RuntimeError(f"event types without a topic: {sorted(_unrouted)}")


def topic_for(event_type: str) -> str:
    """The topic an event type is published on (ticks go everywhere: crm_shared.runtime.clock)."""
    return TOPIC_OF_TYPE[event_type]


def accepts_from(event_type: str, producer: str) -> bool:
    """Whether `producer` may publish this type: derived events and ticks come only from the
    platform's own services, so a client cannot forge them."""
    topic = TOPIC_OF_TYPE.get(event_type)
    return topic is not None and producer in next(
        t.producers for t in EVENT_TOPICS if t.name == topic
    )
