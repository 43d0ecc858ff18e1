"""Settings of the broadcast service (`CRM_BROADCAST_` prefix; links: `CRM_LINK_SECRET`,
`CRM_PUBLIC_URL`)."""

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from crm_shared.runtime.config import ServiceSettings


class BroadcastSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_BROADCAST_", extra="ignore")

    database: str = "crm_broadcast"
    api_port: int = 8103
    worker_metrics_port: int = 9103
    # Platform-wide names (no service prefix): the gateway reads the links these sign.
    link_secret: SecretStr | None = Field(
        default=None,
        min_length=16,
        validation_alias=AliasChoices("CRM_LINK_SECRET", "link_secret"),
        description="Signs the preference-centre and unsubscribe links in messages; no default",
    )
    public_url: str = Field(
        default="http://127.0.0.1:8100",
        validation_alias=AliasChoices("CRM_PUBLIC_URL", "public_url"),
        description="The gateway's address as customers reach it: the base of those links",
    )
    plan_batch_size: int = Field(
        default=10_000, ge=1, le=100_000, description="Recipients decided per set of queries"
    )


MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
"""The service's own SQL migrations, applied in name order by the worker and the API."""
