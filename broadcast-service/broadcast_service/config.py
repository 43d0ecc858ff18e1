"""Settings of the broadcast service (`CRM_BROADCAST_` prefix; the links in messages are signed
with the platform's `CRM_LINK_SECRET` and point at `CRM_PUBLIC_URL`)."""

from datetime import timedelta
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from broadcast_service.decision import ContactPolicy
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

    def contact_policy(self) -> ContactPolicy:
        pairs = (pair.split(":") for pair in self.double_opt_in.split(",") if pair)
        return ContactPolicy(
            double_opt_in=frozenset((purpose, channel) for purpose, channel in pairs),
            detractor_hold=timedelta(days=self.detractor_hold_days),
        )


MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
"""The service's own SQL migrations, applied in name order by the worker and the API."""
