"""The preference centre's rules, without I/O: what the page shows, how a submitted form is read,
and which events a change and a one-click unsubscribe become.

The page is one HTML form whose fields are named after what they set (`email.address`,
`consent.marketing.sms`). The values the page showed travel back in one hidden field (`shown`),
so a submission publishes only what the customer changed: an untouched consent leaves no new
entry in the customer's history. Routes, templates and Kafka are in centre_routes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from pydantic import ValidationError

from crm_shared.contracts.events import (
    CHANNEL_PREFERENCE_SET_V2,
    CONSENT_RECORDED,
    REACHABLE_CHANNELS,
    Channel,
    ChannelPreferenceSetV2,
    ChannelSetting,
    ConsentCapture,
    ConsentRecorded,
    ConsentState,
    ContactPurpose,
)
from crm_shared.runtime.links import LinkClaims

EVERY_CHANNEL = "all"
"""The form's name for a consent that covers every channel (the contract's channel None)."""
PER_CHANNEL_PURPOSES = (ContactPurpose.MARKETING, ContactPurpose.SERVICE)
"""Purposes the customer grants channel by channel: a message comes on one channel."""
WHOLE_PURPOSES = (ContactPurpose.PERSONALISATION,)
"""Purposes granted once for every channel: personalisation is about data, not a channel."""
CHANNEL_FIELDS = (
    "enabled",
    "rank",
    "address",
    "quiet_start",
    "quiet_end",
    "max_per_day",
    "max_per_week",
    "paused_until",
)
CHANNEL_LABELS: dict[str, str] = {
    Channel.EMAIL: "E-mail",
    Channel.SMS: "SMS",
    Channel.PHONE: "Voice call",
    Channel.PUSH: "Push notification",
    Channel.MAIL: "Post",
    Channel.CHAT: "Messenger",
}
ADDRESS_RULES = {
    Channel.EMAIL: (
        re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
        "an e-mail address, e.g. ann@example.com",
    ),
    Channel.SMS: (re.compile(r"^\+?[0-9][0-9 ()-]{5,19}$"), "a phone number, e.g. +44 7700 900123"),
    Channel.PHONE: (
        re.compile(r"^\+?[0-9][0-9 ()-]{5,19}$"),
        "a phone number, e.g. +44 20 7946 0000",
    ),
}
"""What an address must look like on the channels where a typo would send to a stranger."""
FIELD_OF_SETTING = {
    "max_per_day": "max_per_day",
    "max_per_week": "max_per_week",
    "quiet_hours": "quiet_start",
    "paused_until": "paused_until",
}
"""The form field that shows a problem the contract finds in a channel setting."""
TIME_OF_DAY = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
CHECKED = "on"
UNSUBSCRIBE_EVENT_PREFIX = "unsubscribe-"


@cache
def time_zones() -> tuple[str, ...]:
    """The IANA zones a customer can pick, sorted."""
    return tuple(sorted(available_timezones()))


@dataclass(frozen=True)
class CentreState:
    """A customer's stored set-up as the page shows it: channels in order of preference, and
    whether each consent is granted, by (purpose, channel or EVERY_CHANNEL)."""

    timezone: str = "UTC"
    channels: tuple[ChannelSetting, ...] = ()
    granted: Mapping[tuple[str, str], bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Submission:
    """What a valid form asks to publish: the new channel set-up when it changed, and each
    consent the customer changed (granted or not) by (purpose, channel or EVERY_CHANNEL)."""

    setup: ChannelPreferenceSetV2 | None
    consents: Mapping[tuple[ContactPurpose, str], bool]

    @property
    def changes_anything(self) -> bool:
        return self.setup is not None or bool(self.consents)


class InvalidForm(ValueError):
    """The form cannot be published as it is: `problems` says what is wrong, by field name."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {problem}" for name, problem in problems.items()))
        self.problems = dict(problems)


class InvalidUnsubscribe(ValueError):
    """The link names a consent that cannot be withdrawn by a click."""


