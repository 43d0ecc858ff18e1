"""What the profile service reads (identity changes and merges, what customers say of the brand
and its competitors, purchases and cancellations, complaints opened, products' catalogue records
for their categories, the clock's ticks) and what it derives (segment membership changes on
crm.segments)."""

from crm_shared.contracts.events import (
    CLOCK_TICKED,
    COMPLAINT_OPENED,
    MERGE_TYPES,
    OPINION_TYPES,
    PRODUCT_CATALOGUED,
    SEGMENT_DEFINED,
    SEGMENT_RETIRED,
)
from crm_shared.contracts.topics import (
    CASE_SIGNALS,
    CATALOGUE,
    CUSTOMERS,
    ORDERS,
    SEGMENT_DEFINITIONS,
    SEGMENTS,
)

TOPICS = (CUSTOMERS, ORDERS, SEGMENT_DEFINITIONS, CASE_SIGNALS, CATALOGUE)
PUBLISHES = (SEGMENTS,)

CUSTOMER_TYPES = frozenset({"crm.customer.registered.v1", "crm.customer.updated.v1"})
PURCHASE_TYPES = frozenset({"crm.order.placed.v1", "crm.order.refunded.v1"})
ORDER_CANCELLED = "crm.order.cancelled.v1"
DEFINITION_TYPES = frozenset({SEGMENT_DEFINED, SEGMENT_RETIRED})
"""Operator segments' definitions (profile_service.segment_fold)."""
CATALOGUE_TYPES = frozenset({PRODUCT_CATALOGUED})
"""Products' records, keyed by product, not by customer (profile_service.catalogue)."""
FOLDS = (
    CUSTOMER_TYPES
    | MERGE_TYPES
    | OPINION_TYPES
    | PURCHASE_TYPES
    | DEFINITION_TYPES
    | CATALOGUE_TYPES
    | {ORDER_CANCELLED, COMPLAINT_OPENED, CLOCK_TICKED}
)
