"""Settings of the recommendation service (`CRM_RECOMMENDATION_` prefix)."""

from pydantic_settings import SettingsConfigDict

from crm_shared.config import ServiceSettings


class RecommendationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_RECOMMENDATION_", extra="ignore")

    database: str = "crm_recommendation"
    api_port: int = 8104
    worker_metrics_port: int = 9104