def consent_fields() -> tuple[tuple[ContactPurpose, str], ...]:
    """Every consent the page offers, as (purpose, channel or EVERY_CHANNEL), in page order."""
    per_channel = tuple(
        (purpose, channel.value)
        for purpose in PER_CHANNEL_PURPOSES
        for channel in REACHABLE_CHANNELS
    )
    return per_channel + tuple((purpose, EVERY_CHANNEL) for purpose in WHOLE_PURPOSES)


def consent_field(purpose: str, channel: str) -> str:
    return f"consent.{purpose}.{channel}"


def state_from_broadcast(body: Mapping[str, Any] | None) -> CentreState:
    """The page's state from the broadcast service's GET /customers/{id}/preferences (None: it
    knows nothing of the customer). Today's answer has channel names, one quiet window and
    granted flags; a v2 answer's `channel_setup` (entries shaped like the contract's
    ChannelSetting, in order) and consent `state` are read when present. Anything it cannot read
    is left out rather than shown wrong."""
    if body is None:
        return CentreState()
    quiet = body.get("quiet_hours")
    timezone = str(body.get("timezone") or (quiet or {}).get("timezone") or "UTC")
    channels: list[ChannelSetting] = []
    for entry in body.get("channel_setup") or body.get("channels") or ():
        document = dict(entry) if isinstance(entry, Mapping) else {"channel": entry}
        if "quiet_hours" not in document and quiet:
            document["quiet_hours"] = quiet
        try:
            channels.append(ChannelSetting.model_validate(document))
        except ValidationError:
            continue
    granted: dict[tuple[str, str], bool] = {}
    for consent in body.get("consents") or ():
        channel = consent.get("channel") or "*"
        state = consent.get("state")
        granted[(str(consent.get("purpose")), "*" if channel == "*" else str(channel))] = (
            state == ConsentState.GRANTED if state is not None else bool(consent.get("granted"))
        )
    if timezone not in time_zones():
        timezone = "UTC"
    return CentreState(timezone, tuple(channels), granted)


def is_granted(state: CentreState, purpose: str, channel: str) -> bool:
    """A consent for the channel itself decides; without one, the consent for every channel."""
    if channel != EVERY_CHANNEL and (purpose, channel) in state.granted:
        return state.granted[(purpose, channel)]
    return state.granted.get((purpose, "*"), False)


def form_values(state: CentreState, now: datetime) -> dict[str, str]:
    """The form's fields as the page fills them from the stored state: every field, so that the
    copy in `shown` says what each one was. A pause that has ended is not shown."""
    zone = ZoneInfo(state.timezone)
    values = {"timezone": state.timezone}
    stored = {setting.channel: (rank, setting) for rank, setting in enumerate(state.channels, 1)}
    for channel in REACHABLE_CHANNELS:
        rank, setting = stored.get(channel, (0, ChannelSetting(channel=channel)))
        quiet = setting.quiet_hours
        paused = setting.paused_until
        fields = {
            "enabled": CHECKED if rank else "",
            "rank": str(rank) if rank else "",
            "address": setting.address or "",
            "quiet_start": quiet.start if quiet else "",
            "quiet_end": quiet.end if quiet else "",
            "max_per_day": _text(setting.max_per_day),
            "max_per_week": _text(setting.max_per_week),
            "paused_until": paused.astimezone(zone).date().isoformat()
            if paused and paused > now
            else "",
        }
        values.update({f"{channel.value}.{name}": value for name, value in fields.items()})
    for purpose, scope in consent_fields():
        values[consent_field(purpose, scope)] = CHECKED if is_granted(state, purpose, scope) else ""
    return values


def _text(number: int | None) -> str:
    return "" if number is None else str(number)


def shown_values(encoded: str | None) -> dict[str, str]:
    """The values the page showed, from its hidden `shown` field; nothing when it was altered
    (then every field counts as changed, which publishes the whole form: still what the customer
    sent)."""
    try:
        shown = json.loads(encoded or "")
    except ValueError:
        return {}
    if not isinstance(shown, dict):
        return {}
    return {str(name): str(value) for name, value in shown.items()}


