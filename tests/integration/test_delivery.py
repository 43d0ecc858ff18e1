"""The sender on real Kafka, PostgreSQL and SMTP: an aiosmtpd server on loopback and a local HTTP
server stand for the mail relay and the SMS provider, on the ports the platform's sender is given
(tests/conftest.py SENDER_SETTINGS). Messages are planned straight into `outbound_messages`, as
the campaign planner does."""

from __future__ import annotations

import asyncio
import html
import json
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import asyncpg
import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from broadcast_service import store
from broadcast_service.campaigns import PlannedMessage
from broadcast_service.delivery import INTERRUPTED_REASON
from broadcast_service.service import SENDER
from crm_shared.contracts.sdk import EventPublisher
from crm_shared.ops import launcher
from tests.conftest import SENDER_SETTINGS
from tests.integration.helpers import (
    create_api_key,
    eventually,
    fetch,
    gateway_url,
    get_json,
    kill_and_restart,
    read_topic,
    service_auth,
    unique,
)

pytestmark = pytest.mark.integration


@dataclass
class MailServer:
    """Accepts mail like a relay; addresses starting with `bounce` are unknown (550), those
    starting with `busy` are refused once for a while (451)."""

    received: list[Any] = field(default_factory=list)
    deferred: set[str] = field(default_factory=set)

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.startswith("bounce"):
            return "550 5.1.1 no such user"
        if address.startswith("busy") and address not in self.deferred:
            self.deferred.add(address)
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.received.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK queued"

    def message_ids(self) -> Counter[str]:
        return Counter(str(mail["Message-ID"]) for mail in self.received)


@dataclass
class Provider:
    """An SMS provider: records each request, and sends a message posted twice (same
    Idempotency-Key) once."""

    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


def _port(setting: str) -> int:
    return int(SENDER_SETTINGS[setting])


@pytest.fixture(scope="module")
def mail_server(platform: dict[str, str]) -> Iterator[MailServer]:
    handler = MailServer()
    controller = Controller(handler, hostname="127.0.0.1", port=_port("CRM_BROADCAST_SMTP_PORT"))
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def provider(platform: dict[str, str]) -> Iterator[Provider]:
    recorded = Provider()
    url = json.loads(SENDER_SETTINGS["CRM_BROADCAST_WEBHOOK_URLS"])["sms"]
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            recorded.requests.append((self.path, self.headers["Idempotency-Key"], body))
            self.send_response(202)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield recorded
    finally:
        server.shutdown()


def _dsn(platform: dict[str, str]) -> str:
    return f"{platform['CRM_PG_DSN_BASE']}/crm_broadcast"


def _reachable(platform: dict[str, str], customers: Sequence[str], channels: Sequence[str]) -> None:
    """Customers who chose these channels (with addresses) and consent to marketing on every
    channel, confirmed by double opt-in."""
    confirmed = {"purpose": "marketing", "state": "granted", "capture_method": "double_opt_in"}
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="web-site") as crm:
        for customer in customers:
            setup = [{"channel": c, "address": _address(customer, c)} for c in channels]
            crm.publish("crm.channel_preference.set.v2", customer, {"channels": setup})
            crm.publish("crm.consent.recorded.v2", customer, confirmed)


def _address(customer: str, channel: str) -> str:
    return f"{customer}@example.com" if channel == "email" else "+44 7700 900123"


async def _folded(platform: dict[str, str], customers: Sequence[str]) -> None:
    await eventually(
        lambda: fetch(
            _dsn(platform),
            "SELECT count(*) AS n FROM consents WHERE customer_id = ANY($1::text[])",
            list(customers),
        ),
        lambda rows: rows[0]["n"] == len(customers),
        what="consents folded",
    )


def _message(customer: str, campaign: str, address: str, channel: str = "email") -> PlannedMessage:
    return PlannedMessage(
        message_id=f"{campaign}.{customer}",
        campaign_id=campaign,
        customer_id=customer,
        channel=channel,
        address=address,
        purpose="marketing",
        subject=f"Picks for {customer}",
        body_text=f"Hello {customer}",
        body_html=f"<p>Hello {customer}</p>",
        not_before=datetime.now(UTC),
    )


async def _plan(platform: dict[str, str], messages: Sequence[PlannedMessage]) -> None:
    conn = await asyncpg.connect(_dsn(platform))
    try:
        await store.add_messages(conn, messages)
    finally:
        await conn.close()


