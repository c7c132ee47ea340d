"""Stripe gateway settings: `STRIPE_GATEWAY_*` variables, plus the shared ones.

The defaults talk to devstripe (`services.stripe_gateway.devstripe`: the part of Stripe this
project uses, in memory, on a clock), which `make run` starts on 127.0.0.1:8420. With a real
Stripe account set `API_BASE=https://api.stripe.com`, `API_KEY` and `WEBHOOK_SECRET`; the
development key and secret are refused for any API base other than loopback."""

from __future__ import annotations

from typing import Self
from urllib.parse import urlsplit

from pydantic import AnyHttpUrl, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import LOOPBACK_HOSTS, ServiceSettings

DEV_API_KEY = "sk_test_devstripe"
DEV_WEBHOOK_SECRET = "whsec_devstripe"
DEV_API_BASE = "http://127.0.0.1:8420"


class StripeGatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="STRIPE_GATEWAY_", extra="ignore", frozen=True)

    db_schema: str = "stripe_gateway"
    http_port: int = Field(8083, ge=0, le=65535)
    consumer_group: str = Field("stripe-gateway", min_length=1, max_length=100)
    max_request_bytes: int = Field(512 * 1024, ge=1024, le=1024 * 1024)
    """Stripe's webhook bodies (an invoice with many lines) are larger than internal requests."""

    api_base: AnyHttpUrl = AnyHttpUrl(DEV_API_BASE)
    """Where the Stripe API is: https://api.stripe.com in production."""
    api_key: SecretStr = SecretStr(DEV_API_KEY)
    webhook_secret: SecretStr = SecretStr(DEV_WEBHOOK_SECRET)
    """The signing secret of the webhook endpoint (`whsec_…`)."""
    webhook_tolerance_seconds: int = Field(300, ge=1, le=3_600)
    """A webhook whose signed timestamp is older than this, or further ahead, is refused
    (replay protection)."""
    webhook_rejections_per_minute: int = Field(10, ge=0, le=10_000)
    """Refused webhook requests (unauthenticated: anyone can send them) recorded for
    inspection, at most this many a minute; the others are only counted."""
    webhook_rejections_kept_days: int = Field(7, ge=1, le=365)
    """Recorded refusals are deleted after this many days."""
    api_timeout_seconds: float = Field(20.0, gt=0, le=120)
    api_attempts: int = Field(5, ge=1, le=20)
    """Attempts of one Stripe request answered 429, 5xx or not at all, with back-off."""
    api_requests_per_second: float = Field(20.0, ge=1, le=1_000)
    """Requests to Stripe started per second at most (Stripe: 100/s live, 25/s test mode;
    more only against devstripe)."""
    inbox_max_attempts: int = Field(8, ge=1, le=100)
    """Processing attempts of one webhook event before it is parked."""
    inbox_retry_seconds: float = Field(1.0, gt=0, le=3_600)
    """First delay before a failed event is processed again; it doubles, up to 10 minutes."""
    inbox_batch_size: int = Field(100, ge=1, le=10_000)
    """Webhook events claimed per round (the objects they name are fetched once each)."""
    inbox_claim_seconds: float = Field(120.0, ge=5, le=3_600)
    """How long a processor holds the events it claimed before another may take them."""
    process_inbox: bool = True
    """False only receives webhooks (instances scaled apart from the processors)."""
    command_claim_seconds: float = Field(60.0, ge=5, le=3_600)
    """How long a command's claim holds before another caller may take it over."""
    quantity_updates_per_hour: int = Field(180, ge=1, le=200)
    """Seat quantity updates sent per subscription in any hour (Stripe allows about 200)."""
    quantity_burst: int = Field(5, ge=1, le=200)
    """Updates sent without spacing; past them, the hour's remaining budget is spread."""
    quantity_poll_seconds: float = Field(1.0, gt=0, le=3_600)
    reconcile_seconds: float = Field(3_600.0, ge=0, le=7 * 86_400)
    """A sweep comparing Stripe with what the gateway holds, every so often (0: never; the
    first one interval after start). `billing reconcile` runs one at any time."""

    @model_validator(mode="after")
    def _development_secrets_on_loopback_only(self) -> Self:
        host = urlsplit(str(self.api_base)).hostname or ""
        development = (
            self.api_key.get_secret_value() == DEV_API_KEY
            or self.webhook_secret.get_secret_value() == DEV_WEBHOOK_SECRET
        )
        if development and host not in LOOPBACK_HOSTS:
            raise ValueError(
                "the development Stripe key and webhook secret only work with a local API base: "
                "set STRIPE_GATEWAY_API_KEY and STRIPE_GATEWAY_WEBHOOK_SECRET"
            )
        return self

    @property
    def api_base_url(self) -> str:
        return str(self.api_base).rstrip("/")
