"""Metering settings: `METERING_*` variables, plus the shared ones (see `shared.settings`)."""

from __future__ import annotations

import hmac
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from shared.events import MAX_CREDITS_PER_MESSAGE
from shared.settings import CommonSettings, validate_schema_name

DEV_API_TOKEN = "dev-token"
"""The bearer token `make run` and the `billing` command use. Set METERING_API_TOKENS elsewhere."""

Estimate = Annotated[int, Field(ge=1, le=MAX_CREDITS_PER_MESSAGE)]


class MeteringSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="METERING_", extra="ignore", frozen=True)

    db_schema: str = "metering"
    db_pool_size: int = Field(10, ge=2, le=200)
    migrate_on_start: bool = True
    http_host: str = "127.0.0.1"
    http_port: int = Field(8081, ge=0, le=65535)
    consumer_group: str = "metering"
    low_credit_percent: int = Field(20, ge=1, le=99)
    max_event_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024)
    batch_max_records: int = Field(10_000, ge=1, le=100_000)
    batch_timeout_ms: int = Field(10, ge=1, le=5_000)
    write_lanes: int = Field(2, ge=1, le=16)
    """Usage batches written concurrently, each on its own connection (see shared.consumer)."""
    outbox_batch_size: int = Field(1000, ge=1, le=50_000)
    run_consumers: bool = True
    """False runs the HTTP API only (authorizations, credits), e.g. scaled apart from consumers."""

    api_tokens: SecretStr = SecretStr(DEV_API_TOKEN)
    """Bearer tokens accepted from internal callers, comma-separated."""
    max_request_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)
    default_estimate: Estimate = 10
    """Credits held for a message when neither the request nor `agent_estimates` says more."""
    agent_estimates: dict[str, Estimate] = Field(default_factory=dict)
    """Per-agent estimates, JSON: {"agent_research": 120}."""
    hold_ttl_seconds: int = Field(300, ge=1, le=86_400)
    """An unsettled hold lapses after this; it must exceed the longest agent run."""
    hold_sweep_seconds: float = Field(1.0, gt=0, le=60)
    authorization_lanes: int = Field(2, ge=1, le=64)
    """Decision cycles run concurrently; an organisation always uses the same lane."""

    @field_validator("db_schema")
    @classmethod
    def _schema_name(cls, value: str) -> str:
        return validate_schema_name(value)

    @field_validator("api_tokens")
    @classmethod
    def _tokens_present(cls, value: SecretStr) -> SecretStr:
        tokens = [t.strip() for t in value.get_secret_value().split(",") if t.strip()]
        if not tokens or any(len(t) < 8 for t in tokens):
            raise ValueError("give at least one API token, each of at least 8 characters")
        return value

    def token_accepted(self, presented: str) -> bool:
        """Constant-time comparison against every configured token."""
        given = presented.encode()
        return any(
            hmac.compare_digest(given, token.strip().encode())
            for token in self.api_tokens.get_secret_value().split(",")
            if token.strip()
        )

    def estimate_for(self, agent_id: str | None, requested: int | None) -> int:
        if requested is not None:
            return requested
        if agent_id is not None and agent_id in self.agent_estimates:
            return self.agent_estimates[agent_id]
        return self.default_estimate

    def group_id(self, consumer: str) -> str:
        """One consumer group per subscription, so that subscriptions never rebalance each other."""
        return f"{self.topic_prefix}{self.consumer_group}.{consumer}"
