"""THE contact decision: may we contact this customer now, for this purpose, and on which channel?

Pure and fast: the campaign planner calls it once per recipient (a million in a few seconds), so
it builds no pydantic model, compiles nothing, looks time zones up in a cache, answers in named
tuples (a frozen dataclass costs about a microsecond to build), and remembers the quiet period of
a window at an instant (a campaign asks about one instant for every recipient). Everything it
weighs is passed in: the customer's channel set-up, consents, do-not-contact entries and holds
(`CustomerReach`, loaded for a batch of customers by `store.reach_of`), the messages already sent
to them by every campaign (`store.recent_sends`), the purpose and the instant.

The rules (docs/decisions.md, "The contact decision"), channel by channel in the customer's order:
- do-not-contact: `legal` and `bounced` stop every purpose; `unsubscribed` and `complaint` stop
  every purpose but transactional;
- the channel needs an address;
- consent: transactional needs none (but an explicit refusal of transactional counts); every
  other purpose needs a grant, of the channel or of every channel, whichever is newer. Where
  double opt-in is required (the policy, default marketing on e-mail) a grant counts only once
  confirmed (captured as `double_opt_in`, or through the preference centre's signed link);
  before that it is pending, which is no consent;
- pause and quiet hours delay every purpose but transactional, until they end;
- the frequency budget per channel (max per day: the last 24 h; per week: the last 7 days)
  counts the sends of every purpose and campaign. Transactional is never capped; service may use
  the whole budget; marketing and personalisation leave its last message to service (a budget of
  n gives them n - 1 when n >= 2);
- holds (marketing only): an open complaint stops it, a detractor score delays it for a while.
A refused channel gives what refuses it (do-not-contact, address, consent, open complaint) and
no instant; a channel only delayed gives every delay and the instant they have all passed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from broadcast_service.projection import (
    EVERY_CHANNEL,
    ChannelPreferences,
    ChannelSetup,
    ComplaintHold,
    Consent,
    DetractorHold,
    DoNotContact,
    QuietWindow,
    RecentSend,
    normalise_purpose,
)

TRANSACTIONAL = "transactional"
SERVICE = "service"
MARKETING = "marketing"
DAY = timedelta(days=1)
WEEK = timedelta(days=7)
CAP_LOOKBACK = WEEK
"""How far back the sends that the frequency budget counts go (see `sends_since`)."""
_EARLIEST = datetime.min.replace(tzinfo=UTC)


def sends_since(at: datetime) -> datetime:
    """Since when to load the sends a decision at `at` counts (`store.recent_sends`)."""
    return at - CAP_LOOKBACK if at - _EARLIEST > CAP_LOOKBACK else _EARLIEST


BLOCKS_EVERY_PURPOSE = frozenset({"legal", "bounced"})
"""Do-not-contact reasons that stop transactional messages too."""
CONFIRMING_CAPTURES = frozenset({"double_opt_in", "preference_centre"})
"""Capture methods that prove the address belongs to the person (the preference centre is
reached through a signed link sent to it)."""


@dataclass(frozen=True, slots=True)
class ContactPolicy:
    """The company's side of the rules: where double opt-in is required, how long a detractor
    score holds promotions back."""

    double_opt_in: frozenset[tuple[str, str]] = frozenset({(MARKETING, "email")})
    """(purpose, channel) pairs whose grants count only once confirmed."""
    detractor_hold: timedelta = timedelta(days=30)


DEFAULT_POLICY = ContactPolicy()


class Reason(NamedTuple):
    """Why a channel may or may not be used: a code for machines, a text for people, and when
    the reason stops applying (None: not by time alone)."""

    code: str
    text: str
    until: datetime | None = None


ALLOWED = Reason("allowed", "may be used now")


class ChannelVerdict(NamedTuple):
    """One channel considered: whether it may be used now, why, and when it may be used: the
    instant asked when allowed, the earliest instant when only delayed, None when refused."""

    channel: str
    address: str | None
    allowed: bool
    reasons: tuple[Reason, ...]
    possible_at: datetime | None = None


class Decision(NamedTuple):
    """The channel to use now (the first allowed in the customer's order), or None; every
    channel considered with its reasons; and, when none is allowed now, the earliest instant one
    becomes possible (None: not by waiting)."""

    purpose: str
    at: datetime
    channel: str | None
    address: str | None
    channels: tuple[ChannelVerdict, ...]
    reasons: tuple[Reason, ...] = ()
    """Reasons about the customer as a whole (no set-up, channel not chosen); else empty."""
    possible_at: datetime | None = None

    @property
    def contact(self) -> bool:
        return self.channel is not None

    @property
    def reason(self) -> str:
        """The decision in one line, for people."""
        if self.channel is not None:
            return f"{self.channel} is the first preferred channel that may be used now"
        parts = [r.text for r in self.reasons] + [
            f"{v.channel}: {'; '.join(r.text for r in v.reasons)}" for v in self.channels
        ]
        return " | ".join(parts)

    @property
    def codes(self) -> tuple[str, ...]:
        """Every reason code of a refusal, once each (for counting why nobody was reached)."""
        if self.channel is not None:
            return (ALLOWED.code,)
        seen = [r.code for r in self.reasons] + [r.code for v in self.channels for r in v.reasons]
        return tuple(dict.fromkeys(seen))


@dataclass(frozen=True, slots=True)
class Holds:
    """What holds promotions back: the customer's open complaints and latest detractor score."""

    open_complaints: tuple[str, ...] = ()
    """Case ids of the complaints that are open."""
    detractor: DetractorHold | None = None


NO_HOLDS = Holds()


@dataclass(frozen=True, slots=True)
class CustomerReach:
    """Everything about one customer the decision reads, indexed for it."""

    preferences: ChannelPreferences | None
    consents: Mapping[tuple[str, str], Consent] = field(default_factory=dict)
    """Current consent states by (purpose, channel); channel '*' is every channel."""
    do_not_contact: Mapping[str, DoNotContact] = field(default_factory=dict)
    """Listed do-not-contact entries by channel ('*' every channel)."""
    holds: Holds = NO_HOLDS


REGISTERED_FIELDS: Mapping[str, str] = {"email": "email", "sms": "phone", "phone": "phone"}
"""Which address a customer registered with (crm.customers' `email` or `phone`) each channel
falls back on when their set-up names none (planning applies it in SQL by these names)."""


def registered_addresses(email: str | None, phone: str | None) -> dict[str, str]:
    """Where the e-mail and phone a customer registered with (crm.customers) reach them."""
    given = {"email": email or "", "phone": phone or ""}
    return {channel: given[f] for channel, f in REGISTERED_FIELDS.items() if given[f]}


def setup_address(own: str | None, channel: str, registered: Mapping[str, str]) -> str | None:
    """A channel's address: the set-up's own, else the one the customer registered for it."""
    return own if own is not None else registered.get(channel)


def with_registered_addresses(
    preferences: ChannelPreferences | None, registered: Mapping[str, str]
) -> ChannelPreferences | None:
    """The set-up with each channel that names no address of its own given the address the
    customer registered for it, if any: a customer who chose e-mail in a v1 preference (which
    carried no addresses) is reached at the e-mail they registered with."""
    if preferences is None or not registered:
        return preferences
    if all(s.address is not None or s.channel not in registered for s in preferences.channels):
        return preferences
    # Built field by field rather than with dataclasses.replace: a plan does this for a million
    # customers, and replace costs several times more.
    filled = tuple(
        s
        if s.address is not None
        else ChannelSetup(
            s.channel,
            setup_address(s.address, s.channel, registered),
            s.quiet_hours,
            s.max_per_day,
            s.max_per_week,
            s.paused_until,
        )
        for s in preferences.channels
    )
    p = preferences
    return ChannelPreferences(p.customer_id, filled, p.timezone, p.set_at, p.source, p.event_id)


def reach_of(
    preferences: ChannelPreferences | None,
    consents: Iterable[Consent] = (),
    do_not_contact: Iterable[DoNotContact] = (),
    complaints: Iterable[ComplaintHold] = (),
    detractor: DetractorHold | None = None,
    registered: Mapping[str, str] | None = None,
) -> CustomerReach:
    """A customer's reach from their folded states (entries no longer listed or open dropped),
    channels without an address of their own falling back on the registered ones."""
    open_cases = tuple(sorted(c.case_id for c in complaints if c.open))
    return CustomerReach(
        preferences=with_registered_addresses(preferences, registered or {}),
        consents={(c.purpose, c.channel): c for c in consents},
        do_not_contact={d.channel: d for d in do_not_contact if d.listed},
        holds=Holds(open_cases, detractor) if open_cases or detractor else NO_HOLDS,
    )


_ZONES: dict[str, tzinfo] = {}


def zone_of(name: str) -> tzinfo:
    """The named IANA zone (UTC when unknown: the v1 contract did not check names), cached."""
    zone = _ZONES.get(name)
    if zone is None:
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            zone = UTC
        _ZONES[name] = zone
    return zone


def zone_label(name: str) -> str:
    return name if zone_of(name) is not UTC or name == "UTC" else f"UTC (unknown zone {name!r})"


_QUIET_MAX = 4096
"""Windows and instants remembered: a campaign asks about one instant for every recipient."""


@lru_cache(maxsize=_QUIET_MAX)
def quiet_until(window: QuietWindow, at: datetime) -> datetime | None:
    """When the quiet period `at` falls in ends (UTC), or None when `at` is outside the window.

    Wall-clock times are read in the window's zone on the day they fall, so a window keeps its
    local times across a daylight-saving change (22:00-07:00 is 21:00-06:00 UTC in a London
    summer and 22:00-07:00 UTC in winter)."""
    try:
        return _quiet_until(window, at)
    except OverflowError:  # the window's day is past the end of the calendar
        return None


@lru_cache(maxsize=_QUIET_MAX)
def _quiet_reason(window: QuietWindow, at: datetime) -> Reason | None:
    """The quiet-hours reason of a window at an instant, or None: cached like `quiet_until`, as
    formatting its text costs more than the rest of a decision."""
    until = quiet_until(window, at)
    if until is None:
        return None
    label = f"{window.end:%H:%M} {zone_label(window.timezone)}"
    return Reason("quiet_hours", f"quiet hours until {label}", until)


def _quiet_until(window: QuietWindow, at: datetime) -> datetime | None:
    start, end = window.start, window.end
    if start == end:
        return None
    zone = zone_of(window.timezone)
    local = at.astimezone(zone)
    now = local.time()
    if start < end:
        if not start <= now < end:
            return None
        end_day = local.date()
    elif now >= start:  # crosses midnight, e.g. 22:00-07:00, and it is evening
        end_day = local.date() + DAY
    elif now < end:  # crosses midnight, and it is early morning
        end_day = local.date()
    else:
        return None
    # An end that a spring-forward skips (e.g. 01:30 in London in late March) is read with the
    # offset before the change (fold=0), which lands after the gap: still the first free instant.
    return datetime.combine(end_day, end, tzinfo=zone).astimezone(UTC)


def _consent_reason(
    consents: Mapping[tuple[str, str], Consent],
    purpose: str,
    channel: str,
    policy: ContactPolicy,
) -> Reason | None:
    """None when the consents allow the purpose on the channel, else why not."""
    own = consents.get((purpose, channel))
    every = consents.get((purpose, EVERY_CHANNEL))
    # The newer of the channel's own state and the every-channel state decides (the channel's on
    # a tie): a later "no marketing at all" withdraws an older e-mail grant, and a later e-mail
    # grant re-opens e-mail after an older general refusal.
    state = (
        own if every is None or (own is not None and own.changed_at >= every.changed_at) else every
    )
    if purpose == TRANSACTIONAL:
        if state is not None and state.state in ("denied", "revoked"):
            return Reason("consent_refused", f"transactional messages {state.state} on {channel}")
        return None
    if state is None:
        return Reason("no_consent", f"no consent to {purpose} on {channel}")
    if state.state == "granted":
        if (purpose, channel) in policy.double_opt_in and (
            state.capture_method not in CONFIRMING_CAPTURES
        ):
            return Reason(
                "consent_unconfirmed",
                f"consent to {purpose} on {channel} awaits double opt-in confirmation",
            )
        return None
    if state.state == "pending":
        return Reason("consent_pending", f"consent to {purpose} on {channel} is pending")
    return Reason("consent_refused", f"consent to {purpose} on {channel} {state.state}")


def _cap_reason(
    sent: Sequence[datetime], cap: int, purpose: str, at: datetime, span: timedelta
) -> Reason | None:
    """None when the channel's budget over `span` has room for the purpose, else why not and
    when the oldest counted sends leave the window (never called for transactional)."""
    limit = cap if purpose == SERVICE or cap < 2 else cap - 1
    if len(sent) < limit:  # fewer sends in all than the budget: no need to count the window
        return None
    since = at - span
    counted = [s for s in sent if since < s <= at]
    if len(counted) < limit:
        return None
    code, per = ("daily_cap", "day") if span == DAY else ("weekly_cap", "week")
    text = f"{len(counted)} sent in the last {per}; {purpose} may use {limit} of {cap}"
    if limit == 0:
        return Reason(code, text)
    counted.sort()
    return Reason(code, text, counted[len(counted) - limit] + span)


def _refusals(
    reach: CustomerReach, setup: ChannelSetup, purpose: str, policy: ContactPolicy
) -> list[Reason]:
    """What forbids the channel whatever the time: do-not-contact, no address, no consent, an
    open complaint."""
    channel = setup.channel
    reasons: list[Reason] = []
    listed_entries = reach.do_not_contact
    if listed_entries:
        for listed in (listed_entries.get(channel), listed_entries.get(EVERY_CHANNEL)):
            if listed is not None and (
                purpose != TRANSACTIONAL or listed.reason in BLOCKS_EVERY_PURPOSE
            ):
                where = "every channel" if listed.channel == EVERY_CHANNEL else channel
                text = f"do not contact on {where}: {listed.reason}"
                reasons.append(Reason("do_not_contact", text))
    if setup.address is None:
        reasons.append(Reason("no_address", f"no {channel} address"))
    refused = _consent_reason(reach.consents, purpose, channel, policy)
    if refused is not None:
        reasons.append(refused)
    if purpose == MARKETING and reach.holds.open_complaints:
        cases = ", ".join(reach.holds.open_complaints)
        reasons.append(Reason("complaint_open", f"complaint open (case {cases})"))
    return reasons


def _delays(
    reach: CustomerReach,
    setup: ChannelSetup,
    sends: Sequence[RecentSend],
    purpose: str,
    at: datetime,
    policy: ContactPolicy,
) -> list[Reason]:
    """What holds the channel back for a while (never transactional): a pause, quiet hours,
    the frequency budget, a detractor score."""
    channel = setup.channel
    reasons: list[Reason] = []
    paused_until = setup.paused_until
    if paused_until is not None and paused_until > at:
        text = f"{channel} paused until {paused_until.isoformat()}"
        reasons.append(Reason("paused", text, paused_until))
    window = setup.quiet_hours
    if window is not None:
        quiet = _quiet_reason(window, at)
        if quiet is not None:
            reasons.append(quiet)
    per_day, per_week = setup.max_per_day, setup.max_per_week
    if per_day is not None or per_week is not None:
        sent = [s.sent_at for s in sends if s.channel == channel] if sends else []
        if per_day is not None:
            capped = _cap_reason(sent, per_day, purpose, at, DAY)
            if capped is not None:
                reasons.append(capped)
        if per_week is not None:
            capped = _cap_reason(sent, per_week, purpose, at, WEEK)
            if capped is not None:
                reasons.append(capped)
    detractor = reach.holds.detractor
    if purpose == MARKETING and detractor is not None:
        until = detractor.scored_at + policy.detractor_hold
        if until > at:
            score = f"{detractor.measure} {detractor.score}"
            text = f"detractor score {score} on {detractor.scored_at:%Y-%m-%d}"
            reasons.append(Reason("detractor", text, until))
    return reasons


def _channel_verdict(
    reach: CustomerReach,
    setup: ChannelSetup,
    sends: Sequence[RecentSend],
    purpose: str,
    at: datetime,
    policy: ContactPolicy,
) -> ChannelVerdict:
    """A channel refused (with every reason that does not pass with time), delayed (with every
    reason and the instant they have all passed), or allowed."""
    refusals = _refusals(reach, setup, purpose, policy)
    if refusals:
        return ChannelVerdict(setup.channel, setup.address, False, tuple(refusals))
    if purpose == TRANSACTIONAL:
        return ChannelVerdict(setup.channel, setup.address, True, (ALLOWED,), at)
    delays = _delays(reach, setup, sends, purpose, at, policy)
    if not delays:
        return ChannelVerdict(setup.channel, setup.address, True, (ALLOWED,), at)
    return ChannelVerdict(
        setup.channel, setup.address, False, tuple(delays), _possible_at(setup, delays)
    )


def _possible_at(setup: ChannelSetup, delays: list[Reason]) -> datetime | None:
    """When every delay has passed (None when one does not pass with time), moved past the
    quiet hours it may land in: the earliest instant the channel may be possible."""
    untils = [reason.until for reason in delays]
    if None in untils:
        return None
    instant = max(until for until in untils if until is not None)
    window = setup.quiet_hours
    return instant if window is None else quiet_until(window, instant) or instant


NO_PREFERENCES = Reason("no_preferences", "no channel set-up")


def contact_decision(
    reach: CustomerReach,
    sends: Sequence[RecentSend],
    purpose: str,
    at: datetime,
    channel: str | None = None,
    policy: ContactPolicy = DEFAULT_POLICY,
) -> Decision:
    """May we contact the customer now for `purpose`, and on which channel (or on `channel`
    only)? `sends` are the messages sent to them since `sends_since(at)`, by every campaign."""
    if at.tzinfo is None:
        raise ValueError("at must carry a UTC offset")
    wanted = normalise_purpose(purpose)
    preferences = reach.preferences
    if preferences is None or not preferences.channels:
        return Decision(wanted, at, None, None, (), (NO_PREFERENCES,))
    setups = preferences.channels
    if channel is not None:
        setups = tuple(s for s in setups if s.channel == channel)
        if not setups:
            reason = Reason("channel_not_chosen", f"the customer did not choose {channel}")
            return Decision(wanted, at, None, None, (), (reason,))
    verdicts: list[ChannelVerdict] = []
    for setup in setups:
        verdict = _channel_verdict(reach, setup, sends, wanted, at, policy)
        verdicts.append(verdict)
        if verdict.allowed:
            return Decision(wanted, at, verdict.channel, verdict.address, tuple(verdicts))
    possible = [v.possible_at for v in verdicts if v.possible_at is not None]
    return Decision(wanted, at, None, None, tuple(verdicts), (), min(possible, default=None))
