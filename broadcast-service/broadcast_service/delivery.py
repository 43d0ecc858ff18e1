"""What the sender decides, without I/O: whether a planned message may still go, what an
adapter's answer means (sent, try again later, give up, hard bounce), when to try again, and
which events each outcome publishes.

Time and randomness are passed in, so every rule here is tested without a clock, a network or a
database.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from broadcast_service.decision import (
    DEFAULT_POLICY,
    ContactPolicy,
    CustomerReach,
    contact_decision,
)
from broadcast_service.projection import RecentSend
from crm_shared.contracts.delivery_reports import ReportedOutcome
from crm_shared.contracts.events import (
    CONSENT_RECORDED,
    DO_NOT_CONTACT_ADDED,
    MESSAGE_OUTCOME_RECORDED,
    Channel,
    ConsentCapture,
    ConsentRecorded,
    ConsentState,
    ContactPurpose,
    DoNotContactAdded,
    DoNotContactReason,
    MessageOutcome,
    MessageOutcomeRecorded,
)
from crm_shared.runtime.derived import Derived, derived_event, name_based_id

SOURCE = "broadcast-service"
"""The CloudEvents source of everything the sender and the delivery reports publish."""
_EVENT_IDS = uuid.UUID("0b6a3c52-7d0e-4c1f-9f43-5e2d8a61c7b4")


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One row of `outbound_messages` as the sender claims it."""

    message_id: str
    campaign_id: str | None
    customer_id: str
    channel: str
    address: str
    purpose: str
    subject: str | None
    body_text: str
    body_html: str | None
    attempts: int
    campaign_cancelled: bool = False
    """Its campaign was cancelled after it was planned: the fold cancels the planned rows, but
    not one a sender held then (claimed, then planned again to retry), which the re-check stops.
    Read by the claim only (`store.claim_due`); other reads of a message leave it False."""


# ----------------------------------------------------------------------------- the re-check


CAMPAIGN_CANCELLED = "campaign cancelled"
"""The reason a message of a cancelled campaign is not sent."""


@dataclass(frozen=True)
class SendVerdict:
    """Whether a planned message may go now; if not, until when to wait or why to cancel it."""

    send: bool
    reason: str
    wait_until: datetime | None = None


def send_time_check(
    message: OutboundMessage,
    reach: CustomerReach,
    sends: Sequence[RecentSend],
    at: datetime,
    policy: ContactPolicy = DEFAULT_POLICY,
) -> SendVerdict:
    """The contact decision again, at send time, on the message's own channel: a customer who
    opted out, complained or was listed as do-not-contact after the campaign was planned is not
    sent to, and the frequency budget counts what every campaign sent since. The one place the
    sender asks the decision; a channel only delayed (quiet hours, a pause, a full budget, a
    detractor hold) postpones the message, any other refusal cancels it, and so does the
    cancellation of its campaign."""
    if message.campaign_cancelled:
        return SendVerdict(False, CAMPAIGN_CANCELLED)
    decision = contact_decision(
        reach, sends, message.purpose, at, channel=message.channel, policy=policy
    )
    if decision.contact:
        return SendVerdict(True, decision.reason)
    return SendVerdict(False, decision.reason, wait_until=decision.possible_at)


# ----------------------------------------------------------------------------- adapter answers


class Result(StrEnum):
    """What an adapter's answer means for the ledger."""

    SENT = "sent"
    TEMPORARY = "temporary"  # try again later: SMTP 4xx, connection lost, HTTP 429/5xx
    PERMANENT = "permanent"  # will never work as it is: give up without retrying
    BOUNCED = "bounced"  # the address itself is refused (hard bounce): do not contact it again


@dataclass(frozen=True, slots=True)
class SendResult:
    result: Result
    detail: str = ""
    provider_reference: str | None = None


def smtp_result(code: int, text: str, *, recipient_refused: bool) -> SendResult:
    """An SMTP reply code as a result: 4xx is temporary; 5xx on the recipient is a hard bounce;
    any other 5xx (policy, syntax, size) is a permanent failure of this message."""
    detail = f"SMTP {code} {text}".strip()[:300]
    if 400 <= code < 500:
        return SendResult(Result.TEMPORARY, detail)
    if recipient_refused and code in (550, 551, 553):
        return SendResult(Result.BOUNCED, detail)
    return SendResult(Result.PERMANENT, detail)


