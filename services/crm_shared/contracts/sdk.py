"""The publishing SDK for other company systems, on kafka-python.

    with EventPublisher("127.0.0.1:59092", source="shop") as crm:
        crm.publish("crm.order.placed.v1", "C-1001", {"order_id": "A-1", "lines": [...]})

Every event is validated before it leaves, wrapped in the CloudEvents envelope, keyed by the
customer id (so one customer's events stay in order), sent with acks=all by an idempotent
producer, and flushed on close.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

from kafka import KafkaProducer
from kafka.producer.future import FutureRecordMetadata
from pydantic import BaseModel

from crm_shared.contracts.deadletter import DeadLetter
from crm_shared.contracts.events import build_event, encode_event, validate_event
from crm_shared.contracts.topics import DEAD_LETTER, topic_for


class EventPublisher:
    """Validates, wraps and publishes customer events; use it as a context manager."""

    def __init__(self, bootstrap_servers: str, *, source: str, **producer_config: Any) -> None:
        self.source = source
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=f"crm-sdk-{source}",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            batch_size=256 * 1024,
            max_request_size=9 * 1024 * 1024,
            **producer_config,
        )

    def publish(
        self,
        event_type: str,
        customer_id: str,
        data: Mapping[str, Any] | BaseModel,
        *,
        time: datetime | None = None,
        event_id: str | None = None,
    ) -> FutureRecordMetadata:
        """Validate and send one event; raises InvalidEvent (nothing sent) when it is not valid."""
        document = build_event(
            event_type, customer_id, data, source=self.source, time=time, event_id=event_id
        )
        return self._send(document)

    def publish_document(self, document: Mapping[str, Any]) -> FutureRecordMetadata:
        """Send a complete envelope someone else built, after the same validation."""
        validate_event(document)
        return self._send(document)

    def _send(self, document: Mapping[str, Any]) -> FutureRecordMetadata:
        value = encode_event(document)
        return self._producer.send(
            topic_for(document["type"]), key=str(document["subject"]).encode(), value=value
        )

    def dead_letter(self, letter: DeadLetter) -> FutureRecordMetadata:
        """Park what is not a valid event (e.g. an unusable source row), with its reason."""
        return self._producer.send(
            DEAD_LETTER.name, key=letter.key, value=letter.value, headers=letter.headers()
        )

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout)

    def close(self) -> None:
        """Flush everything still buffered, then close the connection."""
        self._producer.flush()
        self._producer.close()

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
