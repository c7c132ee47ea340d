"""Usage events: one per agent message processed, published by the agent runtime (R6)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .envelope import Body, Event, Identifier

MAX_CREDITS_PER_MESSAGE = 1_000_000
"""Above this, a usage event is refused as absurd (one message; far beyond any real agent run)."""

Credits = Annotated[int, Field(strict=True, gt=0, le=MAX_CREDITS_PER_MESSAGE)]


class AgentMessageProcessed(Body):
    member_id: Identifier
    agent_id: Identifier
    conversation_id: Identifier
    message_id: Identifier
    credits: Credits
    """Credits the agent consumed processing this message; a positive integer."""


class AgentMessageProcessedV1(Event):
    """An agent processed one member message and consumed `data.credits` credits."""

    type: Literal["agent_message.processed.v1"]
    data: AgentMessageProcessed


MAX_TOKENS_PER_MESSAGE = 1_000_000_000
MAX_TOOL_CALLS_PER_MESSAGE = 100_000

Tokens = Annotated[int, Field(strict=True, ge=0, le=MAX_TOKENS_PER_MESSAGE)]
ModelName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._:-]*$")]


class AgentMessageMetered(Body):
    """Raw usage of one agent message: metering prices it with the rate card in force at
    `occurred_at`."""

    member_id: Identifier
    agent_id: Identifier
    conversation_id: Identifier
    message_id: Identifier
    model: ModelName
    input_tokens: Tokens
    output_tokens: Tokens
    tool_calls: Annotated[int, Field(strict=True, ge=0, le=MAX_TOOL_CALLS_PER_MESSAGE)] = 0


class AgentMessageProcessedV2(Event):
    """An agent processed one member message; metering prices what it used (the rate card)."""

    type: Literal["agent_message.processed.v2"]
    data: AgentMessageMetered
