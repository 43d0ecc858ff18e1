"""What the interaction service reads: contacts, feedback, orders, refunds and the clock's ticks;
what it publishes: detractor scores and journey stage changes (crm.experience)."""

from crm_shared.contracts.events import CLOCK_TICKED, FEEDBACK_GIVEN_V2
from crm_shared.contracts.topics import CONTACTS, EXPERIENCE, ORDERS

TOPICS = (CONTACTS, ORDERS)

FOLDS = frozenset(
    {
        "crm.contact.logged.v1",
        "crm.feedback.given.v1",
        "crm.order.placed.v1",
        "crm.order.refunded.v1",
        FEEDBACK_GIVEN_V2,
        CLOCK_TICKED,
    }
)

PUBLISHES = (EXPERIENCE,)
