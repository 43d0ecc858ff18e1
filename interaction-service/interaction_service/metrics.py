"""Metrics of the interaction service, beside the shared crm_* worker and HTTP metrics."""

from prometheus_client import Counter, Gauge

TIMELINE_ENTRIES = Counter(
    "crm_interaction_timeline_entries",
    "Touchpoints written to customer timelines by the worker",
    ["kind"],
)
UNHAPPY_TOUCHPOINTS = Counter(
    "crm_interaction_unhappy_touchpoints",
    "Complaints (feedback of kind complaint) and refusals (contact outcome refused) folded",
    ["reason"],
)
TOUCHPOINT_OUTCOMES = Counter(
    "crm_interaction_touchpoint_outcomes",
    "Timeline entries written with an outcome, by kind (contact, message, consent) and outcome",
    ["kind", "outcome"],
)
UNLISTED_OUTCOMES = Counter(
    "crm_interaction_unlisted_outcomes",
    "v1 contacts whose free-text outcome names no listed outcome (folded as 'other')",
)
SLA_BREACHES = Counter(
    "crm_interaction_case_sla_breaches",
    "SLA targets cases missed, counted when the worker folds the breach",
    ["target", "priority"],
)
CASE_STEPS_REJECTED = Counter(
    "crm_interaction_case_steps_rejected",
    "Case steps kept as rejected: not allowed from the case's status, or for an unknown case",
    ["step"],
)
OPEN_CASES = Gauge(
    "crm_interaction_open_cases",
    "Cases being handled (open or assigned), per department and priority, read from the table",
    ["department", "priority"],
)

# The voice of the customer and the journey (experience_fold.py). The gauges are set from the
# tables every few seconds, so they are right straight after a restart.
DETRACTORS = Counter(
    "crm_interaction_detractor_scores",
    "Detractor scores folded (NPS 0-6, CSAT 1-2, effort 1-2), each announced on crm.experience",
    ["measure"],
)
NPS = Gauge(
    "crm_interaction_nps",
    "Net Promoter Score (-100 to 100) per touchpoint over the 30 days before the newest rating "
    "or tick",
    ["touchpoint"],
)
FEEDBACK_LAST_TIME = Gauge(
    "crm_interaction_feedback_last_timestamp_seconds",
    "Event time of the newest feedback per channel (a channel that goes silent stops moving)",
    ["channel"],
)
JOURNEY_TRANSITIONS = Counter(
    "crm_interaction_journey_transitions",
    "Journey stage changes folded, by the stage entered",
    ["stage"],
)
JOURNEY_CUSTOMERS = Gauge(
    "crm_interaction_journey_customers",
    "Customers in each journey stage",
    ["stage"],
)