_RETRIED_HTTP = frozenset({408, 409, 425, 429})


def http_result(status: int, text: str) -> SendResult:
    """A provider's HTTP status as a result: 2xx sent; 429, 408 and 5xx temporary; other 4xx
    permanent (the provider refuses this request as it is)."""
    detail = f"HTTP {status} {text}".strip()[:300]
    if 200 <= status < 300:
        return SendResult(Result.SENT, detail)
    if status >= 500 or status in _RETRIED_HTTP:
        return SendResult(Result.TEMPORARY, detail)
    return SendResult(Result.PERMANENT, detail)


# ----------------------------------------------------------------------------- retries


def backoff(attempt: int, base: timedelta, cap: timedelta, jitter: float) -> timedelta:
    """Exponential backoff with jitter: base * 2^(attempt-1), at most `cap`, scaled by a factor
    in [0.5, 1) from `jitter` in [0, 1), so failed messages do not all come back together."""
    if not 0 <= jitter < 1:
        raise ValueError("jitter must be in [0, 1)")
    exponential: timedelta = base * 2 ** min(attempt - 1, 32)
    return min(cap, exponential) * (0.5 + jitter / 2)


@dataclass(frozen=True, slots=True)
class NextStep:
    """Where a message goes after an attempt: its new state, when to retry, the outcome to
    publish (None: nothing to tell yet) and whether its address goes on the do-not-contact list."""

    state: str
    retry_at: datetime | None
    outcome: MessageOutcome | None
    do_not_contact: bool = False


def next_step(
    result: SendResult,
    attempts: int,
    max_attempts: int,
    at: datetime,
    base: timedelta,
    cap: timedelta,
    jitter: float,
) -> NextStep:
    """The ledger step for an adapter's answer after the `attempts`-th attempt."""
    if result.result is Result.SENT:
        return NextStep("sent", None, MessageOutcome.SENT)
    if result.result is Result.BOUNCED:
        return NextStep("failed", None, MessageOutcome.BOUNCED, do_not_contact=True)
    if result.result is Result.TEMPORARY and attempts < max_attempts:
        return NextStep("planned", at + backoff(attempts, base, cap, jitter), None)
    return NextStep("failed", None, MessageOutcome.FAILED)


# ----------------------------------------------------------------------------- expired claims

DEDUPED_CHANNELS = frozenset({Channel.SMS, Channel.PUSH, Channel.PHONE, Channel.CHAT})
"""Channels sent through a webhook provider, which sends a message posted twice with the same
Idempotency-Key once: sending one of them again cannot make it arrive twice."""
INTERRUPTED_REASON = "interrupted mid-send: not sent again so it cannot arrive twice"


class ExpiredClaim(StrEnum):
    """What becomes of a claimed message whose lease ended before it was recorded."""

    REPLAN = "replan"  # never started: nothing went out, plan it again
    RESEND = "resend"  # started, the provider dedupes: send again with the same key
    INTERRUPTED = "interrupted"  # started, the channel cannot dedupe: it may have arrived

    @property
    def sends(self) -> bool:
        """Whether the message is planned again (as opposed to failed for good)."""
        return self is not ExpiredClaim.INTERRUPTED


def expired_claim(channel: str, started: bool) -> ExpiredClaim:
    """The fate of a claim whose sender died (or stalled past its lease). Only a started message
    may have reached the provider; SMTP has no idempotency, so an e-mail (or any channel not known
    to dedupe) that may have arrived is given up as interrupted rather than risk a second copy."""
    if not started:
        return ExpiredClaim.REPLAN
    if channel in DEDUPED_CHANNELS:
        return ExpiredClaim.RESEND
    return ExpiredClaim.INTERRUPTED


# ----------------------------------------------------------------------------- message content


_MESSAGE_ID_LOCAL = re.compile(r"[A-Za-z0-9._-]+")
"""What a message id may be to stand as the Message-ID's left part as it is."""


def message_id_header(message_id: str, domain: str) -> str:
    """The RFC 5322 Message-ID of a message: the same on every attempt, so a copy sent again
    after a crash is recognisable as the same message by whoever receives it."""
    safe = _MESSAGE_ID_LOCAL.fullmatch(message_id)
    local = message_id if safe else str(uuid.uuid5(_EVENT_IDS, message_id))
    return f"<{local}@{domain}>"


