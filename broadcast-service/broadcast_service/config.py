"""Settings of the broadcast service (`CRM_BROADCAST_` prefix)."""

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from crm_shared.runtime.config import ServiceSettings


class BroadcastSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_BROADCAST_", extra="ignore")

    database: str = "crm_broadcast"
    api_port: int = 8103
    worker_metrics_port: int = 9103


MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
"""The service's own SQL migrations, applied in name order by the worker and the API."""


class SenderSettings(BroadcastSettings):
    """The sender's settings (`CRM_BROADCAST_` prefix, like the rest of the service); the link
    secret is the platform's `CRM_LINK_SECRET`, which the gateway reads links with."""

    sender_metrics_port: int = 9113
    link_secret: SecretStr = Field(
        validation_alias="CRM_LINK_SECRET",
        min_length=16,
        description="Signs the unsubscribe and preference-centre links; no default (a secret)",
    )
    links_base_url: str = Field(
        default="http://127.0.0.1:8100", description="The gateway, as customers reach it"
    )
    mail_from: str = "CRM <news@crm.example.com>"
    message_id_domain: str = "crm.example.com"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_timeout_seconds: float = Field(default=30, gt=0)
    smtp_connections: int = Field(
        default=16, ge=1, le=512, description="SMTP connections kept open: messages in flight"
    )
    webhook_urls: dict[str, str] = Field(
        default_factory=dict,
        description='Provider URL per channel, JSON: {"sms": "https://...", "push": "..."}',
    )
    webhook_timeout_seconds: float = Field(default=10, gt=0)
    webhook_connections: int = Field(default=32, ge=1, le=512)
    send_rate: float = Field(
        default=0, ge=0, description="Most messages a second this sender sends; 0: no limit"
    )
    claim_batch: int = Field(default=500, ge=1, le=10_000)
    max_attempts: int = Field(default=5, ge=1, le=100)
    retry_base_seconds: float = Field(default=30, gt=0)
    retry_cap_seconds: float = Field(default=3600, gt=0)
    lease_seconds: float = Field(
        default=300,
        gt=0,
        description="How long a claimed message stays this sender's; then another resolves it",
    )
    idle_seconds: float = Field(default=1.0, gt=0, le=60, description="Poll when nothing is due")
