"""Rendering a campaign's messages when the sender claims them: planning writes narrow rows (who,
channel, address, when), and the claim gives each its subject and body from the campaign's
template, with the recipient's name and recommendations as they are now, and signed links.

The rendered content is written to the row in the claim's transaction, so a retry or an attempt
after a crash sends the same message. A template that fails for a recipient (a runtime error,
or links without a secret) cancels that message with the reason, as the re-check cancels one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

import asyncpg

from broadcast_service import campaigns, metrics, store
from broadcast_service.config import BroadcastSettings
from broadcast_service.delivery import OutboundMessage
from broadcast_service.templates import Links, RenderedMessage
from crm_shared.runtime.metrics import count

CANCELLED = "cancelled"


def links_of(settings: BroadcastSettings) -> Links:
    """How messages' links are made: CRM_LINK_SECRET, CRM_PUBLIC_URL and
    CRM_BROADCAST_EMAIL_TRACKING."""
    platform = settings.platform
    secret = platform.link_secret.get_secret_value() if platform.link_secret else None
    return Links(secret, platform.public_url, settings.email_tracking)


async def render_claimed(
    conn: asyncpg.Connection,
    messages: Sequence[OutboundMessage],
    links: Links,
    now: datetime,
) -> list[OutboundMessage]:
    """The claimed messages with their content: those planned without it rendered and saved,
    those whose template failed cancelled (and left out)."""
    waiting, by_campaign = await store.unrendered(conn, [m.message_id for m in messages])
    if not waiting:
        return list(messages)
    rendered: dict[str, RenderedMessage] = {}
    failed: dict[str, str] = {}
    for row in waiting:
        try:
            rendered[row.message_id] = campaigns.render_for(
                by_campaign[row.campaign_id], row.channel, row.addressee, row.message_id, links
            )
        except Exception as error:  # a template's runtime error is that message's reason
            failed[row.message_id] = f"{campaigns.TEMPLATE_FAILED}: {error!r}"[:300]
    if rendered:
        await store.save_rendered(
            conn,
            list(rendered),
            [r.subject for r in rendered.values()],
            [r.text for r in rendered.values()],
            [r.html for r in rendered.values()],
        )
    cancelled = [m for m in messages if m.message_id in failed]
    if cancelled:
        reasons = [failed[m.message_id] for m in cancelled]
        ids = [m.message_id for m in cancelled]
        await store.hold_back(conn, ids, [CANCELLED] * len(ids), [None] * len(ids), reasons)
        await store.add_outcomes(conn, cancelled, [CANCELLED] * len(ids), reasons, now)
        for message in cancelled:
            count(metrics.MESSAGES.labels(message.channel, CANCELLED))
    return [
        _with_content(m, rendered.get(m.message_id)) for m in messages if m.message_id not in failed
    ]


def _with_content(message: OutboundMessage, content: RenderedMessage | None) -> OutboundMessage:
    if content is None:
        return message
    return replace(message, subject=content.subject, body_text=content.text, body_html=content.html)
