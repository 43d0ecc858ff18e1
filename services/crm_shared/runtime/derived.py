"""Events a fold derives from what it folded. Pure: building one does no I/O.

Their ids derive from the event that caused them, so folding the same cause again (a retry, a
rebuild) derives the same ids, and consumers drop the copies.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from crm_shared.contracts.events import Event, encode_new_event
from crm_shared.contracts.topics import topic_for

_DERIVED_IDS = uuid.UUID("6f1d3c2a-8a51-4f0e-9a7e-2b8c0e4f7d10")


@dataclass(frozen=True, slots=True)
class Derived:
    """An encoded derived event, ready for the outbox."""

    topic: str
    key: bytes
    value: bytes
    event_id: str
    type: str


def name_based_id(namespace: uuid.UUID, name: str) -> str:
    """`str(uuid.uuid5(namespace, name))` without building a UUID object, which is most of the
    cost of a derived event's id: SHA-1 of namespace and name, version 5, RFC 4122 variant."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def derived_id(cause: Event, event_type: str, customer_id: str, part: str = "") -> str:
    """The same cause, type, customer and part always give the same id."""
    name = "\x1f".join((cause.source, cause.id, event_type, customer_id, part))
    return name_based_id(_DERIVED_IDS, name)


def derive(
    cause: Event,
    event_type: str,
    customer_id: str,
    data: BaseModel | Mapping[str, Any],
    *,
    source: str,
    time: datetime | None = None,
    part: str = "",
) -> Derived:
    """A validated derived event whose id derives from its cause; `part` tells apart several
    events of one type that one cause derives for one customer."""
    event_id = derived_id(cause, event_type, customer_id, part)
    return derived_event(
        event_type, customer_id, data, source=source, time=time or cause.time, event_id=event_id
    )


def derived_event(
    event_type: str,
    customer_id: str,
    data: BaseModel | Mapping[str, Any],
    *,
    source: str,
    time: datetime,
    event_id: str,
) -> Derived:
    """A validated derived event with an id of the caller's making: for what a periodic job
    derives with no event as its cause (the id must still repeat when the job's run does)."""
    value = encode_new_event(
        event_type, customer_id, data, source=source, time=time, event_id=event_id
    )
    return Derived(topic_for(event_type), customer_id.encode(), value, event_id, event_type)
