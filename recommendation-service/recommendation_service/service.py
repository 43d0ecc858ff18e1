"""The recommendation service's composition root: its processes, settings and projection, as the
launcher, the test fixtures and the benchmarks see them."""

from crm_shared.runtime.service import Service, api_process, jobs_process, worker_process
from recommendation_service.config import RecommendationSettings

SERVICE = Service(
    "recommendation",
    RecommendationSettings,
    (
        worker_process("recommendation", RecommendationSettings),
        api_process("recommendation", RecommendationSettings),
        jobs_process("recommendation", RecommendationSettings),
    ),
    projection="recommendation_service.worker:PROJECTION",
)
