"""What customers tell of the brand and its competitors: dislikes, competitor purchases and
reasons for not buying. Pure: no I/O.

Each statement is one row keyed by its event id: statements are facts that accumulate (a
customer may dislike the price in March and the delivery in May), so nothing is overwritten and
the rows are the same whatever the batches. Counts across customers are read in SQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from crm_shared.contracts.events import (
    CompetitorPurchaseReported,
    DislikeStated,
    Event,
    PurchaseDeclined,
)


class OpinionKind(StrEnum):
    DISLIKE = "dislike"
    COMPETITOR_PURCHASE = "competitor_purchase"
    DECLINED = "declined"


@dataclass(frozen=True, slots=True)
class OpinionRow:
    customer_id: str
    event_id: str
    kind: OpinionKind
    topic: str
    """What is counted: the disliked aspect, the competitor's brand, or the reason for not
    buying. Brands are kept as written; `brand_key` groups spellings."""
    reason: str | None
    """Why, when the statement says: the reason a competitor is bought (for a declined
    purchase, the topic already is the reason)."""
    competitor: str | None
    about: str | None
    """The product, category or topic the statement names."""
    comment: str | None
    captured_via: str
    source: str
    stated_at: datetime


def brand_key(brand: str) -> str:
    """How brands are grouped when counted: case and surrounding or repeated spaces ignored,
    so "Acme ", "ACME" and "acme" are one competitor."""
    return " ".join(brand.split()).casefold()


def opinion_row(event: Event) -> OpinionRow | None:
    """The row a statement event stores; None for any other event."""
    data = event.data
    common = (event.customer_id, event.id)
    tail = (event.source, event.time)
    if type(data) is DislikeStated:
        return OpinionRow(
            *common,
            OpinionKind.DISLIKE,
            data.aspect.value,
            None,
            None,
            data.about,
            data.comment,
            data.captured_via.value,
            *tail,
        )
    if type(data) is CompetitorPurchaseReported:
        return OpinionRow(
            *common,
            OpinionKind.COMPETITOR_PURCHASE,
            data.brand.strip(),
            data.reason.value if data.reason is not None else None,
            data.brand.strip(),
            data.category,
            data.comment,
            data.captured_via.value,
            *tail,
        )
    if type(data) is PurchaseDeclined:
        competitor = data.competitor_brand.strip() if data.competitor_brand else None
        return OpinionRow(
            *common,
            OpinionKind.DECLINED,
            data.reason.value,
            None,
            competitor,
            data.product_id or data.category,
            data.comment,
            data.captured_via.value,
            *tail,
        )
    return None


def opinion_rows(events: Iterable[Event]) -> list[OpinionRow]:
    """The statements of a batch, one row each (other events are skipped)."""
    rows = []
    for event in events:
        row = opinion_row(event)
        if row is not None:
            rows.append(row)
    return rows
