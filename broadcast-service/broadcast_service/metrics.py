"""Metrics of the broadcast service, beside the shared crm_* worker and HTTP metrics."""

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

from broadcast_service.campaigns import outcome_of
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
    "Contact decisions made (asked through the API, and one per campaign recipient planned), by "
    "purpose, outcome (contact, delayed, refused) and reason code (every distinct code of a "
    "decision counts once)",
    ["purpose", "outcome", "reason"],
)


def count_decision(decision: Decision) -> None:
    """Count one decision under its purpose, outcome and each of its reason codes."""
    outcome = "contact" if decision.contact else "delayed" if decision.possible_at else "refused"
    for code in decision.codes:
        DECISIONS.labels(decision.purpose, outcome, code).inc()


def count_planned(purpose: str, decided: Mapping[tuple[str, tuple[str, ...]], int]) -> None:
    """Count a planned chunk's decisions (recipients per reason and codes) like count_decision,
    a campaign's recipient that is not planned being refused."""
    for (reason, codes), recipients in decided.items():
        outcome = outcome_of(reason)
        for code in codes:
            DECISIONS.labels(purpose, outcome, code).inc(recipients)


CAMPAIGNS_PLANNED = Counter("crm_broadcast_campaigns_planned", "Campaigns planned")
CAMPAIGN_RECIPIENTS = Counter(
    "crm_broadcast_campaign_recipients",
    "Recipients of planned campaigns by decision reason (planned ones included)",
    ["reason"],
)
PLANNING_SECONDS = Histogram(
    "crm_broadcast_campaign_planning_seconds",
    "How long planning one campaign took, its chunks added up (recipients read, decided, written)",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
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
SMTP_CONNECTION_FAILURES = Counter(
    "crm_broadcast_smtp_connection_failures",
    "SMTP transactions that failed with their connection (refused, dropped, timed out, TLS or "
    "AUTH not set up): the message is retried; the log says an outage once, at its first failure",
)
SEND_QUEUE = Gauge(
    "crm_broadcast_send_queue",
    "Planned messages due now that no sender has claimed yet",
)
EXPIRED_CLAIMS = Counter(
    "crm_broadcast_expired_claims",
    "Claimed messages whose sender died before recording them, by channel and fate: replan "
    "(never started), resend (started, the provider dedupes), interrupted (a started e-mail, "
    "failed rather than risk a second copy)",
    ["channel", "fate"],
)
PLANNING_CHUNK_SECONDS = Histogram(
    "crm_broadcast_campaign_plan_chunk_seconds",
    "How long one chunk of a campaign's plan took (recipients read, decided, written, committed "
    "with the plan's cursor); crm_broadcast_campaign_recipients counts its recipients by reason",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
