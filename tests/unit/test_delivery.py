"""The sender's rules without I/O: the re-check at send time, what adapters' answers mean,
backoff, the e-mail it writes (RFC 8058 headers, Message-ID) and the events each step publishes."""

from __future__ import annotations

import asyncio
import time as time_module
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from email import message_from_bytes, policy
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from broadcast_service.decision import reach_of
from broadcast_service.delivery import (
    CAMPAIGN_CANCELLED,
    INTERRUPTED_REASON,
    ExpiredClaim,
    NextStep,
    OutboundMessage,
    ReportedOutcome,
    Result,
    SendResult,
    backoff,
    events_of_report,
    events_of_step,
    expired_claim,
    http_result,
    message_id_header,
    next_step,
    outcome_event,
    send_time_check,
    smtp_result,
)
from broadcast_service.mail import ONE_CLICK, MailIdentity, build_email, smtp_path
from broadcast_service.projection import (
    ChannelPreferences,
    ChannelSetup,
    Consent,
    QuietWindow,
    RecentSend,
)
from broadcast_service.sender import Attempt, GroupCommit, Throttle
from crm_shared.contracts.events import (
    MESSAGE_OUTCOME_RECORDED,
    Channel,
    InvalidEvent,
    MessageOutcome,
    MessageOutcomeRecorded,
    build_event,
    encode_event,
    parse_event,
)
from crm_shared.runtime.links import read_link

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
SECRET = "link-secret-for-tests-0123456789"
IDENTITY = MailIdentity("CRM <news@crm.example>", "crm.example", "https://crm.example/", SECRET)


def _message(
    purpose: str = "marketing", channel: str = "email", **changes: object
) -> OutboundMessage:
    fields: dict[str, object] = {
        "message_id": "spring-sale.C-1",
        "campaign_id": "spring-sale",
        "customer_id": "C-1",
        "channel": channel,
        "address": "ada@example.com",
        "purpose": purpose,
        "subject": "Spring picks for you",
        "body_text": "Hello Ada,\nhere are your picks.",
        "body_html": None,
        "attempts": 0,
    }
    return OutboundMessage(**(fields | changes))  # type: ignore[arg-type]


def _reach(*channels: str, consents: Sequence[Consent], quiet: QuietWindow | None = None) -> Any:
    setups = tuple(ChannelSetup(c, f"{c}-address", quiet) for c in channels)
    preferences = ChannelPreferences("C-1", setups, "UTC", NOW - timedelta(days=1), "web", "p-1")
    return reach_of(preferences, consents)


def _consent(state: Any, channel: str = "*", minutes_ago: int = 60) -> Consent:
    changed = NOW - timedelta(minutes=minutes_ago)
    return Consent(
        "C-1", "marketing", channel, state, changed, "web", f"c-{minutes_ago}", "double_opt_in"
    )


# ----------------------------------------------------------------------------- re-check


def test_a_customer_who_still_consents_is_sent_to() -> None:
    verdict = send_time_check(_message(), _reach("email", consents=[_consent("granted")]), (), NOW)
    assert verdict.send


def test_an_opt_out_after_planning_cancels_the_message() -> None:
    consents = [_consent("granted", minutes_ago=60), _consent("revoked", "email", minutes_ago=5)]
    verdict = send_time_check(_message(), _reach("email", consents=consents), (), NOW)
    assert not verdict.send and verdict.wait_until is None
    assert "consent to marketing on email revoked" in verdict.reason


def test_a_message_for_a_channel_without_consent_is_cancelled_even_if_another_has_it() -> None:
    consents = [_consent("granted", "sms")]
    verdict = send_time_check(_message(), _reach("sms", "email", consents=consents), (), NOW)
    assert not verdict.send and "email" in verdict.reason


