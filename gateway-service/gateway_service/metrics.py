"""Metrics of the gateway, beside the shared crm_http_* metrics of every API."""

from prometheus_client import Counter

UPSTREAM_REQUESTS = Counter(
    "crm_gateway_upstream_requests",
    "Calls from the gateway to a service, by part of the answer "
    "and outcome (found, not_found, timeout, unavailable, error)",
    ["part", "outcome"],
)
INGESTED_EVENTS = Counter(
    "crm_gateway_ingested_events",
    "Events received on POST /v1/events: accepted (acknowledged by Kafka) or rejected",
    ["status"],
)
PREFERENCE_CENTRE_EVENTS = Counter(
    "crm_gateway_preference_centre_events",
    "Events the preference centre published: channel set-ups and consents changed on its page, "
    "and one-click unsubscribes (repeated clicks included)",
    ["kind"],
)
TRACKING_REPORTS = Counter(
    "crm_gateway_tracking_reports",
    "Opens (pixel) and clicks (redirect) of tracked e-mails passed to the broadcast service, by "
    "result: recorded, repeated (known already), unknown (no such message), failed (not "
    "recorded: the broadcast service was down or failed; the image or redirect was served still)",
    ["outcome", "result"],
)