async def _states(platform: dict[str, str], campaign: str) -> dict[str, tuple[str, int]]:
    rows = await fetch(
        _dsn(platform),
        "SELECT message_id, state, attempts FROM outbound_messages WHERE campaign_id = $1",
        campaign,
    )
    return {row["message_id"]: (row["state"], row["attempts"]) for row in rows}


async def _settled(
    platform: dict[str, str], campaign: str, count: int
) -> dict[str, tuple[str, int]]:
    return await eventually(
        lambda: _states(platform, campaign),
        lambda states: (
            len(states) == count
            and all(state in ("sent", "failed", "cancelled") for state, _ in states.values())
        ),
        within=120,
        what=f"every message of {campaign} sent, failed or cancelled",
    )


def _events(platform: dict[str, str], topic: str, customers: set[str]) -> list[dict[str, Any]]:
    records = read_topic(platform["CRM_KAFKA_BOOTSTRAP"], topic)
    found = [json.loads(record.value) for record in records]
    return [event for event in found if event.get("subject") in customers]


async def test_messages_go_out_with_their_headers_and_outcomes_reach_the_timeline(
    platform: dict[str, str], mail_server: MailServer, provider: Provider
) -> None:
    campaign, ada, bob = unique("welcome"), unique("ada"), unique("bob")
    _reachable(platform, [ada, bob], ["email", "sms"])
    await _folded(platform, [ada, bob])
    await _plan(
        platform,
        [
            _message(ada, campaign, f"{ada}@example.com"),
            _message(bob, campaign, "+4915112345678", channel="sms"),
        ],
    )
    states = await _settled(platform, campaign, 2)
    assert set(states.values()) == {("sent", 1)}

    (mail,) = [m for m in mail_server.received if m["To"] == f"{ada}@example.com"]
    assert mail["Message-ID"] == f"<{campaign}.{ada}@crm.example.com>"
    assert mail["Subject"] == f"Picks for {ada}"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["List-Unsubscribe"].startswith("<http://127.0.0.1:8100/unsubscribe?token=")
    assert mail.get_body(("plain",)).get_content() == f"Hello {ada}"
    assert mail.get_body(("html",)).get_content() == f"<p>Hello {ada}</p>"

    (request,) = [r for r in provider.requests if r[2]["customer_id"] == bob]
    assert request[0] == "/sms" and request[1] == f"{campaign}.{bob}"
    assert (request[2]["to"], request[2]["text"]) == ("+4915112345678", f"Hello {bob}")

    outcomes = await asyncio.to_thread(_events, platform, "crm.messages", {ada, bob})
    assert sorted((e["subject"], e["data"]["outcome"]) for e in outcomes) == sorted(
        [(ada, "sent"), (bob, "sent")]
    )
    url = f"http://127.0.0.1:{platform['CRM_INTERACTION_API_PORT']}/customers/{ada}/timeline"
    _, page = await eventually(
        lambda: get_json(url, headers=service_auth(platform)),
        lambda r: r[0] == 200 and any(i["kind"] == "message" for i in r[1]["items"]),
        what="the sent message on the timeline",
    )
    ada_event = next(e for e in outcomes if e["subject"] == ada)
    assert ada_event["id"] in [i["event_id"] for i in page["items"] if i["kind"] == "message"]

    conn = await asyncpg.connect(_dsn(platform))
    try:
        results = await store.campaign_results(conn, campaign)  # summed over the shards
    finally:
        await conn.close()
    assert results == {"email": {"sent": 1}, "sms": {"sent": 1}}


async def test_a_temporary_failure_is_retried_and_a_hard_bounce_stops_contact(
    platform: dict[str, str], mail_server: MailServer
) -> None:
    campaign, busy, gone = unique("retry"), unique("busy"), unique("gone")
    _reachable(platform, [busy, gone], ["email"])
    await _folded(platform, [busy, gone])
    await _plan(
        platform,
        [
            _message(busy, campaign, f"busy-{busy}@example.com"),
            _message(gone, campaign, f"bounce-{gone}@example.com"),
        ],
    )
    states = await _settled(platform, campaign, 2)
    assert states[f"{campaign}.{busy}"] == ("sent", 2)  # refused once with 451, then sent
    assert states[f"{campaign}.{gone}"] == ("failed", 1)  # 550: not tried again
    assert mail_server.message_ids()[f"<{campaign}.{busy}@crm.example.com>"] == 1

    outcomes = await asyncio.to_thread(_events, platform, "crm.messages", {busy, gone})
    assert sorted((e["subject"], e["data"]["outcome"]) for e in outcomes) == sorted(
        [(busy, "sent"), (gone, "bounced")]
    )
    preferences = await asyncio.to_thread(_events, platform, "crm.preferences", {gone})
    (dnc,) = [e for e in preferences if e["type"] == "crm.do_not_contact.added.v1"]
    assert dnc["source"] == "broadcast-service"
    assert (dnc["data"]["channel"], dnc["data"]["reason"]) == ("email", "bounced")