def read_form(fields: Mapping[str, str], shown: Mapping[str, str], now: datetime) -> Submission:
    """What to publish for a submitted form, compared with what the page showed; InvalidForm
    with a message per field when something cannot be published."""
    submitted = {name: value.strip() for name, value in fields.items()}
    problems: dict[str, str] = {}
    setup_names = ["timezone"] + [
        f"{channel.value}.{name}" for channel in REACHABLE_CHANNELS for name in CHANNEL_FIELDS
    ]
    setup: ChannelPreferenceSetV2 | None = None
    if any(submitted.get(name, "") != shown.get(name) for name in setup_names):
        setup = _channel_setup(submitted, now, problems)
    consents = {
        (purpose, channel): submitted.get(name, "") == CHECKED
        for purpose, channel in consent_fields()
        if submitted.get(name := consent_field(purpose, channel), "") != shown.get(name, "")
    }
    if problems:
        raise InvalidForm(problems)
    return Submission(setup, consents)


def _channel_setup(
    fields: Mapping[str, str], now: datetime, problems: dict[str, str]
) -> ChannelPreferenceSetV2 | None:
    """The channel set-up the form describes; its problems are added to `problems`."""
    timezone = fields.get("timezone", "")
    if timezone not in time_zones():
        problems["timezone"] = "choose a time zone from the list"
        return None
    zone = ZoneInfo(timezone)
    ranked: list[tuple[int, int, ChannelSetting]] = []
    for position, channel in enumerate(REACHABLE_CHANNELS):
        prefix = f"{channel.value}."
        if fields.get(prefix + "enabled", "") != CHECKED:
            continue
        before = len(problems)
        rank = _number(fields, prefix + "rank", problems, high=len(REACHABLE_CHANNELS))
        address = fields.get(prefix + "address", "")
        if address and channel in ADDRESS_RULES:
            pattern, example = ADDRESS_RULES[channel]
            if not pattern.match(address):
                problems[prefix + "address"] = f"this is not {example}"
        setting = {
            "channel": channel,
            "address": address or None,
            "quiet_hours": _quiet_hours(fields, prefix, timezone, problems),
            "max_per_day": _number(fields, prefix + "max_per_day", problems),
            "max_per_week": _number(fields, prefix + "max_per_week", problems),
            "paused_until": _pause_end(fields, prefix + "paused_until", zone, now, problems),
        }
        try:
            checked = ChannelSetting.model_validate(setting)
        except ValidationError as error:  # the contract's own bounds, e.g. at most 1000 a day
            for issue in error.errors():
                name = prefix + FIELD_OF_SETTING.get(str(issue["loc"][0]), "address")
                problems.setdefault(name, str(issue["msg"]))
            continue
        if len(problems) == before:
            ranked.append((rank or position + 100, position, checked))
    if not ranked and not problems:
        problems["channels"] = (
            "tick at least one channel; to receive no messages, untick the consents below"
        )
    if problems:
        return None
    return ChannelPreferenceSetV2(
        channels=tuple(setting for _rank, _position, setting in sorted(ranked)),
        timezone=timezone,
    )


def _number(
    fields: Mapping[str, str], name: str, problems: dict[str, str], high: int | None = None
) -> int | None:
    """A whole number the customer typed, or None for an empty field."""
    text = fields.get(name, "")
    if not text:
        return None
    if (
        not text.isascii()
        or not text.isdigit()
        or (high is not None and not 1 <= int(text) <= high)
    ):
        problems[name] = (
            f"enter a whole number from 1 to {high}" if high else "enter a whole number"
        ) + ", or leave it empty"
        return None
    return int(text)


