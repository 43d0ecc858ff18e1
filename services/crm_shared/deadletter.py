"""A dead-letter record: the original bytes as its value, the reason and origin in headers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

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

    def headers(self, now: datetime | None = None) -> list[tuple[str, bytes]]:
        return [
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