def webhook_body(message: OutboundMessage) -> dict[str, Any]:
    """The JSON a webhook provider (SMS, push, voice, messenger) receives."""
    return {
        "message_id": message.message_id,
        "campaign_id": message.campaign_id,
        "customer_id": message.customer_id,
        "channel": message.channel,
        "to": message.address,
        "purpose": message.purpose,
        "subject": message.subject,
        "text": message.body_text,
    }


def is_marketing(message: OutboundMessage) -> bool:
    return message.purpose.strip().lower() == ContactPurpose.MARKETING


# ----------------------------------------------------------------------------- events


def _event(
    event_type: str, customer_id: str, data: BaseModel, at: datetime, *identity: str
) -> Derived:
    """A derived event whose id comes from the message and the step: recording the step again
    (a retry after a crash, a provider reporting twice) gives the same id, which consumers drop."""
    event_id = name_based_id(_EVENT_IDS, "\x1f".join((event_type, *identity)))
    return derived_event(event_type, customer_id, data, source=SOURCE, time=at, event_id=event_id)


def _channel(message: OutboundMessage) -> Channel:
    return Channel(message.channel)


def outcome_event(
    message: OutboundMessage, outcome: MessageOutcome, reason: str | None, at: datetime
) -> Derived:
    data = MessageOutcomeRecorded(
        message_id=message.message_id,
        campaign_id=message.campaign_id,
        channel=_channel(message),
        purpose=message.purpose,
        outcome=outcome,
        reason=None if reason is None else reason[:300],
    )
    return _event(
        MESSAGE_OUTCOME_RECORDED, message.customer_id, data, at, message.message_id, outcome
    )


def bounce_do_not_contact(message: OutboundMessage, reason: str, at: datetime) -> Derived:
    """A hard bounce: the address is dead, so the channel goes on the do-not-contact list."""
    data = DoNotContactAdded(
        channel=_channel(message),
        reason=DoNotContactReason.BOUNCED,
        note=f"{message.address}: {reason}"[:300],
    )
    return _event(DO_NOT_CONTACT_ADDED, message.customer_id, data, at, message.message_id)


def consent_withdrawn(
    message: OutboundMessage, capture: ConsentCapture, evidence: str, at: datetime
) -> Derived:
    """The customer unsubscribed or complained about a message: the consent for its purpose on
    its channel is revoked, with the provider's report as evidence."""
    try:
        purpose = ContactPurpose(message.purpose.strip().lower())
    except ValueError:
        purpose = ContactPurpose.MARKETING
    data = ConsentRecorded(
        purpose=purpose,
        channel=_channel(message),
        state=ConsentState.REVOKED,
        capture_method=capture,
        evidence=evidence[:500],
    )
    return _event(CONSENT_RECORDED, message.customer_id, data, at, message.message_id, capture)


def events_of_step(
    message: OutboundMessage, step: NextStep, detail: str, at: datetime
) -> list[Derived]:
    """The events one ledger step publishes: its outcome, and do-not-contact on a hard bounce."""
    events: list[Derived] = []
    if step.outcome is not None:
        reason = None if step.outcome is MessageOutcome.SENT else detail
        events.append(outcome_event(message, step.outcome, reason, at))
    if step.do_not_contact:
        events.append(bounce_do_not_contact(message, detail, at))
    return events


def events_of_report(
    message: OutboundMessage, reported: ReportedOutcome, reason: str | None, at: datetime
) -> list[Derived]:
    """The events a provider's report publishes: the outcome; a bounce also puts the channel on
    the do-not-contact list; an unsubscribe or a complaint revokes the consent."""
    note: str | None = reason
    if reported is ReportedOutcome.COMPLAINED:
        outcome, note = MessageOutcome.UNSUBSCRIBED, f"complaint: {reason or 'spam report'}"
    else:
        outcome = MessageOutcome(reported.value)
    events = [outcome_event(message, outcome, note, at)]
    if reported is ReportedOutcome.BOUNCED:
        events.append(bounce_do_not_contact(message, reason or "bounced", at))
    elif reported is ReportedOutcome.UNSUBSCRIBED:
        events.append(
            consent_withdrawn(message, ConsentCapture.UNSUBSCRIBE_LINK, note or "unsubscribed", at)
        )
    elif reported is ReportedOutcome.COMPLAINED:
        events.append(consent_withdrawn(message, ConsentCapture.COMPLAINT, note or "", at))
    return events
