"""Commands as events: a write through the gateway (define a segment or a campaign, set a
customer's channels, merge two records, ...) becomes one event, validated here as the worker
will validate it, published keyed by its subject, and acknowledged by Kafka before the caller
hears 202. The worker folds it like any other producer's event."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException, Request

from crm_shared.contracts.events import InvalidEvent, build_event, encode_event
from crm_shared.contracts.topics import topic_for
from gateway_service.ingest import Publish
from gateway_service.producer import EventProducer


async def publish_command(
    request: Request,
    event_type: str,
    subject: str,
    data: Mapping[str, Any],
    source: str,
    event_id: str | None = None,
) -> str:
    """Publish the command's event and return its id: 422 with the reason when the event is not
    valid, 503 when Kafka did not acknowledge it (nothing was recorded: the caller may retry)."""
    try:
        document = build_event(
            event_type,
            subject,
            dict(data),
            source=source,
            time=datetime.now(UTC),
            event_id=event_id or str(uuid.uuid4()),
        )
        value = encode_event(document)
    except InvalidEvent as invalid:
        raise HTTPException(422, str(invalid)) from None
    producer: EventProducer = request.app.state.producer
    item = Publish(0, document["id"], topic_for(event_type), subject.encode(), value)
    failures = await producer.publish([item])
    if failures:
        raise HTTPException(503, f"the {event_type} event was not published: {failures[0]}")
    event_id_published: str = document["id"]
    return event_id_published
