"""Metrics of the broadcast service, beside the shared crm_* worker and HTTP metrics."""

from prometheus_client import Counter, Histogram

from broadcast_service.decision import Decision

CONSENT_EVENTS = Counter(
    "crm_broadcast_consent_events",
    "Consent events folded into the consent history, by state (granted, pending, denied, revoked)",
    ["state"],
)
EVENTS_SUPERSEDED = Counter(
    "crm_broadcast_events_superseded",
    "Preference and consent events already outdated by a newer one (late, or older within "
    "their batch): they change no current state",
    ["kind"],
)
DECISIONS = Counter(
    "crm_broadcast_decisions",
    "Contact decisions answered, by outcome (contact, delayed, refused) and reason code (every "
    "distinct code of a decision counts once)",
    ["outcome", "reason"],
)


def count_decision(decision: Decision) -> None:
    """Count one decision under its outcome and each of its reason codes."""
    outcome = "contact" if decision.contact else "delayed" if decision.possible_at else "refused"
    for code in decision.codes:
        DECISIONS.labels(outcome, code).inc()


CAMPAIGNS_PLANNED = Counter("crm_broadcast_campaigns_planned", "Campaigns planned")
CAMPAIGN_RECIPIENTS = Counter(
    "crm_broadcast_campaign_recipients",
    "Recipients of planned campaigns by decision reason (planned ones included)",
    ["reason"],
)
PLANNING_SECONDS = Histogram(
    "crm_broadcast_campaign_planning_seconds",
    "How long planning one campaign took (recipients read, decided, rendered and written)",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