def test_a_message_of_a_cancelled_campaign_is_cancelled_though_the_customer_consents() -> None:
    """A message a sender held when its campaign was cancelled (claimed, then planned again to
    retry) is stopped at its next claim, even in quiet hours (cancelled, not postponed)."""
    quiet = QuietWindow(time(11), time(13), "UTC")
    reach = _reach("email", consents=[_consent("granted")], quiet=quiet)
    verdict = send_time_check(_message(campaign_cancelled=True), reach, (), NOW)
    assert (verdict.send, verdict.reason, verdict.wait_until) == (False, CAMPAIGN_CANCELLED, None)


def test_quiet_hours_postpone_rather_than_cancel() -> None:
    quiet = QuietWindow(time(11), time(13), "UTC")
    reach = _reach("email", consents=[_consent("granted")], quiet=quiet)
    verdict = send_time_check(_message(), reach, (), NOW)
    assert not verdict.send
    assert verdict.wait_until == datetime(2026, 3, 2, 13, 0, tzinfo=UTC)


def test_the_budget_counts_what_every_campaign_sent() -> None:
    reach = _reach("email", consents=[_consent("granted")])
    capped = replace(
        reach,
        preferences=replace(
            reach.preferences,
            channels=(ChannelSetup("email", "a@example.com", max_per_day=1),),
        ),
    )
    earlier = [RecentSend("email", "marketing", NOW - timedelta(hours=2))]
    verdict = send_time_check(_message(), capped, earlier, NOW)
    assert not verdict.send and verdict.wait_until == NOW + timedelta(hours=22)


# ----------------------------------------------------------------------------- answers, retries


@pytest.mark.parametrize(
    ("code", "recipient", "expected"),
    [
        (421, False, Result.TEMPORARY),
        (451, True, Result.TEMPORARY),
        (550, True, Result.BOUNCED),
        (553, True, Result.BOUNCED),
        (552, False, Result.PERMANENT),
        (554, False, Result.PERMANENT),
    ],
)
def test_smtp_codes(code: int, recipient: bool, expected: Result) -> None:
    assert smtp_result(code, "text", recipient_refused=recipient).result is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, Result.SENT),
        (202, Result.SENT),
        (429, Result.TEMPORARY),
        (503, Result.TEMPORARY),
        (400, Result.PERMANENT),
        (404, Result.PERMANENT),
    ],
)
def test_http_statuses(status: int, expected: Result) -> None:
    assert http_result(status, "text").result is expected


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    base, cap = timedelta(seconds=30), timedelta(minutes=10)
    assert backoff(1, base, cap, 0.0) == timedelta(seconds=15)
    assert backoff(3, base, cap, 0.0) == timedelta(seconds=60)
    assert backoff(3, base, cap, 0.999) < timedelta(seconds=120)
    assert backoff(20, base, cap, 0.0) == cap / 2


def _step(result: Result, attempts: int) -> NextStep:
    base, cap = timedelta(seconds=30), timedelta(minutes=10)
    return next_step(SendResult(result, "why"), attempts, 3, NOW, base, cap, 0.5)


def test_a_temporary_failure_is_retried_until_the_last_attempt() -> None:
    first = _step(Result.TEMPORARY, 1)
    assert (first.state, first.outcome) == ("planned", None)
    assert first.retry_at == NOW + timedelta(seconds=22.5)
    last = _step(Result.TEMPORARY, 3)
    assert (last.state, last.outcome, last.retry_at) == ("failed", MessageOutcome.FAILED, None)


def test_a_hard_bounce_is_not_retried_and_stops_contact() -> None:
    step = _step(Result.BOUNCED, 1)
    assert (step.state, step.outcome, step.do_not_contact) == ("failed", "bounced", True)
    assert _step(Result.PERMANENT, 1).state == "failed"
    assert _step(Result.SENT, 1) == NextStep("sent", None, MessageOutcome.SENT)


# ----------------------------------------------------------------------------- the e-mail


