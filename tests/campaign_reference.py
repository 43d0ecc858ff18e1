"""The reference planner the tests hold planning to: each recipient read whole
(`store.recipients_of`) and decided alone by `campaigns.decide`, their row made in Python. The
service plans by decision signature, its rows made in SQL (`planning.plan_chunk`); the
component test `test_plan_signatures` checks that both give the same rows and reasons."""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from broadcast_service import store
from broadcast_service.campaigns import (
    Campaign,
    PlannedMessage,
    Recipient,
    decide,
    message_id_prefix,
)
from broadcast_service.decision import DEFAULT_POLICY, ContactPolicy

PLANNED_ROW_COLUMNS = tuple(
    ["message_id", "campaign_id", "customer_id", "channel", "address", "purpose", "not_before"]
)
"""The columns of outbound_messages that planning fills (the content is rendered at claim)."""


def planned_row(message: PlannedMessage) -> tuple[object, ...]:
    """The planned columns of a message."""
    return tuple(getattr(message, column) for column in PLANNED_ROW_COLUMNS)


@dataclass
class Plan:
    """The rows of the recipients reached, and recipients per reason and per decision codes."""

    messages: list[PlannedMessage] = field(default_factory=list)
    """Narrow: no content (subject None, body empty)."""
    reasons: Counter[str] = field(default_factory=Counter)
    decided: Counter[tuple[str, tuple[str, ...]]] = field(default_factory=Counter)


def message_id(campaign_id: str, customer_id: str) -> str:
    """The UUID (version 8, RFC 9562) of SHA-256 over the campaign's prefix and the customer."""
    digest = hashlib.sha256(message_id_prefix(campaign_id) + customer_id.encode()).digest()
    raw = bytearray(digest[:16])
    raw[6] = raw[6] & 0x0F | 0x80
    raw[8] = raw[8] & 0x3F | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


def plan_batch(
    campaign: Campaign,
    recipients: Iterable[Recipient],
    at: datetime,
    first: int,
    policy: ContactPolicy = DEFAULT_POLICY,
) -> Plan:
    """One row per recipient who may be reached at `at`, in the order given. `first` is how many
    rows earlier batches planned: with a throttle, row n is not sent before at + n / throttle
    (in whole microseconds)."""
    definition = campaign.definition
    channels = [t.channel.value for t in definition.templates]
    purpose = definition.purpose.value
    throttle = definition.throttle_per_second
    plan = Plan()
    for recipient in recipients:
        reach = decide(recipient, purpose, channels, at, policy)
        plan.decided[reach.reason, reach.codes] += 1
        plan.reasons[reach.reason] += 1
        if reach.channel is None or reach.not_before is None:
            continue
        not_before = reach.not_before
        if throttle:
            n = first + len(plan.messages)
            not_before = max(not_before, at + timedelta(microseconds=n * 1_000_000 // throttle))
        plan.messages.append(
            PlannedMessage(
                message_id(campaign.campaign_id, recipient.customer_id),
                campaign.campaign_id,
                recipient.customer_id,
                reach.channel,
                reach.address or "",
                purpose,
                None,
                "",
                None,
                not_before,
            )
        )
    return plan


async def write_out_plans(conn: asyncpg.Connection) -> int:
    """Write out every planned chunk as its outbound_messages rows, as senders do when the
    chunks are due (`store.take_due_chunk`); how many messages."""
    written = 0
    while taken := await store.take_due_chunk(conn, datetime.max.replace(tzinfo=UTC), 2**62):
        written += taken
    return written
