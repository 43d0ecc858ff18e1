"""What the interaction service reads: every touchpoint of a customer (contacts, feedback,
orders, refunds and cancellations, web and app sessions, consent and preference changes, the
broadcast service's message outcomes), case steps and the clock's ticks (case deadlines, journey
time). What it derives goes on crm.case-signals (SLA breaches, complaints open and closed) and
crm.experience (detractor scores, journey stage changes)."""

from crm_shared.contracts.events import (
    CASE_STEP_TYPES,
    CLOCK_TICKED,
    CONTACT_LOGGED_V2,
    FEEDBACK_GIVEN_V2,
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
            FEEDBACK_GIVEN_V2,
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
