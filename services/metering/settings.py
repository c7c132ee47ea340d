"""Metering settings: `METERING_*` variables, plus the shared ones (see `shared.settings`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.events import MAX_CREDITS_PER_MESSAGE
from shared.settings import DEV_API_TOKEN, ServiceSettings

from .domain import pricing

__all__ = ["DEV_API_TOKEN", "MeteringSettings"]

Estimate = Annotated[int, Field(ge=1, le=MAX_CREDITS_PER_MESSAGE)]


class MeteringSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METERING_", extra="ignore", frozen=True)

    db_schema: str = "metering"
    db_generic_plans: bool = True
    """Authorization's statements are planned once per connection: re-planning them at every
    decision cost more than running them (`make bench`, authorization)."""
    http_port: int = Field(8081, ge=0, le=65535)
    consumer_group: str = Field("metering", min_length=1, max_length=100)
    low_credit_percent: int = Field(20, ge=1, le=99)
    batch_max_records: int = Field(10_000, ge=1, le=100_000)
    write_lanes: int = Field(2, ge=1, le=16)
    """Usage batches written concurrently, each on its own connection (see shared.consumer)."""
    max_grant_lead_days: int = Field(7, ge=0, le=366)
    """A period-starting grant whose period starts further ahead than this is refused."""

    rate_card: Path = pricing.DEFAULT
    """The rate card (JSON, `catalogue/rate_card.json`): checked at start-up."""
    default_estimate: Estimate = 10
    """Credits held for a message when neither the request nor `agent_estimates` says more."""
    agent_estimates: dict[str, Estimate] = Field(default_factory=dict)
    """Per-agent estimates, JSON: {"agent_research": 120}."""
    hold_ttl_seconds: int = Field(300, ge=1, le=86_400)
    """An unsettled hold lapses after this; it must exceed the longest agent run."""
    hold_sweep_seconds: float = Field(1.0, gt=0, le=60)
    bucket_sweep_seconds: float = Field(1.0, gt=0, le=3_600)
    """How often buckets past their expiry are swept (their credits are not spent meanwhile)."""
    ledger_check_seconds: float = Field(3_600.0, ge=0, le=7 * 86_400)
    """Check every wallet against its ledger this often (0: never; the first one interval
    after start). `billing reconcile` runs one at any time."""
    authorization_lanes: int = Field(2, ge=1, le=64)
    """Decision cycles run concurrently; an organisation always uses the same lane."""
    max_waiting_authorizations: int = Field(2_000, ge=1, le=1_000_000)
    """Requests waiting for a decision cycle, across lanes; beyond it, 503 with Retry-After."""

    def estimate_for(
        self, agent_id: str | None, requested: int | None, for_model: int | None = None
    ) -> int:
        """The request's estimate, else the rate card's for its model, else the agent's, else
        the default."""
        if requested is not None:
            return requested
        if for_model is not None:
            return for_model
        if agent_id is not None and agent_id in self.agent_estimates:
            return self.agent_estimates[agent_id]
        return self.default_estimate