async def test_an_opt_out_after_planning_is_not_sent(
    platform: dict[str, str], mail_server: MailServer
) -> None:
    campaign, stays, leaves = unique("optout"), unique("stays"), unique("leaves")
    _reachable(platform, [stays, leaves], ["email"])
    await _folded(platform, [stays, leaves])
    planned = [
        _message(stays, campaign, f"{stays}@example.com"),
        _message(leaves, campaign, f"{leaves}@example.com"),
    ]
    later = datetime.now(UTC) + timedelta(hours=1)
    await _plan(platform, [replace(message, not_before=later) for message in planned])
    with EventPublisher(platform["CRM_KAFKA_BOOTSTRAP"], source="web-site") as crm:
        crm.publish("crm.consent.revoked.v1", leaves, {"purpose": "marketing"})
    await eventually(
        lambda: fetch(
            _dsn(platform), "SELECT granted FROM consents WHERE customer_id = $1", leaves
        ),
        lambda rows: [r["granted"] for r in rows] == [False],
        what="the opt-out folded",
    )
    # The campaign's hour comes: both messages are due, after the opt-out.
    await fetch(
        _dsn(platform),
        "UPDATE outbound_messages SET not_before = now() WHERE campaign_id = $1",
        campaign,
    )
    states = await _settled(platform, campaign, 2)
    assert states[f"{campaign}.{stays}"][0] == "sent"
    assert states[f"{campaign}.{leaves}"] == ("cancelled", 0)
    assert f"{leaves}@example.com" not in {m["To"] for m in mail_server.received}
    (row,) = await fetch(
        _dsn(platform),
        "SELECT last_error FROM outbound_messages WHERE message_id = $1",
        f"{campaign}.{leaves}",
    )
    assert "consent to marketing on email revoked" in row["last_error"]


async def _restart(env: dict[str, str], kill: bool) -> None:
    if kill:
        await kill_and_restart(env, [SENDER])
    else:  # SIGTERM, as the supervisor and `./crm down` stop it
        launcher.stop(SENDER, env)
        launcher.start(SENDER, env)
        await asyncio.sleep(1)  # until the new supervisor has exec'd (its command line is read)
        launcher.wait_healthy([SENDER], env)


@pytest.mark.parametrize("kill", [True, False], ids=["SIGKILL", "SIGTERM"])
async def test_a_sender_stopped_mid_campaign_sends_no_message_twice(
    platform: dict[str, str], mail_server: MailServer, kill: bool
) -> None:
    campaign, count, connections = unique("crash" if kill else "restart"), 600, 8
    customers = [f"{campaign}-c{n}" for n in range(count)]
    _reachable(platform, customers, ["email"])
    await _folded(platform, customers)
    slow = {  # long enough to be stopped midway
        **platform,
        "CRM_BROADCAST_SEND_RATE": "150",
        "CRM_BROADCAST_SMTP_CONNECTIONS": str(connections),
    }
    await kill_and_restart(slow, [SENDER])
    try:
        await _plan(platform, [_message(c, campaign, f"{c}@example.com") for c in customers])
        await eventually(
            lambda: _states(platform, campaign),
            lambda states: sum(state == "sent" for state, _ in states.values()) >= 100,
            what="the campaign under way",
        )
        await _restart(slow, kill)
        states = await _settled(platform, campaign, count)
    finally:
        await kill_and_restart(platform, [SENDER])
    sent = {m for m, (state, _) in states.items() if state == "sent"}
    interrupted = set(states) - sent
    arrived = mail_server.message_ids()
    copies = {m: arrived[f"<{m}@crm.example.com>"] for m in states}
    print(
        f"{'SIGKILL' if kill else 'SIGTERM'} mid-campaign: {count} messages, {len(interrupted)}"
        f" interrupted ({sum(copies[m] for m in interrupted)} of them had arrived),"
        f" {sum(n > 1 for n in copies.values())} twice"
    )
    assert max(copies.values()) == 1  # none twice
    assert all(copies[m] == 1 for m in sent)  # every message recorded sent arrived
    if kill:
        # Only the messages on the wire when the sender died (one per connection at most) are
        # ambiguous: failed as interrupted, with the reason, and not sent again.
        assert len(interrupted) <= connections
    else:  # a stopped sender finishes and records what it started
        assert not interrupted
    reasons = await fetch(
        _dsn(platform),
        "SELECT last_error FROM outbound_messages WHERE message_id = ANY($1::text[])",
        sorted(interrupted),
    )
    assert {r["last_error"] for r in reasons} <= {INTERRUPTED_REASON}
    assert all(states[m] == ("failed", 1) for m in interrupted)
    outcomes = await asyncio.to_thread(_events, platform, "crm.messages", set(customers))
    published = {e["id"]: e for e in outcomes}.values()
    assert sorted((e["subject"], e["data"]["outcome"]) for e in published) == sorted(
        (m.removeprefix(f"{campaign}."), "sent" if m in sent else "failed") for m in states
    )


