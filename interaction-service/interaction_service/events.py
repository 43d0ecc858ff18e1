"""What the interaction service reads: every touchpoint of a customer (contacts, feedback,
orders, refunds and cancellations, web and app sessions, consent and preference changes, the
broadcast service's message outcomes), case steps and the clock's ticks (for case deadlines).
What it derives from cases goes on crm.case-signals."""

from crm_shared.contracts.events import (
    CASE_STEP_TYPES,
    CLOCK_TICKED,
    CONTACT_LOGGED_V2,
    MESSAGE_OUTCOME_RECORDED,
    SESSION_RECORDED,
)
from crm_shared.contracts.topics import CASES, CONTACTS, MESSAGES, ORDERS, PREFERENCES, SESSIONS

TOPICS = (CONTACTS, ORDERS, PREFERENCES, SESSIONS, MESSAGES, CASES)

FOLDS = (
    frozenset(
        {
            "crm.contact.logged.v1",
            CONTACT_LOGGED_V2,
            "crm.feedback.given.v1",
            "crm.order.placed.v1",
            "crm.order.refunded.v1",
            "crm.order.cancelled.v1",
            "crm.channel_preference.set.v1",
            "crm.consent.granted.v1",
            "crm.consent.revoked.v1",
            SESSION_RECORDED,
            MESSAGE_OUTCOME_RECORDED,
        }
    )
    | CASE_STEP_TYPES
    | {CLOCK_TICKED}
)
