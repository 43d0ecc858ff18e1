"""What the interaction service reads: contacts, feedback, orders, refunds, case steps and the
clock's ticks (for case deadlines). What it derives from cases goes on crm.case-signals."""

from crm_shared.contracts.events import CASE_STEP_TYPES, CLOCK_TICKED
from crm_shared.contracts.topics import CASES, CONTACTS, ORDERS

TOPICS = (CONTACTS, ORDERS, CASES)

FOLDS = (
    frozenset(
        {
            "crm.contact.logged.v1",
            "crm.feedback.given.v1",
            "crm.order.placed.v1",
            "crm.order.refunded.v1",
        }
    )
    | CASE_STEP_TYPES
    | {CLOCK_TICKED}
)
