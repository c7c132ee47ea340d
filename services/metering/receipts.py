"""Receipts and the usage drill-down, read from the ledger itself: for one message, what was
reserved, what was settled (and priced how), which buckets paid and what was given back; and
usage by day, then agent, then conversation, then message, every level adding up to the
debits of the ledger."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg


@dataclass(frozen=True, slots=True)
class Receipt:
    reservation: dict[str, Any] | None
    """The authorization: decision, reason, estimate, status, when decided, expired or closed."""
    debit: dict[str, Any] | None
    """The ledger's debit: credits, when, and the rate card version and usage it priced."""
    buckets: list[dict[str, Any]]
    """What the debit took from each bucket: bucket id, source, credits."""

    @property
    def released(self) -> int:
        """Credits held and given back without being spent: all of a released or expired
        hold's; a settled one's estimate less what was debited, if the debit was smaller."""
        if self.reservation is None or self.reservation["decision"] != "allowed":
            return 0
        status, estimate = self.reservation["status"], self.reservation["estimate"]
        if status in ("released", "expired"):
            return estimate
        if status == "settled" and self.debit is not None:
            return max(0, estimate - self.debit["credits"])
        return 0


async def receipt(
    conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str, message_id: str
) -> Receipt | None:
    reservation = await conn.fetchrow(
        """SELECT authorization_id, member_id, agent_id, decision, reason, estimate, status,
                  decided_at, expires_at, closed_at, settled_credits
           FROM authorizations WHERE organisation_id = $1 AND message_id = $2""",
        organisation_id,
        message_id,
    )
    debit = await conn.fetchrow(
        """SELECT entry_id, -amount AS credits, member_id, agent_id, conversation_id,
                  occurred_at, recorded_at, rate_card, model, input_tokens, output_tokens,
                  tool_calls
           FROM ledger
           WHERE organisation_id = $1 AND message_id = $2 AND kind = 'debit'""",
        organisation_id,
        message_id,
    )
    if reservation is None and debit is None:
        return None
    buckets = []
    if debit is not None:
        buckets = [
            dict(r)
            for r in await conn.fetch(
                """SELECT a.bucket_id, b.source, -a.amount AS credits
                   FROM ledger_buckets a JOIN buckets b USING (bucket_id)
                   WHERE a.entry_id = $1 ORDER BY a.amount, b.seq""",
                debit["entry_id"],
            )
        ]
    return Receipt(
        dict(reservation) if reservation else None, dict(debit) if debit else None, buckets
    )


LEVELS = ("day", "agent", "conversation", "message")


@dataclass(frozen=True, slots=True)
class Breakdown:
    level: str
    """What the rows are: days, agents of a day, conversations of an agent's day, messages."""
    total: int
    messages: int
    rows: list[dict[str, Any]]
    """`key`, `credits`, `messages` (and, for messages, `occurred_at` and `member_id`)."""
    more: bool
    """More rows than the limit: `total` still counts them all."""


async def breakdown(
    conn: asyncpg.Connection | asyncpg.Pool,
    organisation_id: str,
    since: datetime,
    until: datetime,
    *,
    day: date | None = None,
    agent_id: str | None = None,
    conversation_id: str | None = None,
    limit: int = 200,
) -> Breakdown:
    """Debits in [since, until), one level below what is given: no day, by day (UTC); a day,
    by agent; a day and agent, by conversation; all three, by message."""
    if (agent_id is not None and day is None) or (conversation_id is not None and agent_id is None):
        raise ValueError("give a day to choose an agent, and an agent to choose a conversation")
    level = LEVELS[(day is not None) + (agent_id is not None) + (conversation_id is not None)]
    key = {
        "day": "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        "agent": "coalesce(agent_id, '')",
        "conversation": "coalesce(conversation_id, '')",
        "message": "message_id",
    }[level]
    extra = ", min(occurred_at) AS occurred_at, min(member_id) AS member_id"
    extra = extra if level == "message" else ""
    rows = await conn.fetch(
        f"""WITH debits AS (
                SELECT -amount AS credits, agent_id, conversation_id, message_id, member_id,
                       occurred_at
                FROM ledger
                WHERE organisation_id = $1 AND kind = 'debit'
                  AND occurred_at >= $2 AND occurred_at < $3
                  AND ($4::date IS NULL OR (occurred_at AT TIME ZONE 'UTC')::date = $4)
                  AND ($5::text IS NULL OR agent_id = $5)
                  AND ($6::text IS NULL OR conversation_id = $6)
            ),
            grouped AS (
                SELECT {key} AS key, sum(credits)::bigint AS credits, count(*)::bigint AS messages
                       {extra}
                FROM debits GROUP BY 1
            )
            SELECT *, sum(credits) OVER ()::bigint AS total,
                   sum(messages) OVER ()::bigint AS all_messages
            FROM grouped ORDER BY key LIMIT $7""",
        organisation_id,
        since,
        until,
        day,
        agent_id,
        conversation_id,
        limit + 1,
    )
    total = rows[0]["total"] if rows else 0
    messages = rows[0]["all_messages"] if rows else 0
    found = [
        {k: v for k, v in dict(r).items() if k not in ("total", "all_messages")}
        for r in rows[:limit]
    ]
    return Breakdown(level, total, messages, found, len(rows) > limit)
