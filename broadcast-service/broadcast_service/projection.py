"""How customers want to be reached, what they consent to, where they must not be contacted,
and what holds promotions back (open complaints, detractor scores): the folds the contact
decision (broadcast_service.decision) reads.

Pure: no I/O, time comes from the events or is passed in. Every state is last-writer-wins by
event time, so a late or replayed event never overwrites a newer state. Events of the same
instant are ordered by (source, id), except that the more cautious state wins a tie (a
refusal over a grant, a do-not-contact entry over its removal, an open complaint over its
closing): when in doubt, do not contact. v1 preferences and consents are read as v2.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any, Literal, Protocol, TypeVar, cast

from crm_shared.contracts.events import (
    ChannelPreferenceSet,
    ChannelPreferenceSetV2,
    ComplaintClosed,
    ComplaintOpened,
    ConsentGranted,
    ConsentRecorded,
    ConsentRevoked,
    DetractorScored,
    DoNotContactAdded,
    DoNotContactRemoved,
    Event,
    QuietHours,
    SegmentEntered,
    SegmentLeft,
)
from crm_shared.contracts.upcast import channel_preference_v2, consent_recorded


class _Versioned(Protocol):
    @property
    def version(self) -> tuple[Any, ...]: ...


K = TypeVar("K")
V = TypeVar("V", bound=_Versioned)

EVERY_CHANNEL = "*"
"""The channel of a consent given or refused for every channel at once."""

ConsentKey = tuple[str, str, str]
"""(customer_id, purpose, channel)"""


ConsentStateName = Literal["granted", "pending", "denied", "revoked"]

_REFUSAL_RANK: dict[str, int] = {"granted": 0, "pending": 1, "denied": 2, "revoked": 2}
"""How strongly a consent state refuses: of two states of the same instant the stronger wins."""


def normalise_purpose(purpose: str) -> str:
    """'Marketing ' and 'marketing' are one purpose: a refusal must not miss by spelling."""
    return purpose.strip().lower()


@dataclass(frozen=True, slots=True)
class QuietWindow:
    """Local wall-clock times between which the customer is not contacted; may cross midnight.

    The start is inside the window, the end is not; a window whose start equals its end is empty.
    """

    start: time
    end: time
    timezone: str


@dataclass(frozen=True, slots=True)
class ChannelSetup:
    """How the customer wants one channel used: where, when not, how often, and a pause."""

    channel: str
    address: str | None = None
    quiet_hours: QuietWindow | None = None
    max_per_day: int | None = None
    max_per_week: int | None = None
    paused_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class ChannelPreferences:
    """A customer's channel set-up, channels in order of preference, and the event that set it."""

    customer_id: str
    channels: tuple[ChannelSetup, ...]
    timezone: str
    set_at: datetime
    source: str
    event_id: str

    @property
    def version(self) -> tuple[datetime, str, str]:
        return (self.set_at, self.source, self.event_id)


def _window(quiet: QuietHours | None, customer_zone: str) -> QuietWindow | None:
    """A channel's quiet window, read in its own time zone when it names one, else in the
    customer's."""
    if quiet is None:
        return None
    zone = quiet.timezone if "timezone" in quiet.model_fields_set else customer_zone
    return QuietWindow(time.fromisoformat(quiet.start), time.fromisoformat(quiet.end), zone)


def preferences_from(event: Event) -> ChannelPreferences:
    data = channel_preference_v2(cast(ChannelPreferenceSet | ChannelPreferenceSetV2, event.data))
    return ChannelPreferences(
        customer_id=event.customer_id,
        channels=tuple(
            ChannelSetup(
                channel=setting.channel.value,
                address=setting.address,
                quiet_hours=_window(setting.quiet_hours, data.timezone),
                max_per_day=setting.max_per_day,
                max_per_week=setting.max_per_week,
                paused_until=None
                if setting.paused_until is None
                else setting.paused_until.astimezone(UTC),
            )
            for setting in data.channels
        ),
        timezone=data.timezone,
        set_at=event.time,
        source=event.source,
        event_id=event.id,
    )


def evolve_preferences(
    current: Mapping[str, ChannelPreferences], events: Iterable[Event]
) -> dict[str, ChannelPreferences]:
    """Fold a batch of preference events (v1 read as v2); returns only the records that changed."""
    return _newest(current, ((e.customer_id, preferences_from(e)) for e in events))


@dataclass(frozen=True, slots=True)
class Consent:
    """A consent state with its evidence, and the event that set it; also one row of the consent
    history. `source` and `changed_at` are where and when it was captured."""

    customer_id: str
    purpose: str
    channel: str
    state: ConsentStateName
    changed_at: datetime
    source: str
    event_id: str
    capture_method: str = "api"
    wording_version: str | None = None
    evidence: str | None = None

    @property
    def granted(self) -> bool:
        return self.state == "granted"

    @property
    def key(self) -> ConsentKey:
        return (self.customer_id, self.purpose, self.channel)

    @property
    def version(self) -> tuple[datetime, int, str, str]:
        return (self.changed_at, _REFUSAL_RANK[self.state], self.source, self.event_id)


