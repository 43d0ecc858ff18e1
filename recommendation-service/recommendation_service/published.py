"""The list each customer is served and published (`crm.recommendations.refreshed.v1`), and when
it is published again.

Pure: the worker reads the rows, calls these functions and writes what they return. A customer's
list is their personal picks when they allow personalisation and the model has picks for them;
otherwise popular goods: without consent the same goods for everyone (nothing of theirs is used,
not even to leave out what they bought), with consent the popular goods they have not bought.
Beside it, the newest goods in the catalogue (by first sale), likewise left unfiltered without
consent. A list is published again only when what it names changes: whether it is personal, the
ids of its first PUBLISHED_PICKS picks in order, the new products' ids; new scores or a new model
version alone publish nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crm_shared.contracts.events import (
    RECOMMENDATIONS_REFRESHED,
    RecommendationsRefreshed,
    RecommendedProduct,
)
from crm_shared.runtime.derived import Derived, derived_event, name_based_id
from recommendation_service.serving import PICKS_KEPT, Reason

SOURCE = "recommendation-service"
PUBLISHED_PICKS = 10
"""Picks a published list carries (the top of the PICKS_KEPT stored)."""
NEW_PRODUCTS = 5
"""New products a published list carries."""
NEW_PRODUCT_REASON = "new in the catalogue"
_EVENT_IDS = uuid.UUID("0b7f8e52-3c1d-4a6e-9f2b-5d8a7c6e4b31")
_TEXT_KEPT = 300
"""The contract's bound on a description or a reason."""


@dataclass(frozen=True, slots=True)
class ServedList:
    """What a customer is served: picks as stored ([{product_id, description, score, reason}]),
    whether they come from the customer's own data, and the new products (catalogue rows)."""

    personalised: bool
    picks: list[dict[str, Any]]
    new_products: list[dict[str, Any]]

    def signature(self) -> str:
        """What a change of publishes the list again."""
        return json.dumps(
            [
                self.personalised,
                [pick["product_id"] for pick in self.picks[:PUBLISHED_PICKS]],
                [product["product_id"] for product in self.new_products],
            ]
        )


@dataclass(frozen=True, slots=True)
class Publication:
    customer_id: str
    version: int
    """The customer's count of published lists, this one included."""
    served: ServedList


def popular_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """A popular good (a `store.popular_products` row) as a pick: scored by its buyers."""
    reason = Reason("popular")
    return {
        "product_id": row["product_id"],
        "description": row["description"],
        "score": float(row["buyers"]),
        "reason": {"kind": reason.kind, "product_id": None, "text": reason.text},
    }


def served_list(
    personal: Sequence[dict[str, Any]],
    allowed: bool,
    kept: Collection[str],
    popular: Sequence[Mapping[str, Any]],
    newest: Sequence[Mapping[str, Any]],
) -> ServedList:
    """A customer's list from their personal picks (empty when the model has none for them),
    whether they allow personalisation, the products they kept, and the catalogue's popular and
    newest goods (best first)."""

    def offered(rows: Sequence[Mapping[str, Any]], count: int) -> list[Mapping[str, Any]]:
        return [row for row in rows if not (allowed and row["product_id"] in kept)][:count]

    new_products = [dict(row) for row in offered(newest, NEW_PRODUCTS)]
    if allowed and personal:
        return ServedList(True, list(personal), new_products)
    picks = [popular_document(row) for row in offered(popular, PICKS_KEPT)]
    return ServedList(False, picks, new_products)


def changed_lists(
    stored: Mapping[str, tuple[int, str]], served: Mapping[str, ServedList]
) -> list[Publication]:
    """The lists to publish, by customer: those whose signature differs from the one last
    published ((version, signature) by customer), with the next version."""
    found: list[Publication] = []
    for customer in sorted(served):
        before = stored.get(customer)
        if before is not None and before[1] == served[customer].signature():
            continue
        version = (before[0] if before is not None else 0) + 1
        found.append(Publication(customer, version, served[customer]))
    return found


def _text(value: str | None) -> str | None:
    return value[:_TEXT_KEPT] if value is not None else None


def refreshed_event(publication: Publication, model_version: int, at: datetime) -> Derived:
    """The event of a published list; its id comes from the customer, the version and what the
    list names, so a relay that repeats itself gives copies consumers drop, and a list counted
    again from 1 after a rebuild is not taken for one published before."""
    served = publication.served
    data = RecommendationsRefreshed(
        picks=tuple(
            RecommendedProduct(
                product_id=pick["product_id"],
                description=_text(pick["description"]),
                score=pick["score"],
                reason=_text(pick["reason"]["text"]) or "",
            )
            for pick in served.picks[:PUBLISHED_PICKS]
        ),
        new_products=tuple(
            RecommendedProduct(
                product_id=row["product_id"],
                description=_text(row["description"]),
                score=float(row["buyers"]),
                reason=NEW_PRODUCT_REASON,
            )
            for row in served.new_products
        ),
        personalised=served.personalised,
        model_version=model_version,
        version=publication.version,
    )
    customer = publication.customer_id
    name = f"{customer}\x1f{publication.version}\x1f{served.signature()}"
    event_id = name_based_id(_EVENT_IDS, name)
    return derived_event(
        RECOMMENDATIONS_REFRESHED, customer, data, source=SOURCE, time=at, event_id=event_id
    )
