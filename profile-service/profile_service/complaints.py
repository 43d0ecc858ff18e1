"""Complaints as the interaction service announces them (crm.complaint.opened.v1 on
crm.case-signals), kept so that segment rules can count them. Pure: no I/O.

A complaint is a case: reopening it does not make a second complaint, so a case counts once,
from its earliest opening, whatever order the announcements arrive in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from crm_shared.contracts.events import COMPLAINT_OPENED, ComplaintOpened, Event


@dataclass(frozen=True, slots=True)
class ComplaintRow:
    customer_id: str
    case_id: str
    opened_at: datetime


def complaint_rows(events: Iterable[Event]) -> list[ComplaintRow]:
    """One row per complaint case opened in the batch, at its earliest opening."""
    earliest: dict[tuple[str, str], datetime] = {}
    for event in events:
        if event.type != COMPLAINT_OPENED:
            continue
        data = event.data
        assert isinstance(data, ComplaintOpened)
        key = (event.customer_id, data.case_id)
        earliest[key] = min(event.time, earliest.get(key, event.time))
    return [ComplaintRow(customer, case, at) for (customer, case), at in earliest.items()]
