"""Planning by decision signature on real PostgreSQL: a plan that decides once per signature
(`planning.plan_due`) writes exactly the rows, and counts exactly the reasons, that deciding
each recipient alone gives (`tests.campaign_reference.plan_batch` over `store.recipients_of`),
rows made in Python, over a varied
population: quiet hours in several zones at a daylight-saving edge, caps reached by sends at the
window's edges, pauses, holds, refusals of every kind, SMS first, own and registered addresses
and missing ones, a throttle across chunks."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from typing import Any

import asyncpg
import pytest

from broadcast_service import campaigns, planning, store
from broadcast_service.config import MIGRATIONS
from broadcast_service.decision import sends_since
from broadcast_service.projection import (
    ChannelPreferences,
    ChannelSetup,
    ComplaintHold,
    Consent,
    DetractorHold,
    DoNotContact,
    QuietWindow,
)
from crm_shared.contracts.events import CAMPAIGN_DEFINED, build_event, validate_event
from crm_shared.runtime.db import open_pool
from tests.campaign_reference import PLANNED_ROW_COLUMNS, plan_batch, planned_row, write_out_plans

pytestmark = pytest.mark.component

AT = datetime(2025, 3, 30, 0, 30, tzinfo=UTC)
"""Half an hour before London springs forward (01:00 UTC): 00:30 GMT, then BST."""
CUSTOMERS = 600
CHUNK = 37
WINDOWS = (
    QuietWindow(time(22, 0), time(7, 0), "Europe/London"),
    QuietWindow(time(0, 0), time(1, 30), "Europe/London"),  # ends in the skipped hour
    QuietWindow(time(21, 0), time(8, 0), "America/New_York"),
    QuietWindow(time(9, 0), time(17, 0), "Asia/Tokyo"),
    QuietWindow(time(23, 0), time(6, 0), "Australia/Sydney"),
    QuietWindow(time(20, 0), time(20, 0), "UTC"),  # empty
)
SEND_AGES = (
    timedelta(hours=1),
    timedelta(days=1),  # just out of the day's window
    timedelta(hours=23, minutes=59),
    timedelta(days=3),
    timedelta(days=6, hours=23),
    timedelta(days=8),  # older than the sends counted
    timedelta(hours=-1),  # after the instant
)
T0 = AT - timedelta(days=100)


Profile = dict[str, Any]


def _profile(rng: random.Random) -> Profile:
    """What the decision reads about a customer, drawn from small sets (but who they are)."""
    channels = rng.choice(
        [("email",), ("sms", "email"), ("email", "sms"), ("sms",), ("push", "email")]
    )
    return {
        "setups": [
            (
                channel,
                rng.choice([None, None, None, "own", ""]),
                rng.choice([None, None, *WINDOWS]),
                rng.choice([None, None, 1, 2]),
                rng.choice([None, 2, 3]),
                rng.choice([None, None, AT - timedelta(hours=1), AT + timedelta(days=2)]),
            )
            for channel in channels
        ]
        if rng.random() < 0.9
        else None,
        "email": rng.choice(["yes", "yes", "yes", None, ""]),
        "phone": rng.random() < 0.5,
        "consents": _consents(rng),
        "listed": [
            (
                rng.choice(["*", "email", "sms"]),
                rng.choice(["unsubscribed", "bounced", "complaint", "legal", None]),
            )
            for _ in range(rng.choice([0, 0, 0, 1]))
        ],
        "complaint": rng.choice([None, None, None, True, False]),
        "detractor": rng.choice([None, None, 5, 40]),
        "sends": _sends(rng),
    }


def _consents(rng: random.Random) -> dict[tuple[str, str], tuple[str, str, int]]:
    """Consents of every purpose on a few days, so that a channel's own consent and the
    every-channel one are sometimes of the same instant."""
    found = {}
    for purpose in ("marketing", "service"):
        if rng.random() < 0.7:
            found[purpose, "*"] = ("granted", "double_opt_in", 2)
        if rng.random() < 0.5:  # the channel's own, newer or older than the every-channel one
            state = rng.choice(["granted", "revoked", "denied"])
            method = rng.choice(["double_opt_in", "api"])
            found[purpose, rng.choice(["email", "sms"])] = (state, method, rng.choice([1, 3]))
    for _ in range(rng.choice([0, 1, 1, 2])):
        purpose = rng.choice(["marketing", "marketing", "service", "transactional"])
        channel = rng.choice(["*", "*", "email", "sms"])
        state = rng.choice(["granted", "granted", "granted", "pending", "denied", "revoked"])
        method = rng.choice(["double_opt_in", "api", "preference_centre"])
        found[purpose, channel] = (state, method, rng.choice([1, 2, 2, 3]))
    return found


def _sends(rng: random.Random) -> list[tuple[str, timedelta]]:
    return [
        (rng.choice(["email", "sms"]), rng.choice(SEND_AGES))
        for _ in range(rng.choice([0, 1, 2, 3]))
    ]


def _perturbed(rng: random.Random, profile: Profile) -> Profile:
    """The profile with one input changed (or none): a signature that leaves that input out
    would put both customers under one decision."""
    changed = dict(profile)
    what = rng.choice(
        [
            "none",
            "none",
            "sends",
            "consents",
            "detractor",
            "email",
            "phone",
            "setups",
            "listed",
            "complaint",
        ]
    )
    if what == "sends":
        changed["sends"] = _sends(rng)
    elif what == "consents":  # the same consents on other days
        changed["consents"] = {
            k: (v[0], v[1], rng.choice([1, 2, 3])) for k, v in profile["consents"].items()
        }
    elif what == "detractor":
        changed["detractor"] = rng.choice([None, 5, 40])
    elif what == "email":
        changed["email"] = rng.choice(["yes", None, ""])
    elif what == "phone":
        changed["phone"] = not profile["phone"]
    elif what == "setups" and profile["setups"]:
        setups = list(profile["setups"])
        n = rng.randrange(len(setups))
        field = rng.randrange(1, 6)
        options = [
            [None, "own", ""],
            [None, *WINDOWS],
            [None, 1, 2],
            [None, 2, 3],
            [None, AT - timedelta(hours=1), AT + timedelta(days=2)],
        ]
        setups[n] = (*setups[n][:field], rng.choice(options[field - 1]), *setups[n][field + 1 :])
        changed["setups"] = setups
    elif what == "listed":
        changed["listed"] = (
            [] if profile["listed"] else [("*", rng.choice(["unsubscribed", "legal"]))]
        )
    elif what == "complaint":
        changed["complaint"] = rng.choice([None, True, False])
    return changed


async def _fill(conn: asyncpg.Connection) -> None:
    """CUSTOMERS customers: a few dozen profiles, each customer one of them with one input
    changed or none, and their own addresses."""
    rng = random.Random(10)
    profiles = [_profile(rng) for _ in range(40)]
    preferences, consents, listed, complaints, scores = [], [], [], [], []
    contacts: list[tuple[Any, ...]] = []
    sends: list[tuple[Any, ...]] = []
    for i in range(CUSTOMERS):
        customer = f"C{i:04d}"
        # Neighbours share a profile: a chunk decides once per signature among its own.
        profile = _perturbed(rng, profiles[i // 12 % len(profiles)])
        if profile["setups"] is not None:
            setups = tuple(
                ChannelSetup(channel, f"own{i}@{channel}" if own == "own" else own, *rest)
                for channel, own, *rest in profile["setups"]
            )
            preferences.append(ChannelPreferences(customer, setups, "UTC", T0, "t", f"p{i}"))
        email = f"c{i}@example.com" if profile["email"] == "yes" else profile["email"]
        contacts.append((customer, email, f"+4477{i:06d}" if profile["phone"] else None))
        consents += [
            Consent(
                customer,
                purpose,
                channel,
                state,
                T0 + timedelta(days=day),
                "t",
                f"k{i}{purpose}{channel}",
                method,
            )
            for (purpose, channel), (state, method, day) in profile["consents"].items()
        ]
        listed += [
            DoNotContact(
                customer, channel, reason is not None, reason, None, T0, "t", f"d{i}{channel}"
            )
            for channel, reason in profile["listed"]
        ]
        if profile["complaint"] is not None:
            complaints.append(
                ComplaintHold(customer, f"K{i}", profile["complaint"], T0, "t", f"h{i}")
            )
        if profile["detractor"] is not None:
            scored = AT - timedelta(days=profile["detractor"])
            scores.append(DetractorHold(customer, "nps", 3, scored, "t", f"n{i}"))
        sends += [
            (f"old-{i}-{n}", customer, channel, AT - age)
            for n, (channel, age) in enumerate(profile["sends"])
        ]
    await store.save_preferences(conn, preferences)
    await store.save_consents(conn, consents)
    await store.save_do_not_contact(conn, listed)
    await store.save_complaints(conn, complaints)
    await store.save_detractors(conn, scores)
    await conn.executemany(
        "INSERT INTO customer_contacts (customer_id, name, email, phone, changed_at)"
        " VALUES ($1, 'N', $2, $3, $4)",
        [(*contact, T0) for contact in contacts],
    )
    await conn.executemany(
        "INSERT INTO outbound_messages (message_id, campaign_id, customer_id, channel, address,"
        " purpose, not_before, state, planned_at, sent_at)"
        " VALUES ($1, 'earlier', $2, $3, 'a', 'service', $4, 'sent', $4, $4)",
        sends,
    )
    await conn.execute(
        "INSERT INTO segment_memberships SELECT customer_id, 'all', true, 1, $1, 't', customer_id"
        " FROM customer_contacts",
        T0,
    )


@pytest.fixture
async def pool(fresh_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    opened = await open_pool(fresh_dsn, MIGRATIONS, 2)
    async with opened.acquire() as conn, conn.transaction():
        await _fill(conn)
    try:
        yield opened
    finally:
        await opened.close()


def _campaign(purpose: str, channels: tuple[str, ...], throttle: int | None) -> campaigns.Campaign:
    definition: dict[str, Any] = {
        "name": "Spring",
        "kind": "campaign",
        "purpose": purpose,
        "target": {"segment": "all"},
        "templates": [{"channel": channel, "text": "Hello"} for channel in channels],
        "throttle_per_second": throttle,
    }
    campaign_id = f"{purpose}-{len(channels)}-{throttle}"
    event = build_event(CAMPAIGN_DEFINED, campaign_id, definition, source="t", time=AT)
    return campaigns.campaign_from(validate_event(event))


@pytest.mark.parametrize(
    ("purpose", "channels", "throttle"),
    [
        ("marketing", ("email", "sms"), None),
        ("marketing", ("email",), None),
        ("service", ("sms", "email"), 7),  # 1/7 s is no whole number of microseconds
        ("transactional", ("email", "sms"), None),
    ],
)
async def test_planning_by_signature_equals_deciding_each_recipient_alone(
    pool: asyncpg.Pool, purpose: str, channels: tuple[str, ...], throttle: int | None
) -> None:
    campaign = _campaign(purpose, channels, throttle)
    since = sends_since(AT)
    async with pool.acquire() as conn:
        async with conn.transaction():
            ids = [
                r["customer_id"]
                for r in await conn.fetch(
                    "SELECT customer_id FROM customer_contacts ORDER BY customer_id"
                )
            ]
            expected = plan_batch(campaign, await store.recipients_of(conn, ids, since), AT, 0)
            read = store.SignatureRead(campaign.definition.target, purpose, since, CUSTOMERS)
            signatures = await store.signature_groups(conn, read, None, None)
            by_range = await store.signature_groups(conn, read, None, None, dense=True)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            dry_run = await planning.dry_run(conn, campaign, AT, CHUNK)
        await store.save_campaigns(conn, [campaigns.started_if_due(campaign)])
    # One connection: chunks commit in id order, so the throttle numbers as deciding alone does.
    chunks = await planning.plan_due(pool, planning.Planner(CHUNK, connections=1))
    async with pool.acquire() as conn:
        written = "SELECT count(*) FROM outbound_messages WHERE campaign_id = $1"
        assert await conn.fetchval(written, campaign.campaign_id) == 0  # kept in chunks
        assert await write_out_plans(conn) == len(expected.messages)
        rows = await conn.fetch(
            f"SELECT {', '.join(PLANNED_ROW_COLUMNS)} FROM outbound_messages"
            " WHERE campaign_id = $1 ORDER BY customer_id",
            campaign.campaign_id,
        )
        counted = await conn.fetch(
            "SELECT reason, recipients FROM campaign_reasons WHERE campaign_id = $1",
            campaign.campaign_id,
        )
    assert chunks == CUSTOMERS // CHUNK + 1
    assert [tuple(row) for row in rows] == [planned_row(m) for m in expected.messages]
    assert {row["reason"]: row["recipients"] for row in counted} == expected.reasons
    assert dry_run == expected.reasons
    # Not a trivial population: recipients share signatures, and the reasons are varied.
    assert sum(g.recipients for g in signatures.groups) == signatures.recipients == CUSTOMERS
    # Read by id range (a dense chunk) or by id, the chunk has the same signatures.
    assert by_range.recipients == signatures.recipients
    assert sorted(by_range.groups, key=str) == sorted(signatures.groups, key=str)
    assert 30 < len(signatures.groups) < CUSTOMERS / 2
    codes = Counter(code for (_, codes), n in expected.decided.items() for code in codes)
    assert len(expected.messages) > CUSTOMERS / 10
    assert {"no_preferences", "no_address", "do_not_contact"} <= set(codes)
    if purpose != "transactional":
        assert {"no_consent", "paused", "quiet_hours"} <= set(codes)
        assert {"daily_cap", "weekly_cap"} & set(codes)
    if purpose == "marketing":
        assert {"complaint_open", "detractor", "consent_unconfirmed", "weekly_cap"} <= set(codes)
        assert expected.reasons[campaigns.PLANNED_LATER] > 0
    assert any(m.address.startswith("own") for m in expected.messages)
    assert any(m.channel == "sms" for m in expected.messages) == ("sms" in channels)
    if throttle:
        spread = timedelta(seconds=(len(expected.messages) - 1) // throttle)
        assert max(m.not_before for m in expected.messages) >= AT + spread
