"""A seeded stream of customer events (~450 bytes each) for benchmarks and crash tests."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from crm_shared.contracts.events import build_event

# Share of each event type in the stream: purchases and browsing dominate, as in a real shop.
MIX: tuple[tuple[str, float], ...] = (
    ("crm.order.placed.v1", 0.42),
    ("crm.order.refunded.v1", 0.03),
    ("crm.product.viewed.v1", 0.22),
    ("crm.contact.logged.v1", 0.12),
    ("crm.feedback.given.v1", 0.05),
    ("crm.customer.registered.v1", 0.04),
    ("crm.customer.updated.v1", 0.03),
    ("crm.channel_preference.set.v1", 0.03),
    ("crm.consent.granted.v1", 0.04),
    ("crm.consent.revoked.v1", 0.02),
)
_DESCRIPTIONS = (
    "WHITE HANGING HEART T-LIGHT HOLDER",
    "REGENCY CAKESTAND 3 TIER",
    "JUMBO BAG RED RETROSPOT",
    "PARTY BUNTING",
    "LUNCH BAG RED RETROSPOT",
    "ASSORTED COLOUR BIRD ORNAMENT",
    "SET OF 3 CAKE TINS PANTRY DESIGN",
    "PACK OF 72 RETROSPOT CAKE CASES",
)
_CHANNELS = ("email", "sms", "phone", "push", "mail")


class Workload:
    """Generates envelopes; `customers` and `products` bound the key space."""

    def __init__(
        self, seed: int = 7, customers: int = 20_000, products: int = 3_000, prefix: str = "b"
    ):
        self.random = random.Random(seed)
        self.customers = customers
        self.products = products
        self.prefix = prefix
        self.serial = 0
        self.types = [t for t, _ in MIX]
        self.weights = [w for _, w in MIX]

    def events(self, count: int, *, time: datetime | None = None) -> Iterator[dict[str, Any]]:
        """`count` events; with `time` None each gets a plausible past time, else that time."""
        for _ in range(count):
            yield self.event(time)

    def event(self, time: datetime | None = None) -> dict[str, Any]:
        r = self.random
        self.serial += 1
        event_type = r.choices(self.types, self.weights)[0]
        customer = f"{self.prefix}c{r.randrange(self.customers)}"
        when = time or datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=r.randrange(30_000_000))
        return build_event(
            event_type,
            customer,
            self._data(event_type),
            source="bench",
            time=when,
            event_id=f"{self.prefix}-{self.serial}",
        )

    def _product(self) -> str:
        return f"{self.prefix}p{int(self.random.paretovariate(1.2)) % self.products}"

    def _lines(self) -> list[dict[str, Any]]:
        r = self.random
        return [
            {
                "product_id": self._product(),
                "description": r.choice(_DESCRIPTIONS),
                "quantity": r.randint(1, 12),
                "unit_price": f"{r.randint(40, 2000) / 100:.2f}",
            }
            for _ in range(r.randint(3, 4))
        ]

    def _data(self, event_type: str) -> dict[str, Any]:
        r = self.random
        match event_type:
            case "crm.order.placed.v1":
                return {
                    "order_id": f"o{self.serial}",
                    "lines": self._lines(),
                    "channel": "web",
                    "currency": "GBP",
                }
            case "crm.order.refunded.v1":
                return {
                    "refund_id": f"r{self.serial}",
                    "lines": self._lines()[:1],
                    "reason": "damaged",
                }
            case "crm.product.viewed.v1":
                return {
                    "product_id": self._product(),
                    "channel": "web",
                    "session_id": f"s{r.randrange(10**9)}",
                }
            case "crm.contact.logged.v1":
                return {
                    "channel": r.choice(("phone", "email", "chat", "store")),
                    "direction": r.choice(("inbound", "outbound")),
                    "department": r.choice(("sales", "support", "service", "billing")),
                    "employee_id": f"emp-{r.randrange(200)}",
                    "topic": r.choice(
                        ("delivery delay", "invoice question", "product advice", "return")
                    ),
                    "outcome": r.choice(("resolved", "escalated", "callback", "refused")),
                    "note": "Customer asked about the status of the last order and the expected "
                    "delivery date; "
                    "agent checked the carrier tracking and promised an e-mail update by tomorrow.",
                }
            case "crm.feedback.given.v1":
                return {
                    "score": r.randint(1, 5),
                    "kind": r.choice(("praise", "complaint", "suggestion", "comment")),
                    "comment": "Fast delivery and friendly help on the phone, but the packaging "
                    "could be "
                    "better next time: two mugs arrived chipped. Otherwise very happy, thanks.",
                    "channel": "web",
                }
            case "crm.customer.registered.v1" | "crm.customer.updated.v1":
                n = r.randrange(10**6)
                return {
                    "name": f"Customer {n}",
                    "email": f"customer{n}@example.com",
                    "country": r.choice(("United Kingdom", "France", "Germany", "EIRE", "Spain")),
                    "attributes": {"segment": r.choice(("retail", "wholesale"))},
                }
            case "crm.channel_preference.set.v1":
                return {
                    "channels": r.sample(_CHANNELS, r.randint(1, 3)),
                    "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/London"},
                }
            case _:
                return {
                    "purpose": r.choice(("marketing", "newsletter", "profiling")),
                    "channel": r.choice((*_CHANNELS, None)),
                }