def _quiet_hours(
    fields: Mapping[str, str], prefix: str, timezone: str, problems: dict[str, str]
) -> dict[str, str] | None:
    start, end = fields.get(prefix + "quiet_start", ""), fields.get(prefix + "quiet_end", "")
    if not start and not end:
        return None
    valid = True
    for name, value in ((prefix + "quiet_start", start), (prefix + "quiet_end", end)):
        if not TIME_OF_DAY.match(value):
            problems[name] = "enter a time as HH:MM (24 hours), e.g. 21:30; or clear both times"
            valid = False
    if valid and start == end:
        problems[prefix + "quiet_end"] = "quiet hours must end at another time than they start"
        valid = False
    return {"start": start, "end": end, "timezone": timezone} if valid else None


def _pause_end(
    fields: Mapping[str, str], name: str, zone: ZoneInfo, now: datetime, problems: dict[str, str]
) -> datetime | None:
    """The instant the pause ends: the start of the chosen day in the customer's time zone."""
    text = fields.get(name, "")
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        problems[name] = "enter a date as YYYY-MM-DD, or leave it empty"
        return None
    resumes = datetime.combine(day, time(0), zone).astimezone(UTC)
    if resumes <= now:
        problems[name] = "choose a day after today, or leave it empty"
        return None
    return resumes


def consent_record(
    purpose: ContactPurpose,
    channel: str,
    granted: bool,
    capture: ConsentCapture,
    wording_version: str | None,
    evidence: str,
) -> ConsentRecorded:
    """One consent decision with its evidence (channel EVERY_CHANNEL: the contract's None)."""
    return ConsentRecorded(
        purpose=purpose,
        channel=None if channel == EVERY_CHANNEL else Channel(channel),
        state=ConsentState.GRANTED if granted else ConsentState.REVOKED,
        capture_method=capture,
        wording_version=wording_version,
        evidence=evidence[:500],
    )


def submission_events(
    submission: Submission, wording_version: str, evidence: str
) -> list[tuple[str, ChannelPreferenceSetV2 | ConsentRecorded]]:
    """The events a submission becomes, by type: the channel set-up, then each consent."""
    events: list[tuple[str, ChannelPreferenceSetV2 | ConsentRecorded]] = []
    if submission.setup is not None:
        events.append((CHANNEL_PREFERENCE_SET_V2, submission.setup))
    for (purpose, channel), granted in submission.consents.items():
        record = consent_record(
            purpose, channel, granted, ConsentCapture.PREFERENCE_CENTRE, wording_version, evidence
        )
        events.append((CONSENT_RECORDED, record))
    return events


def link_evidence(what: str, claims: LinkClaims, client: str | None) -> str:
    """Where a decision made through a link came from: the link's message and the client."""
    parts = [what]
    if claims.message_id:
        parts.append(f"link from message {claims.message_id}")
    if client:
        parts.append(f"client {client}")
    return ", ".join(parts)


def unsubscribe_record(claims: LinkClaims, client: str | None) -> ConsentRecorded:
    """The withdrawal a one-click unsubscribe link makes: the purpose and channel it names
    (marketing on every channel when it names none)."""
    try:
        purpose = ContactPurpose(claims.purpose or ContactPurpose.MARKETING)
        channel = Channel(claims.channel) if claims.channel else None
    except ValueError:
        raise InvalidUnsubscribe("this link names a purpose or channel we do not know") from None
    if purpose is ContactPurpose.TRANSACTIONAL:
        raise InvalidUnsubscribe(
            "messages about your orders and account cannot be unsubscribed from"
        )
    return consent_record(
        purpose,
        channel.value if channel else EVERY_CHANNEL,
        False,
        ConsentCapture.UNSUBSCRIBE_LINK,
        None,
        link_evidence("one-click unsubscribe", claims, client),
    )


def unsubscribe_event_id(token: str) -> str:
    """The same link gives the same event id, so a repeated click is folded once."""
    return UNSUBSCRIBE_EVENT_PREFIX + hashlib.sha256(token.encode()).hexdigest()[:40]
