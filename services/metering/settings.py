"""Metering settings: `METERING_*` variables, plus the shared ones (see `shared.settings`)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings, validate_schema_name


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

    @field_validator("db_schema")
    @classmethod
    def _schema_name(cls, value: str) -> str:
        return validate_schema_name(value)

    def group_id(self, consumer: str) -> str:
        """One consumer group per subscription, so that subscriptions never rebalance each other."""
        return f"{self.topic_prefix}{self.consumer_group}.{consumer}"
