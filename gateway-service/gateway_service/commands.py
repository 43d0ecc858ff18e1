"""Commands as events: a write through the gateway (define a segment or a campaign, set a
customer's channels, merge two records, a choice in the preference centre, ...) becomes events,
validated here as the worker will validate them, published keyed by their subject, and
acknowledged by Kafka before the caller hears it was accepted. The workers fold them like any
other producer's events."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException, Request

from crm_shared.contracts.events import InvalidEvent, build_event, encode_event
from crm_shared.contracts.topics import topic_for
from gateway_service.ingest import Publish
from gateway_service.producer import EventProducer


class NotPublished(Exception):
    """Kafka did not acknowledge every event: nothing may be taken as recorded."""


async def publish_events(
    request: Request,
    subject: str,
    events: Sequence[tuple[str, Any, str | None]],
    source: str,
) -> list[str]:
    """Publish (event type, data, event id or None for a fresh one) about one subject and return
    their ids. Raises InvalidEvent (with the reason) before anything is published when one is
    not valid, NotPublished when Kafka did not acknowledge them all."""
    now = datetime.now(UTC)
    items: list[Publish] = []
    for index, (event_type, data, event_id) in enumerate(events):
        document = build_event(
            event_type,
            subject,
            data,
            source=source,
            time=now,
            event_id=event_id or str(uuid.uuid4()),
        )
        topic = topic_for(event_type)
        items.append(
            Publish(index, document["id"], topic, subject.encode(), encode_event(document))
        )
    producer: EventProducer = request.app.state.producer
    failures = await producer.publish(items)
    if failures:
        raise NotPublished(failures[0])
    return [item.id for item in items]


async def publish_command(
    request: Request,
    event_type: str,
    subject: str,
    data: Any,
    source: str,
    event_id: str | None = None,
) -> str:
    """Publish the command's event and return its id: 422 with the reason when the event is not
    valid, 503 when Kafka did not acknowledge it (nothing was recorded: the caller may retry)."""
    try:
        (published,) = await publish_events(
            request, subject, [(event_type, data, event_id)], source
        )
    except InvalidEvent as invalid:
        raise HTTPException(422, str(invalid)) from None
    except NotPublished as failure:
        raise HTTPException(503, f"the {event_type} event was not published: {failure}") from None
    return published
