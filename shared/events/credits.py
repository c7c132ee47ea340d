"""Credit events: grant commands sent to metering, and the balance announcements it publishes."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Self
from uuid import UUID

from pydantic import Field, model_validator

from .envelope import (
    INT64_MAX,
    TEXT_PATTERN,
    Body,
    Event,
    Identifier,
    Int64,
    NonNegativeInt64,
    UtcDatetime,
)

MAX_GRANT_CREDITS = 1_000_000_000_000
"""Above this, a grant or adjustment is refused as absurd."""


class GrantReason(StrEnum):
    PLAN_START = "plan_start"
    RENEWAL_RESET = "renewal_reset"
    UPGRADE_TOP_UP = "upgrade_top_up"
    MANUAL_ADJUSTMENT = "manual_adjustment"

    @property
    def starts_period(self) -> bool:
        return self in (GrantReason.PLAN_START, GrantReason.RENEWAL_RESET)


class CreditGrantRequested(Body):
    period_key: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
    """Idempotency key chosen by the issuer: the same (organisation, period key) applies once."""
    amount: Annotated[int, Field(strict=True, ge=-MAX_GRANT_CREDITS, le=MAX_GRANT_CREDITS)]
    reason: GrantReason
    period_start: UtcDatetime | None = None
    period_end: UtcDatetime | None = None
    """When the new period ends: the next renewal. Required with `plan_start`/`renewal_reset`."""
    plan: Identifier | None = None
    note: Annotated[str, Field(max_length=500, pattern=TEXT_PATTERN)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.reason.starts_period:
            if self.period_start is None or self.period_end is None:
                raise ValueError(f"{self.reason.value} needs period_start and period_end")
            if self.period_end <= self.period_start:
                raise ValueError("period_end must be after period_start")
            if self.amount < 0:
                raise ValueError("the allotment of a new period cannot be negative")
        elif self.reason is GrantReason.UPGRADE_TOP_UP and self.amount <= 0:
            raise ValueError("an upgrade top-up must be positive")
        elif self.reason is GrantReason.MANUAL_ADJUSTMENT and self.amount == 0:
            raise ValueError("a manual adjustment cannot be zero")
        return self


class CreditGrantRequestedV1(Event):
    """Command to metering: grant (or adjust) an organisation's credits. Issued by the
    subscription service, or by an operator through the `billing` command line."""

    type: Literal["credit_grant.requested.v1"]
    data: CreditGrantRequested


class GrantReasonV2(StrEnum):
    """Why credits are granted (or taken back), in version 2 of the grant command."""

    PLAN_START = "plan_start"
    RENEWAL_RESET = "renewal_reset"
    UPGRADE_TOP_UP = "upgrade_top_up"
    MANUAL_ADJUSTMENT = "manual_adjustment"
    PACK_PURCHASE = "pack_purchase"
    """A credit pack the owner bought (Checkout, payment mode), once its payment succeeded."""
    AUTO_RECHARGE = "auto_recharge"
    """A pack charged off-session when the balance crossed the owner's threshold."""
    PROMOTION = "promotion"
    REFUND_CLAWBACK = "refund_clawback"
    """A pack's payment was refunded: take back up to `amount` of what is left of the bucket
    granted under `clawback_of`."""

    @property
    def starts_period(self) -> bool:
        return self in (GrantReasonV2.PLAN_START, GrantReasonV2.RENEWAL_RESET)


MAX_PRIORITY = 100
GrantKey = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]


