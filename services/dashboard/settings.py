"""Dashboard settings: `DASHBOARD_*` variables, plus the shared ones."""

from __future__ import annotations

from typing import Annotated

from pydantic import AliasChoices, AnyHttpUrl, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import DEV_API_TOKEN, LOOPBACK_HOSTS, ServiceSettings


class DashboardSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DASHBOARD_", extra="ignore", frozen=True)

    db_schema: str = "dashboard"
    http_port: int = Field(8085, ge=0, le=65535)
    consumer_group: str = Field("dashboard", min_length=1, max_length=100)
    identity_from_query: bool = False
    """Development only (`make run`, loopback): without a signed identity from the front
    proxy, sign one (development key) for the `organisation` and `member` query parameters."""
    subscriptions_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8082")
    subscriptions_token: SecretStr = SecretStr(DEV_API_TOKEN)
    """The page's credential at the subscription service (scope `front`)."""
    allowed_origins: Annotated[
        tuple[Annotated[str, Field(max_length=300, pattern=r"^https?://[^/\s]+$")], ...],
        Field(max_length=20),
    ] = ()
    """Origins other than the page's own (`scheme://host[:port]` as the browser sees it behind
    the front proxy) from which the owner's actions may be posted."""
    max_streams_per_member: int = Field(5, ge=1, le=1_000)
    """Live Billing pages one member may keep open at once (per instance); past it, 429."""
    max_streams_per_organisation: int = Field(200, ge=1, le=100_000)
    """Live Billing pages open at once for one organisation (per instance); past it, 429."""
    metering_url: AnyHttpUrl = Field(
        AnyHttpUrl("http://127.0.0.1:8081"),
        validation_alias=AliasChoices("DASHBOARD_METERING_URL", "METERING_URL"),
    )
    """Metering's API: the usage of a period as its ledger holds it; `make run` sets
    `METERING_URL`."""
    metering_token: SecretStr = SecretStr(DEV_API_TOKEN)
    """The page's credential at metering (scope `reader`)."""
    metering_front_token: SecretStr = SecretStr(DEV_API_TOKEN)
    """The page's credential at metering for the acting member's own routes (budgets; scope
    `front`), sent with the member's signed identity."""
    gateway_url: AnyHttpUrl = Field(
        AnyHttpUrl("http://127.0.0.1:8083"),
        validation_alias=AliasChoices("DASHBOARD_GATEWAY_URL", "STRIPE_GATEWAY_URL"),
    )
    """The Stripe gateway's API: the latest invoices; `make run` sets `STRIPE_GATEWAY_URL`."""
    gateway_token: SecretStr = SecretStr(DEV_API_TOKEN)
    """The page's credential at the gateway (scope `reader`)."""

    @model_validator(mode="after")
    def _query_identity_only_on_loopback(self) -> DashboardSettings:
        if self.identity_from_query and self.http_host not in LOOPBACK_HOSTS:
            raise ValueError("identity_from_query is for development, on a loopback address")
        return self
