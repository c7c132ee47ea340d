"""Typed, versioned events shared by every service. See `envelope` for the rules."""

from .credits import (
    AuthorizationDecision,
    CreditAuthorizationDecidedV1,
    CreditBalance,
    CreditBalanceChangedV1,
    CreditGrantRequested,
    CreditGrantRequestedV1,
    CreditGrantRequestedV2,
    CreditGrantV2,
    CreditLevel,
    CreditsExhaustedV1,
    CreditsLowV1,
    GrantReason,
    GrantReasonV2,
)
from .envelope import Body, Event, OrganisationId, UtcDatetime
from .usage import (
    MAX_CREDITS_PER_MESSAGE,
    AgentMessageMetered,
    AgentMessageProcessed,
    AgentMessageProcessedV1,
    AgentMessageProcessedV2,
)

__all__ = [
    "MAX_CREDITS_PER_MESSAGE",
    "AgentMessageMetered",
    "AgentMessageProcessed",
    "AgentMessageProcessedV1",
    "AgentMessageProcessedV2",
    "AuthorizationDecision",
    "Body",
    "CreditAuthorizationDecidedV1",
    "CreditBalance",
    "CreditBalanceChangedV1",
    "CreditGrantRequested",
    "CreditGrantRequestedV1",
    "CreditGrantRequestedV2",
    "CreditGrantV2",
    "CreditLevel",
    "CreditsExhaustedV1",
    "CreditsLowV1",
    "Event",
    "GrantReason",
    "GrantReasonV2",
    "OrganisationId",
    "UtcDatetime",
]
