"""What the recommendation service reads: orders, refunds (negative signals) and product views.
It publishes nothing yet."""

from crm_shared.contracts.topics import BROWSING, ORDERS

TOPICS = (ORDERS, BROWSING)

ORDER_PLACED = "crm.order.placed.v1"
ORDER_REFUNDED = "crm.order.refunded.v1"
PRODUCT_VIEWED = "crm.product.viewed.v1"
FOLDS = frozenset({ORDER_PLACED, ORDER_REFUNDED, PRODUCT_VIEWED})
