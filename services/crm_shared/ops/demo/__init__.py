"""Demo data: the real UCI Online Retail invoices as events, plus seeded synthetic CRM facts.

`retail` and `synthetic` are pure (the only I/O is reading the CSV); `load` publishes to Kafka.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any


def event_order(document: Mapping[str, Any]) -> tuple[datetime, int]:
    """Publishing order of envelopes: by event time, customer events first at equal time.

    Kafka keeps order per customer key only, so publishing in this order makes a profile exist
    (and carry its current country) before the facts that refer to it. Ties beyond that keep
    their given order, as Python's sort is stable.
    """
    is_customer_event = str(document["type"]).startswith("crm.customer.")
    return datetime.fromisoformat(document["time"]), 0 if is_customer_event else 1
