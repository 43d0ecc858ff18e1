"""Metrics of the broadcast service, beside the shared crm_* worker and HTTP metrics."""

from prometheus_client import Counter, Gauge, Histogram

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
MESSAGES = Counter(
    "crm_broadcast_messages",
    "Messages by channel and what became of them (sent, bounced, failed, delivered, opened, "
    "clicked, unsubscribed, cancelled at send time)",
    ["channel", "outcome"],
)
SEND_RETRIES = Counter(
    "crm_broadcast_send_retries",
    "Attempts that failed for a reason that may pass (SMTP 4xx, connection, HTTP 429/5xx) and "
    "were planned again with backoff",
    ["channel"],
)
SEND_SECONDS = Histogram(
    "crm_broadcast_send_seconds",
    "How long an adapter took to send one message (the SMTP transaction or the webhook call)",
    ["channel"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SEND_QUEUE = Gauge(
    "crm_broadcast_send_queue",
    "Planned messages due now that no sender has claimed yet",
)
