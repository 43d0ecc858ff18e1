"""Metrics of the broadcast service, beside the shared crm_* worker and HTTP metrics."""

from prometheus_client import Counter, Histogram

CONSENT_EVENTS = Counter(
    "crm_broadcast_consent_events",
    "Consent grants and revocations folded into the consent history",
    ["state"],
)
EVENTS_SUPERSEDED = Counter(
    "crm_broadcast_events_superseded",
    "Preference and consent events already outdated by a newer one (late, or older within "
    "their batch): they change no current state",
    ["kind"],
)
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
