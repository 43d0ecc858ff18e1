"""Settings of the broadcast service (`CRM_BROADCAST_` prefix)."""

from pydantic_settings import SettingsConfigDict

from crm_shared.config import ServiceSettings


class BroadcastSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_BROADCAST_", extra="ignore")

    database: str = "crm_broadcast"
    api_port: int = 8103
    worker_metrics_port: int = 9103
