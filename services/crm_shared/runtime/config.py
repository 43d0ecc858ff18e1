"""Typed, prefixed configuration: local defaults, overridden by environment variables."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DEDUP_WINDOW_DAYS = 7.0
"""How long applied event ids are remembered: longer than any producer retry, outbox relay
repeat or re-drive of dead letters after a fix is expected to take (see docs/decisions.md)."""
DEFAULT_BATCH_SIZE = 2000
"""Records a worker folds in one batch at most. A worker catching up fills every batch, and what
the largest batch allocated stays with the process (Python's heap keeps partly used arenas): after
bursts of 60,000 records the interaction worker kept 149 MiB with 5,000, 100 with 2,000, against
80 at a steady rate. Batches of 2,000 also cost less CPU a record than 5,000 (docs/performance.md,
"Batches of 2,000 records")."""
SERVICE_TOKEN_MIN_LENGTH = 16
LINK_SECRET_MIN_LENGTH = 16


class PlatformSettings(BaseSettings):
    """Where the shared infrastructure is (`CRM_` prefix), as exported by deploy/local/infra.sh."""

    # It holds a secret: validation errors must not echo what was given.
    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore", hide_input_in_errors=True)

    kafka_bootstrap: str = "127.0.0.1:59092"
    pg_dsn_base: str = "postgresql://crm@127.0.0.1:55432"
    log_level: str = "INFO"
    max_future_skew_seconds: float = Field(
        default=300, ge=0, description="Events dated later than now + this are refused"
    )
    service_token: SecretStr | None = Field(
        default=None,
        description="The shared secret the services' APIs require (Authorization: Bearer) and "
        "the gateway sends; no default, like every secret",
    )

    @field_validator("service_token")
    @classmethod
    def _token_fits_a_header(cls, token: SecretStr | None) -> SecretStr | None:
        """A short token is guessable; anything but printable ASCII cannot travel in a header."""
        if token is None:
            return None
        value = token.get_secret_value()
        if len(value) < SERVICE_TOKEN_MIN_LENGTH or not all("!" <= c <= "~" for c in value):
            raise ValueError(
                f"CRM_SERVICE_TOKEN must be at least {SERVICE_TOKEN_MIN_LENGTH} printable ASCII "
                "characters without spaces (make one with `openssl rand -hex 32`)"
            )
        return token

    check_responses: bool = Field(
        default=False,
        description="APIs check their DirectRoutes' answers against the response models, "
        "which costs a parse of each answer: the test suite sets it",
    )

    link_secret: SecretStr | None = Field(
        default=None,
        description="The secret that signs the links in messages (preference centre, one-click "
        "unsubscribe): the broadcast service mints them, the gateway reads them; no default",
    )

    public_url: str = Field(
        default="http://127.0.0.1:8100",
        description="The gateway's address as customers reach it: the base of the links in "
        "messages",
    )

    @field_validator("link_secret")
    @classmethod
    def _secret_long_enough(cls, secret: SecretStr | None) -> SecretStr | None:
        """Anyone who guesses the secret can change any customer's preferences. Empty is unset
        (compose passes `${CRM_LINK_SECRET:-}`): then no link can be read."""
        if secret is None or not secret.get_secret_value():
            return None
        if len(secret.get_secret_value()) < LINK_SECRET_MIN_LENGTH:
            raise ValueError(
                f"CRM_LINK_SECRET must be at least {LINK_SECRET_MIN_LENGTH} characters "
                "(make one with `openssl rand -hex 32`)"
            )
        return secret


class ServiceSettings(BaseSettings):
    """One service's settings; each service subclasses it with its own prefix and ports."""

    model_config = SettingsConfigDict(env_prefix="CRM_SERVICE_", extra="ignore")

    # Every service API is internal: reached by the gateway only. The gateway says otherwise.
    PUBLIC_ENTRY: ClassVar[bool] = False

    platform: PlatformSettings = Field(default_factory=PlatformSettings)
    database: str = "crm"
    database_url: str | None = Field(
        default=None, description="Full DSN; defaults to the platform's server and `database`"
    )
    api_host: str = Field(
        default="127.0.0.1",
        description="Where the API listens; anything but loopback exposes an internal API, "
        "which then needs CRM_SERVICE_TOKEN",
    )
    api_port: int = 8000
    worker_metrics_port: int = 9000
    batch_size: int = Field(
        default=DEFAULT_BATCH_SIZE,
        ge=1,
        le=50_000,
        description="Most records one fetch returns, and most gathered while a batch commits",
    )
    pool_size: int = Field(default=4, ge=1, le=64)
    halt_after_failures: int = Field(
        default=10, ge=1, description="Events failing in a row that stop consumption"
    )
    halt_retry_seconds: float = Field(
        default=30, gt=0, le=3600, description="How often a halted worker tries again"
    )
    dedup_window_days: float = Field(
        default=DEFAULT_DEDUP_WINDOW_DAYS,
        gt=0,
        description="Applied event ids older than this (by applied_at) are pruned",
    )
    prune_interval_seconds: float = Field(default=600, gt=0, le=86_400)

    @property
    def dedup_window(self) -> timedelta:
        return timedelta(days=self.dedup_window_days)

    @property
    def dsn(self) -> str:
        return self.database_url or f"{self.platform.pg_dsn_base}/{self.database}"