def test_a_marketing_email_carries_one_click_unsubscribe_and_a_stable_message_id() -> None:
    raw = build_email(IDENTITY, _message(body_html="<p>Hello Ada</p>"), NOW)
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    email = message_from_bytes(raw, policy=policy.default)
    assert email["Message-ID"] == "<spring-sale.C-1@crm.example>"
    assert email["List-Unsubscribe-Post"] == ONE_CLICK
    link = email["List-Unsubscribe"]
    assert link.startswith("<https://crm.example/unsubscribe?token=") and link.endswith(">")
    token = parse_qs(urlsplit(link[1:-1]).query)["token"][0]
    claims = read_link(SECRET, token)
    assert (claims.customer_id, claims.purpose, claims.channel) == ("C-1", "marketing", "email")
    assert claims.message_id == "spring-sale.C-1"
    text = email.get_body(("plain",))
    html = email.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content() == "Hello Ada,\nhere are your picks."
    assert html.get_content() == "<p>Hello Ada</p>"


def test_a_service_email_has_no_unsubscribe_and_encodes_what_is_not_ascii() -> None:
    message = _message(purpose="service", subject="Votre commande est prête", body_text="Déjà là")
    email = message_from_bytes(build_email(IDENTITY, message, NOW), policy=policy.default)
    assert "List-Unsubscribe" not in email
    assert email["Subject"] == "Votre commande est prête"
    assert email.get_content() == "Déjà là"


def test_a_long_subject_that_is_not_ascii_is_folded_with_crlf_and_reads_back_whole() -> None:
    subject = "Vos sélections de la semaine : théières, présentoirs à gâteaux et lanternes " * 2
    raw = build_email(IDENTITY, _message(subject=subject), NOW)
    assert raw.count(b"\n") == raw.count(b"\r\n")  # SMTP carries no bare line feed
    assert message_from_bytes(raw, policy=policy.default)["Subject"] == subject


def test_message_ids_the_header_cannot_carry_become_a_stable_uuid() -> None:
    first = message_id_header("campaign:C 1", "crm.example")
    assert first == message_id_header("campaign:C 1", "crm.example")
    assert " " not in first and ":" not in first and first.endswith("@crm.example>")


# ----------------------------------------------------------------------------- events


def test_a_sent_message_publishes_one_outcome_with_a_repeatable_id() -> None:
    step = NextStep("sent", None, MessageOutcome.SENT)
    first = events_of_step(_message(), step, "accepted", NOW)
    again = events_of_step(_message(), step, "accepted", NOW)
    assert [e.event_id for e in first] == [e.event_id for e in again]
    (outcome,) = first
    event = parse_event(outcome.value)
    assert (outcome.topic, event.type, event.customer_id) == (
        "crm.messages",
        "crm.message.outcome.recorded.v1",
        "C-1",
    )
    assert event.data.outcome == "sent" and event.data.campaign_id == "spring-sale"


@pytest.mark.parametrize(
    "message",
    [
        _message(),
        _message(campaign_id=None, purpose="service", customer_id="email:ann@example.com"),
        _message(purpose="Marketing Newsletter"),
    ],
)
@pytest.mark.parametrize(
    ("outcome", "reason"),
    [(MessageOutcome.SENT, None), (MessageOutcome.FAILED, "SMTP 554 refusé " + "x" * 400)],
)
def test_an_outcome_event_is_the_one_the_fully_validated_path_builds(
    message: OutboundMessage, outcome: MessageOutcome, reason: str | None
) -> None:
    """The sender validates an outcome's data once, as its model is built, and the envelope
    alone after (build_event given the model): the bytes are those build_event gives after
    validating it all (given the data as a mapping)."""
    derived = outcome_event(message, outcome, reason, NOW)
    data = MessageOutcomeRecorded(
        message_id=message.message_id,
        campaign_id=message.campaign_id,
        channel=Channel(message.channel),
        purpose=message.purpose,
        outcome=outcome,
        reason=None if reason is None else reason[:300],
    )
    document = build_event(
        MESSAGE_OUTCOME_RECORDED,
        message.customer_id,
        data.model_dump(mode="json"),
        source="broadcast-service",
        time=NOW,
        event_id=derived.event_id,
    )
    assert derived.value == encode_event(document)
    assert parse_event(derived.value).data == data


