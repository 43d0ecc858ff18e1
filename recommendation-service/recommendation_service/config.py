"""Settings of the recommendation service (`CRM_RECOMMENDATION_` prefix)."""

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from crm_shared.runtime.config import ServiceSettings


class RecommendationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_RECOMMENDATION_", extra="ignore")

    database: str = "crm_recommendation"
    api_port: int = 8104
    worker_metrics_port: int = 9104


MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
"""The service's own SQL migrations, applied in name order by the worker and the API."""
