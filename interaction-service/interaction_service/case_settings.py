"""Settings of case handling (`CRM_CASES_` prefix): SLA targets, handling cost, repeat window.

The SLA targets and the repeat window are part of the projection's definition: a case's
deadlines are set when it is folded, so a change applies to new cases and, after a rebuild, to
all. The cost rates are read by the API, so a change shows at once.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from crm_shared.contracts.events import CasePriority


class CaseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_CASES_", extra="ignore")

    first_response_hours: dict[CasePriority, float] = Field(
        default={"urgent": 1, "high": 4, "normal": 8, "low": 24},
        description="Hours from opening to the first assignment, per priority",
    )
    resolution_hours: dict[CasePriority, float] = Field(
        default={"urgent": 4, "high": 24, "normal": 72, "low": 168},
        description="Hours from opening to resolution, per priority",
    )
    cost_per_hour: dict[str, Decimal] = Field(
        default_factory=dict, description="Cost of an hour of handling, per department code"
    )
    default_cost_per_hour: Decimal = Field(
        default=Decimal(30), ge=0, description="For departments without a rate of their own"
    )
    repeat_window_days: float = Field(
        default=30,
        gt=0,
        description="A case on the same topic as one the customer opened within this many "
        "days before is a repeat contact",
    )

    @property
    def repeat_window(self) -> timedelta:
        return timedelta(days=self.repeat_window_days)
