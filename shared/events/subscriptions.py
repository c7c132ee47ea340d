"""The subscription service's announcements (`subscriptions.state`, keyed by organisation):
every change of an organisation's subscription, with its whole state. `revision` increases
with every change; a consumer keeps the newest revision per organisation."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from .envelope import INT32_MAX, Body, Event, Identifier, NonNegativeInt64, UtcDatetime


class Plan(StrEnum):
    FREE = "free"
    PRO = "pro"
    MAX = "max"
    ENTERPRISE = "enterprise"


class Cycle(StrEnum):
    MONTHLY = "monthly"
    ANNUAL = "annual"
    """Pro and Max only (R2); credits are still granted month by month (R8)."""


class Standing(StrEnum):
    ACTIVE = "active"
    PAST_DUE = "past_due"
    """A payment failed; Stripe retries it. The plan and its credits continue meanwhile."""


class SubscriptionChange(StrEnum):
    STARTED = "started"
    """A new organisation, on Free."""
    PLAN_CHANGED = "plan_changed"
    """In force now: a checkout completed, an upgrade, an Enterprise plan set by an operator."""
    RENEWED = "renewed"
    """A new credit period began (monthly, also within annual plans)."""
    DOWNGRADE_SCHEDULED = "downgrade_scheduled"
    DOWNGRADE_APPLIED = "downgrade_applied"
    CANCEL_SCHEDULED = "cancel_scheduled"
    REACTIVATED = "reactivated"
    FELL_BACK_TO_FREE = "fell_back_to_free"
    """The paid period ended after a cancellation, or Stripe deleted the subscription."""
    PAYMENT_FAILED = "payment_failed"
    PAYMENT_RECOVERED = "payment_recovered"
    BILLING_UPDATED = "billing_updated"
    """Stripe reported a new paid period or other billing details."""


class SubscriptionState(Body):
    plan: Plan
    cycle: Cycle | None
    """None on Free and on Enterprise without a Stripe subscription."""
    standing: Standing
    monthly_credits: NonNegativeInt64
    seat_limit: Annotated[int, Field(ge=1, le=INT32_MAX)] | None
    """None: unlimited seats."""
    features: Annotated[tuple[Identifier, ...], Field(max_length=100)]
    credit_period_start: UtcDatetime
    credit_period_end: UtcDatetime
    """When credits renew next (R8)."""
    paid_period_end: UtcDatetime | None
    """End of the period Stripe was paid for (a month or a year); None on Free."""
    cancel_at_period_end: bool
    """Cancelled: in force until `paid_period_end`, then Free (R12)."""
    pending_plan: Plan | None
    pending_cycle: Cycle | None
    """A downgrade that takes effect at `paid_period_end` (R5)."""
    stripe_subscription_id: Identifier | None
    revision: NonNegativeInt64
    change: SubscriptionChange


class SubscriptionChangedV1(Event):
    type: Literal["subscription.changed.v1"]
    data: SubscriptionState
