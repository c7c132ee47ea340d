"""Subscription settings: `SUBSCRIPTIONS_*` variables, plus the shared ones."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, AnyHttpUrl, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import DEV_API_TOKEN, ServiceSettings

from .domain.catalogue import DEFAULT

APP = "http://127.0.0.1:8085"
"""Where the web app's billing page is under `make run` (the dashboard service)."""


class SubscriptionSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SUBSCRIPTIONS_", extra="ignore", frozen=True)

    db_schema: str = "subscriptions"
    http_port: int = Field(8082, ge=0, le=65535)
    consumer_group: str = Field("subscriptions", min_length=1, max_length=100)
    catalogue: Path = DEFAULT
    """The plan catalogue (a versioned JSON file)."""
    gateway_url: AnyHttpUrl = Field(
        AnyHttpUrl("http://127.0.0.1:8083"),
        validation_alias=AliasChoices("SUBSCRIPTIONS_GATEWAY_URL", "STRIPE_GATEWAY_URL"),
    )
    """The Stripe gateway's HTTP API (Checkout and Billing Portal sessions, the subscriptions
    it holds); `make run` sets `STRIPE_GATEWAY_URL`."""
    gateway_token: SecretStr = SecretStr(DEV_API_TOKEN)
    """This service's credential at the gateway (scope `service`)."""
    checkout_success_url: AnyHttpUrl = AnyHttpUrl(f"{APP}/billing?checkout=success")
    checkout_cancel_url: AnyHttpUrl = AnyHttpUrl(f"{APP}/billing?checkout=cancelled")
    portal_return_url: AnyHttpUrl = AnyHttpUrl(f"{APP}/billing?portal=returned")
    pack_success_url: AnyHttpUrl = AnyHttpUrl(f"{APP}/billing?outcome=pack_paid")
    """Where Stripe's Checkout sends the owner after paying for a credit pack."""
    renewal_poll_seconds: float = Field(1.0, gt=0, le=3600)
    renewal_batch: int = Field(1000, ge=1, le=100_000)
    """Subscriptions renewed per transaction."""
    recharge_retry_seconds: float = Field(3_600.0, ge=0, le=7 * 86_400)
    """After a failed auto-recharge, the next charge waits at least this long (on the clock)."""
    reconcile_seconds: float = Field(3_600.0, ge=0, le=7 * 86_400)
    """Compare every paid organisation with what the gateway holds of Stripe this often (0:
    never; the first one interval after start). `billing reconcile` runs one at any time."""
    reconcile_grace_seconds: float = Field(60.0, ge=0, le=86_400)
    """An organisation changed this recently is left to the next reconciliation (its
    command may still be on its way to Stripe)."""
