"""Typed, versioned events shared by every service. See `envelope` for the rules."""

from .credits import (
    CreditBalance,
    CreditBalanceChangedV1,
    CreditGrantRequested,
    CreditGrantRequestedV1,
    CreditLevel,
    CreditsExhaustedV1,
    CreditsLowV1,
    GrantReason,
)
from .envelope import Body, Event, OrganisationId, UtcDatetime
from .usage import MAX_CREDITS_PER_MESSAGE, AgentMessageProcessed, AgentMessageProcessedV1

__all__ = [
    "MAX_CREDITS_PER_MESSAGE",
    "AgentMessageProcessed",
    "AgentMessageProcessedV1",
    "Body",
    "CreditBalance",
    "CreditBalanceChangedV1",
    "CreditGrantRequested",
    "CreditGrantRequestedV1",
    "CreditLevel",
    "CreditsExhaustedV1",
    "CreditsLowV1",
    "Event",
    "GrantReason",
    "OrganisationId",
    "UtcDatetime",
]
