"""The broadcast API's delivery routes: providers' delivery reports (webhook callbacks) and each
campaign's results by channel. Kept apart from api.py, which serves preferences and decisions.

A report is a fact about a message the sender recorded; it is recorded once (a provider that
reports twice changes nothing) and published through the outbox in the same commit, like the
sender's own outcomes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import FastAPI, HTTPException, Path, Request

from broadcast_service import delivery, metrics, store
from crm_shared.contracts.delivery_reports import CampaignDelivery, DeliveryReport, ReportRecorded
from crm_shared.runtime import outbox
from crm_shared.runtime.http import pool_of

MessageIdPath = Annotated[str, Path(min_length=1, max_length=128)]
CampaignIdPath = Annotated[str, Path(min_length=1, max_length=128)]


def add_delivery_routes(app: FastAPI) -> None:
    @app.post("/messages/{message_id}/reports", response_model=ReportRecorded)
    async def report(
        message_id: MessageIdPath, body: DeliveryReport, request: Request
    ) -> ReportRecorded:
        """A provider's delivery report (delivered, opened, clicked, bounced, unsubscribed,
        complained): published as the message's outcome; a bounce or an unsubscribe also
        stops contact."""
        at = body.at or datetime.now(UTC)
        async with pool_of(request).acquire() as conn, conn.transaction():
            message = await store.outbound_message(conn, message_id)
            if message is None:
                raise HTTPException(404, f"no message {message_id!r} was planned")
            new = await store.add_outcomes(conn, [message], [body.outcome], [body.reason], at)
            if new:
                await outbox.write(
                    conn, delivery.events_of_report(message, body.outcome, body.reason, at)
                )
        if new:
            metrics.MESSAGES.labels(message.channel, body.outcome).inc()
        return ReportRecorded(message_id=message_id, outcome=body.outcome, recorded=bool(new))

    @app.get("/campaigns/{campaign_id}/delivery", response_model=CampaignDelivery)
    async def campaign_delivery(campaign_id: CampaignIdPath, request: Request) -> CampaignDelivery:
        """What became of a campaign's messages, by channel and outcome."""
        async with pool_of(request).acquire() as conn:
            results = await store.campaign_results(conn, campaign_id)
        return CampaignDelivery(campaign_id=campaign_id, channels=results)
