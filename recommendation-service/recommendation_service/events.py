"""What the recommendation service reads: orders, refunds (negative signals), cancellations,
product views, consents to personalisation, the product catalogue and segment membership changes;
it publishes each customer's list on crm.recommendations."""

from crm_shared.contracts.events import (
    CONSENT_RECORDED,
    PRODUCT_CATALOGUED,
    SEGMENT_ENTERED,
    SEGMENT_LEFT,
)
from crm_shared.contracts.topics import BROWSING, CATALOGUE, ORDERS, PREFERENCES, SEGMENTS

TOPICS = (ORDERS, BROWSING, PREFERENCES, CATALOGUE, SEGMENTS)

ORDER_PLACED = "crm.order.placed.v1"
ORDER_REFUNDED = "crm.order.refunded.v1"
ORDER_CANCELLED = "crm.order.cancelled.v1"
PRODUCT_VIEWED = "crm.product.viewed.v1"
CONSENT_GRANTED = "crm.consent.granted.v1"
CONSENT_REVOKED = "crm.consent.revoked.v1"
FOLDS = frozenset(
    {
        ORDER_PLACED,
        ORDER_REFUNDED,
        ORDER_CANCELLED,
        PRODUCT_VIEWED,
        CONSENT_GRANTED,
        CONSENT_REVOKED,
        CONSENT_RECORDED,
        PRODUCT_CATALOGUED,
        SEGMENT_ENTERED,
        SEGMENT_LEFT,
    }
)
