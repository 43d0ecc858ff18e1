"""How customers want to be reached, what they consent to, and whether to contact them now.

Pure: no I/O, time comes from the events or is passed in. Preferences and consents are
last-writer-wins by event time, so a late or replayed event never overwrites a newer state.
Events of the same instant are ordered by (source, id), except that a revocation beats a grant
of the same instant: when in doubt, do not contact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any, Literal, Protocol, TypeVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crm_shared.contracts.events import (
    ChannelPreferenceSet,
    ConsentGranted,
    ConsentRevoked,
    Event,
    SegmentEntered,
    SegmentLeft,
)


class _Versioned(Protocol):
    @property
    def version(self) -> tuple[Any, ...]: ...


K = TypeVar("K")
V = TypeVar("V", bound=_Versioned)

EVERY_CHANNEL = "*"
"""The channel of a consent given or refused for every channel at once."""

ConsentKey = tuple[str, str, str]
"""(customer_id, purpose, channel)"""


def normalise_purpose(purpose: str) -> str:
    """'Marketing ' and 'marketing' are one purpose: a refusal must not miss by spelling."""
    return purpose.strip().lower()


@dataclass(frozen=True)
class QuietWindow:
    """Local wall-clock times between which the customer is not contacted; may cross midnight.

    The start is inside the window, the end is not; a window whose start equals its end is empty.
    """

    start: time
    end: time
    timezone: str


@dataclass(frozen=True)
class ChannelPreferences:
    customer_id: str
    channels: tuple[str, ...]
    quiet_hours: QuietWindow | None
    set_at: datetime
    source: str
    event_id: str

    @property
    def version(self) -> tuple[datetime, str, str]:
        return (self.set_at, self.source, self.event_id)


def preferences_from(event: Event) -> ChannelPreferences:
    data = event.data
    assert isinstance(data, ChannelPreferenceSet)
    quiet = data.quiet_hours
    return ChannelPreferences(
        customer_id=event.customer_id,
        channels=tuple(channel.value for channel in data.channels),
        quiet_hours=None
        if quiet is None
        else QuietWindow(
            time.fromisoformat(quiet.start), time.fromisoformat(quiet.end), quiet.timezone
        ),
        set_at=event.time,
        source=event.source,
        event_id=event.id,
    )


def evolve_preferences(
    current: Mapping[str, ChannelPreferences], events: Iterable[Event]
) -> dict[str, ChannelPreferences]:
    """Fold a batch of preference events; returns only the records that changed."""
    return _newest(current, ((e.customer_id, preferences_from(e)) for e in events))


@dataclass(frozen=True)
class Consent:
    """A consent state, and the event that set it; also one row of the consent history."""

    customer_id: str
    purpose: str
    channel: str
    granted: bool
    changed_at: datetime
    source: str
    event_id: str

    @property
    def key(self) -> ConsentKey:
        return (self.customer_id, self.purpose, self.channel)

    @property
    def version(self) -> tuple[datetime, bool, str, str]:
        return (self.changed_at, not self.granted, self.source, self.event_id)


def consent_from(event: Event) -> Consent:
    # type() rather than isinstance(): pydantic models check instances through ABCMeta, slowly.
    data = cast(ConsentGranted | ConsentRevoked, event.data)
    if type(data) not in (ConsentGranted, ConsentRevoked):
        raise TypeError(f"{type(data).__name__} is not a consent")
    return Consent(
        customer_id=event.customer_id,
        purpose=normalise_purpose(data.purpose),
        channel=EVERY_CHANNEL if data.channel is None else data.channel.value,
        granted=type(data) is ConsentGranted,
        changed_at=event.time,
        source=event.source,
        event_id=event.id,
    )


def consent_changes(events: Iterable[Event]) -> list[Consent]:
    """One history row per consent event, late ones included; a repeated event counts once."""
    changes = {(event.source, event.id): consent_from(event) for event in events}
    return list(changes.values())


def evolve_consents(
    current: Mapping[ConsentKey, Consent], events: Iterable[Event]
) -> dict[ConsentKey, Consent]:
    """Fold a batch of consent events; returns only the states that changed."""
    return _newest(current, ((c.key, c) for c in map(consent_from, events)))


@dataclass(frozen=True)
class SegmentMembership:
    """A customer's membership of a segment as last announced by the profile service."""

    customer_id: str
    segment: str
    member: bool
    version_number: int
    changed_at: datetime
    source: str
    event_id: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.customer_id, self.segment)

    @property
    def version(self) -> tuple[int]:
        """The announcer counts its changes: the higher count is the newer state."""
        return (self.version_number,)


