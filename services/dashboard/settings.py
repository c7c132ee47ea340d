"""Dashboard settings: `DASHBOARD_*` variables, plus the shared ones."""

from __future__ import annotations

from pydantic import AnyHttpUrl, Field, SecretStr, model_validator
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
    recent_debits: int = Field(20, ge=1, le=500)
    chart_days: int = Field(31, ge=1, le=366)

    @model_validator(mode="after")
    def _query_identity_only_on_loopback(self) -> DashboardSettings:
        if self.identity_from_query and self.http_host not in LOOPBACK_HOSTS:
            raise ValueError("identity_from_query is for development, on a loopback address")
        return self
