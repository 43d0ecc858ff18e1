"""Settings of the interaction service (`CRM_INTERACTION_` prefix)."""

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from crm_shared.runtime.config import ServiceSettings


class InteractionSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_INTERACTION_", extra="ignore")

    database: str = "crm_interaction"
    api_port: int = 8102
    worker_metrics_port: int = 9102


MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
"""The service's own SQL migrations, applied in name order by the worker and the API."""
