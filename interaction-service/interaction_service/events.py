"""What the interaction service reads: contacts, feedback, orders, refunds. It publishes nothing."""

from crm_shared.contracts.topics import CONTACTS, ORDERS

TOPICS = (CONTACTS, ORDERS)

FOLDS = frozenset(
    {
        "crm.contact.logged.v1",
        "crm.feedback.given.v1",
        "crm.order.placed.v1",
        "crm.order.refunded.v1",
    }
)