class CreditGrantV2(Body):
    """Version 2 of a grant command: every positive grant becomes a bucket of credits with its
    own priority and expiry."""

    period_key: GrantKey
    """Idempotency key chosen by the issuer: the same (organisation, period key) applies once."""
    amount: Annotated[int, Field(strict=True, ge=-MAX_GRANT_CREDITS, le=MAX_GRANT_CREDITS)]
    reason: GrantReasonV2
    period_start: UtcDatetime | None = None
    period_end: UtcDatetime | None = None
    plan: Identifier | None = None
    note: Annotated[str, Field(max_length=500, pattern=TEXT_PATTERN)] | None = None
    expires_at: UtcDatetime | None = None
    """When the bucket's unused credits expire (packs, promotions, operator grants); none: never.
    A plan's credits end with their period instead."""
    priority: Annotated[int, Field(strict=True, ge=0, le=MAX_PRIORITY)] | None = None
    """Among buckets expiring at the same instant, the lower number is spent first; none: the
    reason's default."""
    rollover_cap: Annotated[int, Field(strict=True, ge=0, le=MAX_GRANT_CREDITS)] | None = None
    """With a period start: up to this many unused plan credits carry into the new period."""
    clawback_of: GrantKey | None = None
    """With `refund_clawback`: the period key of the grant whose bucket is taken back."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        reason = self.reason
        if reason.starts_period:
            if self.period_start is None or self.period_end is None:
                raise ValueError(f"{reason.value} needs period_start and period_end")
            if self.period_end <= self.period_start:
                raise ValueError("period_end must be after period_start")
            if self.amount < 0:
                raise ValueError("the allotment of a new period cannot be negative")
            if self.expires_at is not None:
                raise ValueError("a plan's credits end with their period, not at expires_at")
        elif self.rollover_cap is not None:
            raise ValueError("rollover_cap goes with a period start")
        if reason is GrantReasonV2.MANUAL_ADJUSTMENT:
            if self.amount == 0:
                raise ValueError("a manual adjustment cannot be zero")
        elif not reason.starts_period and self.amount <= 0:
            raise ValueError(f"{reason.value} must be positive")
        if (reason is GrantReasonV2.REFUND_CLAWBACK) != (self.clawback_of is not None):
            raise ValueError("clawback_of goes with refund_clawback, and only with it")
        return self


class CreditGrantRequestedV2(Event):
    """Command to metering: grant credits as a bucket with a priority and an expiry, or take
    back a refunded pack. Issued by the subscription service, or by an operator."""

    type: Literal["credit_grant.requested.v2"]
    data: CreditGrantV2


class CreditLevel(StrEnum):
    NORMAL = "normal"
    LOW = "low"
    EXHAUSTED = "exhausted"


class CreditBalance(Body):
    balance: Int64
    allotment: NonNegativeInt64
    used: NonNegativeInt64
    """Credits debited since the current period started."""
    percent_left: Annotated[int, Field(ge=0, le=100)]
    level: CreditLevel
    revision: Int64
    """Increases with every change of the wallet; consumers drop a revision older than one seen."""
    period_start: UtcDatetime | None
    renews_at: UtcDatetime | None


class CreditBalanceChangedV1(Event):
    """The organisation's credits after a change (a batch of usage, a grant, an expiry)."""

    type: Literal["credit_balance.changed.v1"]
    data: CreditBalance


class CreditsLowV1(Event):
    """Published once each time the balance crosses into `low`."""

    type: Literal["credit_balance.low.v1"]
    data: CreditBalance


class CreditsExhaustedV1(Event):
    """Published once each time the balance crosses into `exhausted` (at or below zero, R9)."""

    type: Literal["credit_balance.exhausted.v1"]
    data: CreditBalance


class AuthorizationDecision(Body):
    authorization_id: UUID
    member_id: Identifier
    message_id: Identifier
    agent_id: Identifier | None
    decision: Literal["allowed", "denied"]
    reason: Identifier | None
    """Why it was denied: `no_wallet`, `credits_exhausted`, `insufficient_credits`, …"""
    estimate: Annotated[int, Field(gt=0, le=INT64_MAX)]
    held: NonNegativeInt64
    """Credits reserved by the decision: the estimate if allowed, else 0."""
    balance: Int64
    available: Int64
    """Balance minus every active hold, after this decision."""
    expires_at: UtcDatetime | None
    """When an unsettled hold lapses and its credits become available again."""
    renews_at: UtcDatetime | None


class CreditAuthorizationDecidedV1(Event):
    """The chat gateway asked whether a member's message may be sent to an agent."""

    type: Literal["credit_authorization.decided.v1"]
    data: AuthorizationDecision
