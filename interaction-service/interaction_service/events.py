"""What the interaction service reads: every touchpoint of a customer (contacts, feedback,
orders, refunds and cancellations, web and app sessions, consent and preference changes, the
broadcast service's message outcomes, case steps), product views (interest shown, for the
journey; not touchpoints) and the clock's ticks (case deadlines, journey time). What it derives
goes on crm.case-signals (SLA breaches, complaints open and closed) and crm.experience (detractor
scores, journey stage changes)."""

from crm_shared.contracts.events import CASE_STEP_TYPES, CLOCK_TICKED, PRODUCT_VIEWED
from crm_shared.contracts.timeline import TIMELINE_EVENT_TYPES
from crm_shared.contracts.topics import (
    BROWSING,
    CASES,
    CONTACTS,
    MESSAGES,
    ORDERS,
    PREFERENCES,
    SESSIONS,
)

TOPICS = (CONTACTS, ORDERS, PREFERENCES, SESSIONS, MESSAGES, CASES, BROWSING)

FOLDS = TIMELINE_EVENT_TYPES | CASE_STEP_TYPES | {CLOCK_TICKED, PRODUCT_VIEWED}
