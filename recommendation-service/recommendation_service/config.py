"""Settings of the recommendation service (`CRM_RECOMMENDATION_` prefix)."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from crm_shared.runtime.config import ServiceSettings
from recommendation_service.consent import PersonalisationDefault
from recommendation_service.trending import DEFAULT_HALF_LIFE_DAYS


class RecommendationSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_RECOMMENDATION_", extra="ignore")

    database: str = "crm_recommendation"
    api_port: int = 8104
    worker_metrics_port: int = 9104
    jobs_metrics_port: int = 9114
    """The jobs process's (`recommendation_service.jobs`): similar products, training, picks."""
    personalisation_default: PersonalisationDefault = PersonalisationDefault.ALLOWED
    """For customers who never decided on personalisation: allowed (the service's behaviour before
    it read consents, and what legitimate interest covers in most shops) or refused (where the
    law asks for consent first). A change applies to lists as they are next computed."""
    trending_half_life_days: float = Field(default=DEFAULT_HALF_LIFE_DAYS, ge=1, le=3650)
    """How fast a purchase's weight in trending halves, in days of event time. It is folded into
    the stored scores: a change applies to purchases folded after it (rebuild to apply it to
    all). At least a day: the exact sums grow by about 16 digits a year at 7 days, 110 at 1."""


MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
"""The service's own SQL migrations, applied in name order by the worker, the jobs process and
the API."""
