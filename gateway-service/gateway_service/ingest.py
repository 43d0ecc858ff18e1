"""Event ingestion: which events of a batch go to which topic, and what the client is told. Pure.

Each event is checked on its own with the platform's contract (crm_shared.contracts.events),
against the sources the API key was issued for and against the clock, so a batch is never refused
as a whole for one bad event. An event counts as accepted only once Kafka has acknowledged it;
one that may or may not have reached Kafka is reported rejected, and sending it again is safe
because projections deduplicate events by (source, id).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from crm_shared.contracts.events import InvalidEvent, check_not_future, encode_event, validate_event
from crm_shared.contracts.topics import accepts_from, topic_for

GATEWAY = "gateway-service"
"""How the topic catalogue names the gateway among a topic's producers."""

MAX_BATCH = 1000


class BatchSizeError(ValueError):
    """The batch is empty or longer than MAX_BATCH."""


class SourceNotGranted(ValueError):
    """The event claims a source its API key was not issued for."""


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


def check_source(source: str, granted: Collection[str]) -> None:
    """Refuse a source the key was not issued for: projections deduplicate by (source, id), so a
    client publishing as another system could pre-empt that system's event ids."""
    if source in granted:
        return
    if not granted:
        raise SourceNotGranted(
            f"source {source!r} refused: this API key was issued for no source, so it may not "
            "publish; ask for a key issued with the sources it publishes as"
        )
    raise SourceNotGranted(
        f"source {source!r} refused: this API key may publish only as "
        f"{', '.join(repr(name) for name in sorted(granted))}"
    )


def check_published_by_clients(event_type: str) -> None:
    """Derived events and clock ticks come only from the platform's own services: a client that
    could forge them would move segments or time for everyone."""
    if not accepts_from(event_type, GATEWAY):
        raise InvalidEvent(
            f"{event_type} is published by the platform itself, not through the gateway"
        )


def plan_batch(
    documents: Sequence[Any], *, sources: Collection[str], now: datetime, max_skew: timedelta
) -> Plan:
    """Validate and encode every event; refusals carry the reason: the contract's, a source not
    among the key's `sources`, or a time later than `now` + `max_skew`."""
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
            check_published_by_clients(event.type)
            check_source(event.source, sources)
            check_not_future(event, now, max_skew)
            value = encode_event(document)
        except (InvalidEvent, SourceNotGranted) as error:
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
