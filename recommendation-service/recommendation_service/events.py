"""What the recommendation service reads: orders and product views. It publishes nothing yet.

Refunds travel on the orders topic but are not folded for now: a returned product still counts
as bought by that customer, for popularity and for "customers who bought X also bought Y".
"""

from crm_shared.contracts.topics import BROWSING, ORDERS

TOPICS = (ORDERS, BROWSING)

ORDER_PLACED = "crm.order.placed.v1"
PRODUCT_VIEWED = "crm.product.viewed.v1"
FOLDS = frozenset({ORDER_PLACED, PRODUCT_VIEWED})
