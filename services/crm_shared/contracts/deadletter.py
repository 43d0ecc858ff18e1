"""A dead-letter record: the original bytes and headers, and beside them the reason and origin."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

OURS = "crm."
"""The prefix of the headers the platform adds to a dead letter."""
REASON = "crm.reason"
ORIGIN_TOPIC = "crm.topic"
ORIGIN_PARTITION = "crm.partition"
ORIGIN_OFFSET = "crm.offset"
CONSUMER = "crm.consumer"
FAILED_AT = "crm.failed_at"
REDRIVEN_FROM = "crm.redriven_from"
"""On a record published again from the dead-letter topic: the letter it came from."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record that could not be processed, and everything needed to find and replay it."""

    value: bytes
    key: bytes | None
    reason: str
    topic: str
    partition: int
    offset: int
    consumer: str
    original_headers: Sequence[tuple[str, bytes | None]] = ()
    """The failed record's own headers (a binary-mode event's ce_ attributes), kept as they were."""

    def headers(self, now: datetime | None = None) -> list[tuple[str, bytes]]:
        """The original headers, then ours. An original crm.* header gives way to ours; one
        without a value is left out (not every Kafka client can send it)."""
        kept = [
            (name, value)
            for name, value in self.original_headers
            if value is not None and not name.startswith(OURS)
        ]
        return [
            *kept,
            (REASON, self.reason.encode()),
            (ORIGIN_TOPIC, self.topic.encode()),
            (ORIGIN_PARTITION, str(self.partition).encode()),
            (ORIGIN_OFFSET, str(self.offset).encode()),
            (CONSUMER, self.consumer.encode()),
            (FAILED_AT, (now or datetime.now(UTC)).isoformat().encode()),
        ]


def read_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """Headers of a dead-letter record as text, for tools and tests that inspect the topic."""
    return {name: value.decode() for name, value in headers or [] if value is not None}
