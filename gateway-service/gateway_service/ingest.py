"""Event ingestion: which events of a batch go to which topic, and what the client is told. Pure.

Each event is checked on its own with the platform's contract (crm_shared.contracts.events), so
a batch is never refused as a whole for one bad event. An event counts as accepted only once Kafka
has acknowledged it; one that may or may not have reached Kafka is reported rejected, and sending it
again is safe because projections deduplicate events by (source, id).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crm_shared.contracts.events import InvalidEvent, encode_event, validate_event
from crm_shared.contracts.topics import topic_for

MAX_BATCH = 1000


class BatchSizeError(ValueError):
    """The batch is empty or longer than MAX_BATCH."""


@dataclass(frozen=True)
class Publish:
    """A valid event, encoded, with its topic and key (the customer id)."""

    index: int
    id: str
    topic: str
    key: bytes
    value: bytes


@dataclass(frozen=True)
class Rejected:
    index: int
    id: str | None
    reason: str


@dataclass(frozen=True)
class Plan:
    publish: tuple[Publish, ...]
    rejected: tuple[Rejected, ...]


@dataclass(frozen=True)
class Accepted:
    index: int
    id: str
    topic: str


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    rejected: int
    results: tuple[Accepted | Rejected, ...]
    """One per event of the batch, in the batch's order."""


def check_batch_size(count: int) -> None:
    if count == 0:
        raise BatchSizeError("the batch is empty: send 1 to 1000 events in 'events'")
    if count > MAX_BATCH:
        raise BatchSizeError(
            f"the batch holds {count} events; at most {MAX_BATCH} are accepted per request"
        )


def plan_batch(documents: Sequence[Any]) -> Plan:
    """Validate and encode every event; refusals carry the contract's reason."""
    check_batch_size(len(documents))
    publish: list[Publish] = []
    rejected: list[Rejected] = []
    for index, document in enumerate(documents):
        if not isinstance(document, dict):
            rejected.append(Rejected(index, None, "an event must be a JSON object"))
            continue
        claimed_id = document.get("id")
        event_id = claimed_id if isinstance(claimed_id, str) else None
        try:
            event = validate_event(document)
            value = encode_event(document)
        except InvalidEvent as error:
            rejected.append(Rejected(index, event_id, str(error)))
            continue
        publish.append(
            Publish(index, event.id, topic_for(event.type), event.customer_id.encode(), value)
        )
    return Plan(tuple(publish), tuple(rejected))


def settle(plan: Plan, failures: Mapping[int, str]) -> IngestResult:
    """The answer once Kafka has spoken: `failures` maps the index of each unacknowledged event
    to why (anything not in it was acknowledged)."""
    results: list[Accepted | Rejected] = list(plan.rejected)
    for item in plan.publish:
        failure = failures.get(item.index)
        if failure is None:
            results.append(Accepted(item.index, item.id, item.topic))
        else:
            results.append(Rejected(item.index, item.id, f"broker unavailable: {failure}"))
    results.sort(key=lambda result: result.index)
    accepted = sum(isinstance(result, Accepted) for result in results)
    return IngestResult(accepted, len(results) - accepted, tuple(results))