def membership_from(event: Event) -> SegmentMembership:
    data = event.data
    assert isinstance(data, SegmentEntered | SegmentLeft)
    return SegmentMembership(
        customer_id=event.customer_id,
        segment=data.segment,
        member=isinstance(data, SegmentEntered),
        version_number=data.version,
        changed_at=event.time,
        source=event.source,
        event_id=event.id,
    )


def evolve_memberships(
    current: Mapping[tuple[str, str], SegmentMembership], events: Iterable[Event]
) -> dict[tuple[str, str], SegmentMembership]:
    """Fold a batch of segment announcements; returns only the memberships that changed."""
    return _newest(current, ((m.key, m) for m in map(membership_from, events)))


def _newest(current: Mapping[K, V], candidates: Iterable[tuple[K, V]]) -> dict[K, V]:
    """Last writer wins by version (event time first): what replaces the stored state."""
    changed: dict[K, V] = {}
    for key, candidate in candidates:
        before = changed.get(key) or current.get(key)
        if before is None or candidate.version > before.version:
            changed[key] = candidate
    return changed


def known_zone(name: str) -> ZoneInfo | None:
    """The named IANA time zone, or None: the event contract does not check the name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def quiet_until(window: QuietWindow, at: datetime) -> datetime | None:
    """When the quiet period `at` falls in ends (UTC), or None when `at` is outside the window."""
    if at.tzinfo is None:
        raise ValueError("at must carry a UTC offset")
    zone: tzinfo = known_zone(window.timezone) or UTC  # unknown zones are read as UTC
    local = at.astimezone(zone)
    now, start, end = local.time(), window.start, window.end
    if start == end:
        return None
    if start < end:
        inside, end_day = start <= now < end, local.date()
    else:  # crosses midnight, e.g. 22:00-07:00
        inside = now >= start or now < end
        end_day = local.date() + timedelta(days=1) if now >= start else local.date()
    if not inside:
        return None
    return datetime.combine(end_day, end, tzinfo=zone).astimezone(UTC)


@dataclass(frozen=True)
class RecentSend:
    """A message already sent to the customer, by any campaign: what frequency caps count."""

    channel: str
    purpose: str
    sent_at: datetime


ConsentState = Literal["granted", "revoked", "none"]


@dataclass(frozen=True)
class ChannelCheck:
    """The consent state of one preferred channel, and where it came from (the channel or '*')."""

    channel: str
    consent: ConsentState
    scope: str | None


@dataclass(frozen=True)
class Decision:
    """The channel to use now, or None; the reason is meant for people."""

    channel: str | None
    reason: str
    quiet_until: datetime | None = None
    checks: tuple[ChannelCheck, ...] = ()

    @property
    def contact(self) -> bool:
        return self.channel is not None


def _check(channel: str, states: Mapping[str, Consent]) -> ChannelCheck:
    """The newer of the channel's own state and the every-channel state decides.

    A later "no marketing at all" withdraws an older e-mail-only grant, and a later e-mail-only
    grant re-opens e-mail after an older general refusal: the customer's latest word counts.
    """
    candidates = [s for s in (states.get(channel), states.get(EVERY_CHANNEL)) if s is not None]
    state = max(candidates, key=lambda s: (s.changed_at, s.channel != EVERY_CHANNEL), default=None)
    if state is None:
        return ChannelCheck(channel, "none", None)
    return ChannelCheck(channel, "granted" if state.granted else "revoked", state.channel)


def contact_decision(
    preferences: ChannelPreferences | None,
    consents: Iterable[Consent],
    purpose: str,
    at: datetime,
) -> Decision:
    """The first preferred channel with consent for the purpose, unless it is quiet time.

    Of a channel's own consent state and the '*' state the newer decides (see `_check`).
    """
    if at.tzinfo is None:
        raise ValueError("at must carry a UTC offset")
    if preferences is None or not preferences.channels:
        return Decision(None, "no channel preference set")
    wanted = normalise_purpose(purpose)
    states = {consent.channel: consent for consent in consents if consent.purpose == wanted}
    checks = tuple(_check(channel, states) for channel in preferences.channels)
    usable = [check.channel for check in checks if check.consent == "granted"]
    if not usable:
        return Decision(None, f"no consent for {wanted}", checks=checks)
    window = preferences.quiet_hours
    until = None if window is None else quiet_until(window, at)
    if window is not None and until is not None:
        return Decision(
            None,
            f"quiet hours until {window.end:%H:%M} {_zone_label(window.timezone)}",
            quiet_until=until,
            checks=checks,
        )
    return Decision(
        usable[0],
        f"{usable[0]} is the first preferred channel with consent for {wanted}",
        checks=checks,
    )


def _zone_label(name: str) -> str:
    return name if known_zone(name) else f"UTC (unknown time zone {name!r})"