def test_building_an_event_of_a_model_still_refuses_a_bad_envelope_or_another_types_data() -> None:
    data = MessageOutcomeRecorded(
        message_id="m-1", channel=Channel.EMAIL, purpose="marketing", outcome=MessageOutcome.SENT
    )
    build_event(MESSAGE_OUTCOME_RECORDED, "C-1", data, source="s", time=NOW, event_id="e-1")
    refused = [
        ({"customer_id": "C 1 with spaces"}, "subject"),
        ({"source": ""}, "source"),
        ({"event_id": ""}, "id"),
        ({"time": NOW.replace(tzinfo=None)}, "UTC offset"),
        ({"event_type": "crm.do_not_contact.added.v1"}, "data of crm.do_not_contact.added.v1"),
    ]
    for change, reason in refused:
        given: dict[str, Any] = {
            "event_type": MESSAGE_OUTCOME_RECORDED,
            "customer_id": "C-1",
            "data": data,
            "source": "s",
            "time": NOW,
            "event_id": "e-1",
        }
        with pytest.raises(InvalidEvent, match=reason):
            build_event(**(given | change))
        as_mapping = given | {"data": data.model_dump(mode="json")} | change
        with pytest.raises(InvalidEvent, match=reason):  # the full validation agrees
            build_event(**as_mapping)


def test_a_hard_bounce_publishes_the_bounce_and_do_not_contact() -> None:
    step = NextStep("failed", None, MessageOutcome.BOUNCED, do_not_contact=True)
    events = [parse_event(d.value) for d in events_of_step(_message(), step, "SMTP 550", NOW)]
    assert [e.type for e in events] == [
        "crm.message.outcome.recorded.v1",
        "crm.do_not_contact.added.v1",
    ]
    assert events[1].data.reason == "bounced" and events[1].data.channel == "email"


@pytest.mark.parametrize(
    ("reported", "capture"),
    [(ReportedOutcome.UNSUBSCRIBED, "unsubscribe_link"), (ReportedOutcome.COMPLAINED, "complaint")],
)
def test_an_unsubscribe_or_complaint_revokes_the_consent(
    reported: ReportedOutcome, capture: str
) -> None:
    events = [parse_event(d.value) for d in events_of_report(_message(), reported, None, NOW)]
    outcome, consent = events
    assert outcome.data.outcome == "unsubscribed"
    assert consent.type == "crm.consent.recorded.v2"
    assert (consent.data.state, consent.data.capture_method) == ("revoked", capture)
    assert (consent.data.purpose, consent.data.channel) == ("marketing", "email")


async def test_the_throttle_spaces_sends_evenly_and_zero_means_no_limit() -> None:
    started = time_module.monotonic()
    throttle = Throttle(100)
    for _ in range(6):
        await throttle.wait()
    assert time_module.monotonic() - started >= 0.05  # five intervals of 10 ms after the first
    unlimited = Throttle(0)
    started = time_module.monotonic()
    for _ in range(1000):
        await unlimited.wait()
    assert time_module.monotonic() - started < 0.05


# ----------------------------------------------------------------------------- after a crash


@pytest.mark.parametrize(
    ("channel", "started", "fate"),
    [
        ("email", False, ExpiredClaim.REPLAN),
        ("sms", False, ExpiredClaim.REPLAN),
        ("post", False, ExpiredClaim.REPLAN),
        ("email", True, ExpiredClaim.INTERRUPTED),
        ("post", True, ExpiredClaim.INTERRUPTED),
        ("sms", True, ExpiredClaim.RESEND),
        ("push", True, ExpiredClaim.RESEND),
        ("phone", True, ExpiredClaim.RESEND),
        ("chat", True, ExpiredClaim.RESEND),
    ],
)
def test_an_expired_claim_is_sent_again_only_where_it_cannot_arrive_twice(
    channel: str, started: bool, fate: ExpiredClaim
) -> None:
    assert expired_claim(channel, started) is fate
    assert fate.sends is (fate is not ExpiredClaim.INTERRUPTED)


