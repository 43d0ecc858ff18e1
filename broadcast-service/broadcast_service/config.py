"""Settings of the broadcast service (`CRM_BROADCAST_` prefix; the links in messages are signed
with the platform's `CRM_LINK_SECRET` and point at `CRM_PUBLIC_URL`)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from broadcast_service.decision import ContactPolicy
from broadcast_service.smtp import SmtpSecurity
from crm_shared.runtime.config import ServiceSettings


class BroadcastSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_BROADCAST_", extra="ignore")

    database: str = "crm_broadcast"
    api_port: int = 8103
    worker_metrics_port: int = 9103
    double_opt_in: str = Field(
        default="marketing:email",
        pattern=r"^([a-z]+:[a-z]+(,[a-z]+:[a-z]+)*)?$",
        description="purpose:channel pairs whose grants count only once confirmed; empty: none",
    )
    detractor_hold_days: int = Field(default=30, ge=0, le=3650)
    """How long a detractor score holds marketing back."""
    plan_batch_size: int = Field(
        default=10_000, ge=1, le=100_000, description="Recipients decided per set of queries"
    )
    plan_connections: int = Field(
        default=3,
        ge=1,
        le=8,
        description="Chunks of a plan read at once, a connection each of the worker's pool:"
        " three keep two cores busy while a chunk is written in its turn",
    )
    pool_size: int = Field(
        default=5,
        ge=3,
        le=64,
        description="Connections of each process's pool; the worker's holds the plan's"
        " connections, the fold's and the outbox relay's (the API and the sender have their own)",
    )
    email_tracking: bool = Field(
        default=True,
        description="Track e-mails' opens (a pixel) and clicks (links through the gateway)",
    )

    @model_validator(mode="after")
    def _pool_holds_the_plan(self) -> BroadcastSettings:
        """A plan never takes the fold's or the outbox relay's connection of the worker's pool."""
        if self.pool_size < self.plan_connections + 2:
            raise ValueError(
                f"pool_size ({self.pool_size}) must be at least plan_connections"
                f" ({self.plan_connections}) + 2: the worker's fold and outbox relay need one each"
            )
        return self

    def contact_policy(self) -> ContactPolicy:
        pairs = (pair.split(":") for pair in self.double_opt_in.split(",") if pair)
        return ContactPolicy(
            double_opt_in=frozenset((purpose, channel) for purpose, channel in pairs),
            detractor_hold=timedelta(days=self.detractor_hold_days),
        )


MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
"""The service's own SQL migrations, applied in name order by the worker and the API."""


class SenderSettings(BroadcastSettings):
    """The sender's settings (`CRM_BROADCAST_` prefix, like the rest of the service); the links
    it signs use the platform's `CRM_LINK_SECRET` (required) and `CRM_PUBLIC_URL`."""

    sender_metrics_port: int = 9113
    mail_from: str = "CRM <news@crm.example.com>"
    message_id_domain: str = "crm.example.com"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_timeout_seconds: float = Field(default=30, gt=0)
    smtp_tls: Literal["none", "starttls", "implicit"] = Field(
        default="none",
        description="starttls (port 587: refused if not offered) or implicit (465); none: clear",
    )
    smtp_ca_file: Path | None = Field(
        default=None, description="CA certificates (PEM) to verify the server by; else the system's"
    )
    smtp_username: str | None = None
    smtp_password: SecretStr | None = Field(
        default=None, description="With smtp_username: AUTH PLAIN, only over TLS or to loopback"
    )
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

    @model_validator(mode="after")
    def _signs_links(self) -> SenderSettings:
        """Every marketing e-mail carries a signed unsubscribe link: no secret, no sending."""
        if self.platform.link_secret is None:
            raise ValueError("the sender needs CRM_LINK_SECRET (make one: openssl rand -hex 32)")
        if (self.smtp_username is None) != (self.smtp_password is None):
            raise ValueError("set both CRM_BROADCAST_SMTP_USERNAME and _PASSWORD, or neither")
        return self

    def smtp_security(self) -> SmtpSecurity:
        credentials = None
        if self.smtp_username is not None and self.smtp_password is not None:
            credentials = (self.smtp_username, self.smtp_password.get_secret_value())
        ca_file = None if self.smtp_ca_file is None else str(self.smtp_ca_file)
        return SmtpSecurity(self.smtp_tls, credentials, ca_file)
