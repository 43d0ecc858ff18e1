"""What a delivery report says about a message, and what a campaign's results hold: the HTTP
contract of the broadcast service's report and results routes.

Shared by the broadcast service, which records reports, and the gateway, which takes them from
providers (and from the tracked e-mails' pixel and redirect) and documents them: one model, so
the gateway never accepts a report the service refuses.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field, field_validator

REPORT_REASON_MAX_LENGTH = 300


class ReportedOutcome(StrEnum):
    """What a provider's delivery report may say about a message."""

    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    BOUNCED = "bounced"
    FAILED = "failed"
    UNSUBSCRIBED = "unsubscribed"
    COMPLAINED = "complained"


class DeliveryReport(BaseModel):
    outcome: ReportedOutcome
    reason: str | None = Field(
        default=None,
        max_length=REPORT_REASON_MAX_LENGTH,
        description="e.g. the bounce text or the link clicked",
    )
    at: datetime | None = Field(
        default=None, description="When it happened, with a UTC offset; default now"
    )

    @field_validator("at")
    @classmethod
    def _aware(cls, instant: datetime | None) -> datetime | None:
        if instant is not None and instant.tzinfo is None:
            raise ValueError("at must carry a UTC offset, e.g. 2024-05-01T10:00:00Z")
        return instant


class ReportRecorded(BaseModel):
    message_id: str
    outcome: ReportedOutcome
    recorded: bool = Field(description="False when this outcome of the message was known already")


class CampaignDelivery(BaseModel):
    campaign_id: str
    channels: dict[str, dict[str, int]] = Field(
        description="Messages by channel and outcome: sent, delivered, opened, clicked, bounced, "
        "failed, unsubscribed, complained, cancelled"
    )
