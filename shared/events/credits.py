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
