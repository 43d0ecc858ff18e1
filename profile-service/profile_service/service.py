"""The profile service's composition root: its processes, settings and projection, as the
launcher, the test fixtures and the benchmarks see them."""

from crm_shared.runtime.service import Service, api_process, worker_process
from profile_service.config import ProfileSettings

SERVICE = Service(
    "profile",
    ProfileSettings,
    (worker_process("profile", ProfileSettings), api_process("profile", ProfileSettings)),
    projection="profile_service.worker:PROJECTION",
)
