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