def consent_from(event: Event) -> Consent:
    # type() rather than isinstance(): pydantic models check instances through ABCMeta, slowly.
    data = event.data
    if type(data) not in (ConsentGranted, ConsentRevoked, ConsentRecorded):
        raise TypeError(f"{type(data).__name__} is not a consent")
    recorded = consent_recorded(cast(ConsentGranted | ConsentRevoked | ConsentRecorded, data))
    return Consent(
        customer_id=event.customer_id,
        purpose=recorded.purpose.value,
        channel=EVERY_CHANNEL if recorded.channel is None else recorded.channel.value,
        state=recorded.state.value,
        changed_at=event.time,
        source=event.source,
        event_id=event.id,
        capture_method=recorded.capture_method.value,
        wording_version=recorded.wording_version,
        evidence=recorded.evidence,
    )


def consent_changes(events: Iterable[Event]) -> list[Consent]:
    """One history row per consent event, late ones included; a repeated event counts once."""
    changes = {(event.source, event.id): consent_from(event) for event in events}
    return list(changes.values())


def evolve_consents(
    current: Mapping[ConsentKey, Consent], events: Iterable[Event]
) -> dict[ConsentKey, Consent]:
    """Fold a batch of consent events (v1 read as v2); returns only the states that changed."""
    return _newest(current, ((c.key, c) for c in map(consent_from, events)))


DncKey = tuple[str, str]
"""(customer_id, channel): one do-not-contact entry per channel, '*' for every channel."""


@dataclass(frozen=True, slots=True)
class DoNotContact:
    """A do-not-contact entry (listed) or its removal (not listed), and the event that set it."""

    customer_id: str
    channel: str
    listed: bool
    reason: str | None
    note: str | None
    changed_at: datetime
    source: str
    event_id: str

    @property
    def key(self) -> DncKey:
        return (self.customer_id, self.channel)

    @property
    def version(self) -> tuple[datetime, bool, str, str]:
        """At the same instant an addition beats a removal: when in doubt, do not contact."""
        return (self.changed_at, self.listed, self.source, self.event_id)


def do_not_contact_from(event: Event) -> DoNotContact:
    data = cast(DoNotContactAdded | DoNotContactRemoved, event.data)
    added = type(data) is DoNotContactAdded
    return DoNotContact(
        customer_id=event.customer_id,
        channel=EVERY_CHANNEL if data.channel is None else data.channel.value,
        listed=added,
        reason=cast(DoNotContactAdded, data).reason.value if added else None,
        note=data.note,
        changed_at=event.time,
        source=event.source,
        event_id=event.id,
    )


def evolve_do_not_contact(
    current: Mapping[DncKey, DoNotContact], events: Iterable[Event]
) -> dict[DncKey, DoNotContact]:
    """Fold a batch of do-not-contact events; returns only the entries that changed."""
    return _newest(current, ((d.key, d) for d in map(do_not_contact_from, events)))


@dataclass(frozen=True, slots=True)
class ComplaintHold:
    """Whether one complaint of the customer is open, as the interaction service last said."""

    customer_id: str
    case_id: str
    open: bool
    changed_at: datetime
    source: str
    event_id: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.customer_id, self.case_id)

    @property
    def version(self) -> tuple[datetime, bool, str, str]:
        """At the same instant "open" beats "closed": when in doubt, hold back."""
        return (self.changed_at, self.open, self.source, self.event_id)


def complaint_from(event: Event) -> ComplaintHold:
    data = cast(ComplaintOpened | ComplaintClosed, event.data)
    return ComplaintHold(
        customer_id=event.customer_id,
        case_id=data.case_id,
        open=type(data) is ComplaintOpened,
        changed_at=event.time,
        source=event.source,
        event_id=event.id,
    )


def evolve_complaints(
    current: Mapping[tuple[str, str], ComplaintHold], events: Iterable[Event]
) -> dict[tuple[str, str], ComplaintHold]:
    """Fold a batch of complaint signals; returns only the complaints that changed."""
    return _newest(current, ((c.key, c) for c in map(complaint_from, events)))


@dataclass(frozen=True, slots=True)
class DetractorHold:
    """The customer's latest detractor score: promotions wait a while after it."""

    customer_id: str
    measure: str
    score: int
    scored_at: datetime
    source: str
    event_id: str

    @property
    def version(self) -> tuple[datetime, str, str]:
        return (self.scored_at, self.source, self.event_id)


def detractor_from(event: Event) -> DetractorHold:
    data = cast(DetractorScored, event.data)
    return DetractorHold(
        customer_id=event.customer_id,
        measure=data.measure.value,
        score=data.score,
        scored_at=event.time,
        source=event.source,
        event_id=event.id,
    )


def evolve_detractors(
    current: Mapping[str, DetractorHold], events: Iterable[Event]
) -> dict[str, DetractorHold]:
    """Fold a batch of detractor scores: the latest per customer; returns what changed."""
    return _newest(current, ((e.customer_id, detractor_from(e)) for e in events))


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


@dataclass(frozen=True)
class RecentSend:
    """A message already sent to the customer, by any campaign: what frequency caps count."""

    channel: str
    purpose: str
    sent_at: datetime
