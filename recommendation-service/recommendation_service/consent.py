"""Consent to personalisation: which decisions the service folds and what they allow.

Pure: no I/O. The service keeps one decision per customer, the latest by (event time, source,
id) whatever channel it names (personalisation is a use of the customer's data, not a way of
reaching them, so a refusal given on any channel counts). v1 grants and revocations count when
their free-text purpose names personalisation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from crm_shared.contracts.events import (
    ConsentGranted,
    ConsentRecorded,
    ConsentRevoked,
    ConsentState,
    ContactPurpose,
    Event,
)

V1_PERSONALISATION_PURPOSES = frozenset({"personalisation", "personalization"})
"""v1 purposes (free text, compared trimmed and lower case) that mean personalisation."""


class PersonalisationDefault(StrEnum):
    """What a customer who never decided gets (CRM_RECOMMENDATION_PERSONALISATION_DEFAULT)."""

    ALLOWED = "allowed"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class ConsentDecision:
    customer_id: str
    state: ConsentState
    decided_at: datetime
    source: str
    event_id: str

    @property
    def order(self) -> tuple[datetime, str, str]:
        """The last-writer-wins order; the store's SQL guard compares the same tuple."""
        return (self.decided_at, self.source, self.event_id)


def decision_of(event: Event) -> ConsentDecision | None:
    """The personalisation decision an event records, if it records one."""
    data = event.data
    state: ConsentState | None = None
    if isinstance(data, ConsentRecorded) and data.purpose is ContactPurpose.PERSONALISATION:
        state = data.state
    elif isinstance(data, ConsentGranted | ConsentRevoked) and (
        data.purpose.strip().lower() in V1_PERSONALISATION_PURPOSES
    ):
        state = ConsentState.GRANTED if isinstance(data, ConsentGranted) else ConsentState.REVOKED
    if state is None:
        return None
    return ConsentDecision(event.customer_id, state, event.time, event.source, event.id)


def latest_decisions(events: Iterable[Event]) -> dict[str, ConsentDecision]:
    """The batch's latest personalisation decision per customer."""
    latest: dict[str, ConsentDecision] = {}
    for event in events:
        found = decision_of(event)
        if found is None:
            continue
        before = latest.get(found.customer_id)
        if before is None or found.order > before.order:
            latest[found.customer_id] = found
    return latest


def personalisation_allowed(state: ConsentState | None, default: PersonalisationDefault) -> bool:
    """Whether the service may use a customer's own data to recommend to them: only with consent
    granted. Pending (a double opt-in not confirmed yet), denied and revoked refuse it; a customer
    who never decided gets the configured default."""
    if state is None:
        return default is PersonalisationDefault.ALLOWED
    return state is ConsentState.GRANTED