async def test_provider_reports_are_recorded_once_and_an_unsubscribe_revokes_consent(
    platform: dict[str, str], mail_server: MailServer
) -> None:
    campaign, eve = unique("reports"), unique("eve")
    _reachable(platform, [eve], ["email"])
    await _folded(platform, [eve])
    await _plan(platform, [_message(eve, campaign, f"{eve}@example.com")])
    await _settled(platform, campaign, 1)
    api = f"http://127.0.0.1:{platform['CRM_BROADCAST_API_PORT']}"
    url = f"{api}/messages/{campaign}.{eve}/reports"
    async with httpx.AsyncClient(timeout=5, headers=service_auth(platform)) as client:
        answers = [
            (await client.post(url, json={"outcome": outcome})).json()["recorded"]
            for outcome in ("delivered", "delivered", "opened", "unsubscribed")
        ]
        assert answers == [True, False, True, True]
        unknown = await client.post(
            f"{api}/messages/nothing-{eve}/reports", json={"outcome": "opened"}
        )
        assert unknown.status_code == 404
        wrong = await client.post(url, json={"outcome": "exploded"})
        assert wrong.status_code == 422
        results = (await client.get(f"{api}/campaigns/{campaign}/delivery")).json()
    assert results["channels"] == {
        "email": {"sent": 1, "delivered": 1, "opened": 1, "unsubscribed": 1}
    }
    outcomes = await eventually(
        lambda: asyncio.to_thread(_events, platform, "crm.messages", {eve}),
        lambda events: len(events) == 4,
        what="four outcomes on crm.messages",
    )
    assert sorted(e["data"]["outcome"] for e in outcomes) == [
        "delivered",
        "opened",
        "sent",
        "unsubscribed",
    ]
    preferences = await asyncio.to_thread(_events, platform, "crm.preferences", {eve})
    (revoked,) = [
        e
        for e in preferences
        if e["type"] == "crm.consent.recorded.v2" and e["data"]["state"] == "revoked"
    ]
    assert revoked["data"] | {"evidence": None} == {
        "purpose": "marketing",
        "channel": "email",
        "state": "revoked",
        "capture_method": "unsubscribe_link",
        "wording_version": None,
        "evidence": None,
    }


TEAPOTS = "https://shop.example/teapots?from=mail&x=1"


def _through_gateway(platform: dict[str, str], url: str) -> str:
    """A link from a received mail (made for CRM_PUBLIC_URL), sent to the gateway under test."""
    parts = urlsplit(url)
    return f"{gateway_url(platform)}{parts.path}?{parts.query}"


