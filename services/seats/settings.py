"""Seat settings: `SEATS_*` variables, plus the shared ones."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class SeatSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SEATS_", extra="ignore", frozen=True)

    db_schema: str = "seats"
    http_port: int = Field(8084, ge=0, le=65535)
    consumer_group: str = Field("seats", min_length=1, max_length=100)
    default_seat_limit: int | None = Field(3, ge=1)
    """The limit until the subscription service has reported the organisation's plan: Free's
    (every organisation starts on Free). Empty: unlimited."""
    quantity_coalesce_seconds: float = Field(2.0, ge=0, le=3600)
    """How long after a seat change the quantity goes to Stripe; changes meanwhile join it."""
    quantity_poll_seconds: float = Field(0.5, gt=0, le=3600)
    quantity_batch: int = Field(500, ge=1, le=10_000)
