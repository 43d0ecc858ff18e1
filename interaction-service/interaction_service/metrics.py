"""Metrics of the interaction service, beside the shared crm_* worker and HTTP metrics."""

from prometheus_client import Counter

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