async def test_opens_and_clicks_of_a_campaign_email_are_counted_through_the_gateway(
    platform: dict[str, str], mail_server: MailServer
) -> None:
    ann = unique("ann")
    _reachable(platform, [ann], ["email"])
    await _folded(platform, [ann])
    operator = create_api_key(platform, "tracking", "campaigns:read,campaigns:write")
    provider = create_api_key(platform, "mail-provider", "deliveries:write")
    template = {
        "channel": "email",
        "subject": "Teapots",
        "text": f"Teapots: {TEAPOTS}\nUnsubscribe: {{{{ unsubscribe_url }}}}",
        "html": f'<p>Teapots</p><a href="{html.escape(TEAPOTS)}">see them</a>',
    }
    definition = {
        "name": "Teapots",
        "purpose": "marketing",
        "target": {"customer_ids": [ann]},
        "templates": [template],
    }
    async with httpx.AsyncClient(base_url=gateway_url(platform), timeout=30) as gateway:
        defined = await gateway.post(
            "/v1/campaigns", json=definition, headers={"Authorization": f"Bearer {operator}"}
        )
        assert defined.status_code == 202, defined.text
        campaign = defined.json()["campaign_id"]
        mail = await eventually(
            lambda: _mail_to(mail_server, f"{ann}@example.com"),
            lambda found: found is not None,
            within=120,
            what="the campaign's e-mail received",
        )
        assert mail is not None
        page = mail.get_body(("html",)).get_content()
        pixel = html.unescape(page.split('<img src="', 1)[1].split('"', 1)[0])
        tracked = html.unescape(page.split('<a href="', 1)[1].split('"', 1)[0])
        text = mail.get_body(("plain",)).get_content()
        assert TEAPOTS not in page and TEAPOTS not in text  # every link to it is tracked
        assert "/unsubscribe?token=" in text  # the platform's own link stays as it is

        # A mail client loads the image, the customer clicks, the client loads it again.
        opened = await gateway.get(_through_gateway(platform, pixel))
        clicked = await gateway.get(_through_gateway(platform, tracked))
        again = await gateway.get(_through_gateway(platform, pixel))
        assert (opened.status_code, opened.headers["content-type"]) == (200, "image/gif")
        assert again.content == opened.content and "no-store" in again.headers["cache-control"]
        assert (clicked.status_code, clicked.headers["location"]) == (302, TEAPOTS)

        token = parse_qs(urlsplit(tracked).query)["token"][0]
        tampered = tracked.replace(quote(token, safe=""), quote(token[:-2] + "xx", safe=""))
        refused = await gateway.get(_through_gateway(platform, tampered))
        assert refused.status_code == 403 and "location" not in refused.headers
        assert "not valid" in refused.text

        # The mail provider reports the delivery through the gateway, with its own key.
        as_provider = {"Authorization": f"Bearer {provider}"}
        reports = f"/v1/messages/{_message_id(mail)}/reports"
        delivered = await gateway.post(reports, json={"outcome": "delivered"}, headers=as_provider)
        assert delivered.json() == {
            "message_id": _message_id(mail),
            "outcome": "delivered",
            "recorded": True,
        }
        naive = {"outcome": "bounced", "at": "2026-11-28T10:00:00"}
        invalid = await gateway.post(reports, json=naive, headers=as_provider)
        assert invalid.status_code == 422 and "UTC offset" in invalid.text
        unknown = await gateway.post(
            f"/v1/messages/nothing-{ann}/reports", json={"outcome": "opened"}, headers=as_provider
        )
        assert unknown.status_code == 404
        not_allowed = await gateway.post(
            reports, json={"outcome": "opened"}, headers={"Authorization": f"Bearer {operator}"}
        )
        assert not_allowed.status_code == 403 and "deliveries:write" in not_allowed.text

        results = await gateway.get(
            f"/v1/campaigns/{campaign}/delivery", headers={"Authorization": f"Bearer {operator}"}
        )
    assert results.status_code == 200, results.text
    assert results.json() == {
        "campaign_id": campaign,
        "channels": {"email": {"sent": 1, "delivered": 1, "opened": 1, "clicked": 1}},
    }
    outcomes = await eventually(
        lambda: asyncio.to_thread(_events, platform, "crm.messages", {ann}),
        lambda events: len(events) == 4,
        what="four outcomes on crm.messages",
    )
    assert sorted((e["data"]["outcome"], e["data"]["reason"]) for e in outcomes) == [
        ("clicked", TEAPOTS),
        ("delivered", None),
        ("opened", None),
        ("sent", None),
    ]


async def _mail_to(server: MailServer, address: str) -> Any:
    """The mail received for this address, or None yet."""
    return next((m for m in server.received if m["To"] == address), None)


def _message_id(mail: Any) -> str:
    """The platform's message id, from the Message-ID header the sender derived from it."""
    return str(mail["Message-ID"]).strip("<>").split("@", 1)[0]
