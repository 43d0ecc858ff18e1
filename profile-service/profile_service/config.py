"""Settings of the profile service (`CRM_PROFILE_` prefix)."""

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from crm_shared.runtime.config import ServiceSettings


class ProfileSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_PROFILE_", extra="ignore")

    database: str = "crm_profile"
    api_port: int = 8101
    worker_metrics_port: int = 9101


MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
"""The service's own SQL migrations, applied in name order by the worker and the API."""
