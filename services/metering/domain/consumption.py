"""One agent message's consumption as metering debits it: its credits, and, when the agent
runtime sent raw usage, how the rate card priced it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from .pricing import Priced, RawUsage


@dataclass(frozen=True, slots=True)
class Consumption:
    event_id: UUID
    organisation_id: str
    member_id: str
    agent_id: str
    conversation_id: str
    message_id: str
    occurred_at: datetime
    credits: int
    usage: RawUsage | None = None
    priced: Priced | None = None
    """The rate card's version and line that priced `usage` (None: the event carried credits)."""

    @property
    def effect(self) -> tuple[str, int, str]:
        """What a redelivery under the same event id must repeat."""
        return self.organisation_id, self.credits, self.message_id
