"""What the profile service reads: identity changes and purchases. It publishes nothing yet."""

from crm_shared.topics import CUSTOMERS, ORDERS

TOPICS = (CUSTOMERS, ORDERS)

CUSTOMER_TYPES = frozenset({"crm.customer.registered.v1", "crm.customer.updated.v1"})
PURCHASE_TYPES = frozenset({"crm.order.placed.v1", "crm.order.refunded.v1"})
FOLDS = CUSTOMER_TYPES | PURCHASE_TYPES
