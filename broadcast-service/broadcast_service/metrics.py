"""Metrics of the broadcast service, beside the shared crm_* worker and HTTP metrics."""

from prometheus_client import Counter

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
