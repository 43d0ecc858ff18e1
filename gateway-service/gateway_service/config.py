"""Settings of the gateway (`CRM_GATEWAY_` prefix): where the services are, timeouts, limits."""

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from crm_shared.runtime.config import ServiceSettings
from crm_shared.runtime.links import DEFAULT_LINK_LIFETIME

CONSENT_WORDING_VERSION = "preference-centre-2026-11"
"""The consent wording the preference centre templates show (templates/preferences.html)."""


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_GATEWAY_", extra="ignore")

    # The public entry: it listens on every interface and guards itself with API keys; it
    # holds the service token (CRM_SERVICE_TOKEN) only to present it to the services.
    PUBLIC_ENTRY: ClassVar[bool] = True

    database: str = "crm_gateway"
    api_host: str = "0.0.0.0"
    api_port: int = 8100

    api_processes: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Processes serving the gateway's port (uvicorn's workers), about one a core: "
        "one process is at most one core, and was the reads' limit on two (their metrics are "
        "added up on /metrics; rate limits hold per process)",
    )

    profile_url: str = "http://127.0.0.1:8101"
    interaction_url: str = "http://127.0.0.1:8102"
    broadcast_url: str = "http://127.0.0.1:8103"
    recommendation_url: str = "http://127.0.0.1:8104"
    upstream_timeout_seconds: float = Field(
        default=2.0, gt=0, le=60, description="Deadline of each call to a service"
    )
    upstream_connections: int = Field(
        default=64,
        ge=1,
        le=1000,
        description="Connections open to each service at most (beyond them, calls wait their turn)",
    )
    key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="How long a verified API key is trusted without asking the database: a "
        "revoked key works for at most this long (0: ask every time)",
    )

    rate_per_second: float = Field(
        default=20.0,
        gt=0,
        description="Requests per second each API key may sustain, per gateway process",
    )
    rate_burst: int = Field(
        default=40, ge=1, description="Requests an idle API key may make at once, per process"
    )

    publish_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="How long an ingest waits for Kafka's acks"
    )

    link_max_age_days: float = Field(
        default=DEFAULT_LINK_LIFETIME.days,
        gt=0,
        le=730,
        description="How long a preference-centre or unsubscribe link in a message keeps working",
    )
    consent_wording_version: str = Field(
        default=CONSENT_WORDING_VERSION,
        min_length=1,
        max_length=80,
        description="The version of the consent text the preference centre shows, recorded as "
        "the evidence of every consent given there: change it when the text changes",
    )