def test_an_interrupted_email_is_recorded_as_failed_with_the_reason() -> None:
    result = SendResult(Result.PERMANENT, INTERRUPTED_REASON)
    step = next_step(result, 1, 5, NOW, timedelta(seconds=30), timedelta(hours=1), 0.0)
    assert (step.state, step.retry_at, step.outcome) == ("failed", None, MessageOutcome.FAILED)
    (event,) = [parse_event(d.value) for d in events_of_step(_message(), step, result.detail, NOW)]
    assert (event.data.outcome, event.data.reason) == ("failed", INTERRUPTED_REASON)


class _Ledger:
    """Stands in for the database transaction: records what each commit carried."""

    def __init__(self, refused: frozenset[str] = frozenset(), fail_first: bool = False) -> None:
        self.commits: list[tuple[list[str], list[str]]] = []
        self.refused = refused
        self.fail_first = fail_first

    async def commit(self, starts: list[str], finished: list[Attempt]) -> set[str]:
        await asyncio.sleep(0.001)
        if self.fail_first:
            self.fail_first = False
            raise ConnectionResetError("database restarted")
        self.commits.append((starts, [a.message.message_id for a in finished]))
        return set(starts) - self.refused


def _attempt(message_id: str) -> Attempt:
    return Attempt(_message(message_id=message_id), SendResult(Result.SENT, "accepted"))


async def _with_writer(ledger: GroupCommit, work: Any) -> Any:
    writer = asyncio.create_task(ledger.run())
    try:
        return await work
    finally:
        writer.cancel()


async def test_start_marks_asked_together_share_one_commit_and_a_refused_one_does_not_go() -> None:
    database = _Ledger(refused=frozenset({"m3"}))
    ledger = GroupCommit(database.commit)
    answers = await _with_writer(
        ledger, asyncio.gather(*(ledger.start(f"m{n}") for n in range(1, 5)))
    )
    assert answers == [True, True, False, True]
    assert database.commits == [(["m1", "m2", "m3", "m4"], [])]


async def test_a_record_is_committed_no_later_than_the_next_start_queued_after_it() -> None:
    database = _Ledger()
    ledger = GroupCommit(database.commit)

    async def connection() -> None:
        for n in range(3):
            assert await ledger.start(f"m{n}")
            ledger.finish(_attempt(f"m{n}"))
        await ledger.flush()

    await _with_writer(ledger, connection())
    committed: dict[str, int] = {}
    for index, (starts, finished) in enumerate(database.commits):
        committed |= {f"start {m}": index for m in starts} | {
            f"record {m}": index for m in finished
        }
    for n in range(3):
        assert committed[f"start m{n}"] < committed[f"record m{n}"]
    for n in range(2):
        assert committed[f"record m{n}"] <= committed[f"start m{n + 1}"]
    assert sum(len(finished) for _, finished in database.commits) == 3


async def test_when_the_database_fails_nothing_starts_and_the_records_are_kept_for_later() -> None:
    database = _Ledger(fail_first=True)
    ledger = GroupCommit(database.commit)
    ledger.finish(_attempt("done"))

    async def work() -> bool:
        first = await ledger.start("next")
        await ledger.flush()
        return first

    assert await _with_writer(ledger, work()) is False
    assert database.commits == [([], ["done"])]


def test_an_address_goes_into_the_envelope_only_if_it_cannot_break_the_command() -> None:
    assert smtp_path("ada.lovelace+news@example.com") == b"<ada.lovelace+news@example.com>"
    for unsafe in (
        "no-at-sign",
        "ada@example.com>\r\nRCPT TO:<eve@example.com",
        "ada @example.com",
        '"ada"@example.com',
        "adä@example.com",
    ):
        with pytest.raises(ValueError, match="SMTP cannot send to"):
            smtp_path(unsafe)
