"""What a customer's timeline holds: the kinds of entry and the event types that become entries.

Shared by the interaction service, which keeps the timeline, and the gateway, which serves it and
documents its filters: one list, so the gateway never offers a filter the service refuses.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar, get_args

from pydantic import Field

TimelineKind = Literal[
    "contact",
    "feedback",
    "order",
    "refund",
    "cancellation",
    "session",
    "message",
    "consent",
    "preference",
    "case",
]
TIMELINE_KINDS: tuple[TimelineKind, ...] = get_args(TimelineKind)

TimelineEventType = Literal[
    "crm.contact.logged.v1",
    "crm.contact.logged.v2",
    "crm.feedback.given.v1",
    "crm.feedback.given.v2",
    "crm.order.placed.v1",
    "crm.order.refunded.v1",
    "crm.order.cancelled.v1",
    "crm.channel_preference.set.v1",
    "crm.consent.granted.v1",
    "crm.consent.revoked.v1",
    "crm.session.recorded.v1",
    "crm.message.outcome.recorded.v1",
    "crm.channel_preference.set.v2",
    "crm.consent.recorded.v2",
    "crm.do_not_contact.added.v1",
    "crm.do_not_contact.removed.v1",
    "crm.case.opened.v1",
    "crm.case.assigned.v1",
    "crm.case.transferred.v1",
    "crm.case.escalated.v1",
    "crm.case.resolved.v1",
    "crm.case.reopened.v1",
    "crm.case.closed.v1",
]
TIMELINE_EVENT_TYPES: frozenset[str] = frozenset(get_args(TimelineEventType))
"""Every event of these types is one timeline entry."""

MAX_FILTER_VALUES = 20
"""Most values one timeline filter (kind, event type, channel, department) takes in a request."""

FilterValue = TypeVar("FilterValue")
TimelineFilter = Annotated[list[FilterValue] | None, Field(max_length=MAX_FILTER_VALUES)]
"""A repeatable timeline filter (`?kind=order&kind=refund`): absent means any value, more than
MAX_FILTER_VALUES values are refused (422). Both readers declare their filters with it, e.g.
`Annotated[TimelineFilter[TimelineKind], Query(description=...)]`."""
