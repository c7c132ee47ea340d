"""SQL for the metering schema. Functions take a connection; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

import asyncpg

from shared.events import AgentMessageProcessedV1, CreditGrantRequestedV1

from .domain.credits import Entry, Wallet

_WALLET_COLUMNS = (
    "organisation_id, balance, allotment, used, revision, held, period_key, period_start, renews_at"
)


def _wallet(row: asyncpg.Record) -> Wallet:
    return Wallet(
        organisation_id=row["organisation_id"],
        balance=row["balance"],
        allotment=row["allotment"],
        used=row["used"],
        revision=row["revision"],
        held=row["held"],
        period_key=row["period_key"],
        period_start=row["period_start"],
        renews_at=row["renews_at"],
    )


async def create_wallets(
    conn: asyncpg.Connection, organisations: Sequence[str], now: datetime
) -> None:
    """Wallets that do not exist yet start empty: balance 0, allotment 0."""
    await conn.execute(
        """INSERT INTO wallets (organisation_id, created_at, updated_at)
           SELECT o, $2, $2 FROM unnest($1::text[]) AS o ORDER BY o
           ON CONFLICT (organisation_id) DO NOTHING""",
        sorted(organisations),
        now,
    )


class Debited(NamedTuple):
    wallet: Wallet
    debited: int
    entries: int


_USAGE_BATCH = """
CREATE TEMP TABLE IF NOT EXISTS usage_batch (
    entry_id uuid, organisation_id text, credits bigint, member_id text, agent_id text,
    conversation_id text, message_id text, occurred_at timestamptz
) ON COMMIT DELETE ROWS
"""
_USAGE_COLUMNS = (
    "entry_id",
    "organisation_id",
    "credits",
    "member_id",
    "agent_id",
    "conversation_id",
    "message_id",
    "occurred_at",
)
_DEBIT = f"""
WITH inserted AS (
    INSERT INTO ledger (entry_id, organisation_id, kind, amount, source_event_id, member_id,
                        agent_id, conversation_id, message_id, occurred_at, recorded_at)
    SELECT entry_id, organisation_id, 'debit', -credits, entry_id, member_id, agent_id,
           conversation_id, message_id, occurred_at, $1
    FROM usage_batch
    ON CONFLICT (entry_id) DO NOTHING
    RETURNING organisation_id, message_id, -amount AS credits
),
settled AS (
    UPDATE authorizations a
    SET status = 'settled', settled_credits = i.credits, closed_at = $1
    FROM inserted i
    WHERE a.organisation_id = i.organisation_id AND a.message_id = i.message_id
      AND a.status = 'held'
    RETURNING a.organisation_id, a.estimate
),
debited AS (
    SELECT organisation_id, sum(credits)::bigint AS debited, count(*)::int AS entries
    FROM inserted GROUP BY organisation_id
),
released AS (
    SELECT organisation_id, sum(estimate)::bigint AS released FROM settled GROUP BY organisation_id
)
UPDATE wallets w
SET balance = w.balance - d.debited, used = w.used + d.debited,
    held = w.held - coalesce(r.released, 0), revision = w.revision + 1, updated_at = $1
FROM debited d LEFT JOIN released r USING (organisation_id)
WHERE w.organisation_id = d.organisation_id
RETURNING {", ".join("w." + c.strip() for c in _WALLET_COLUMNS.split(","))}, d.debited, d.entries
"""


async def debit(
    conn: asyncpg.Connection, events: Sequence[AgentMessageProcessedV1], now: datetime
) -> list[Debited]:
    """Append one debit per event not yet in the ledger, settle the hold of each newly debited
    message, and debit each wallet once by the sum. Events already in the ledger (redeliveries)
    change nothing, holds included. Every wallet must exist.

    The batch travels by binary COPY into a temporary table (emptied at commit), which costs
    both sides less than array parameters; then one statement inserts and debits."""
    await conn.execute(_USAGE_BATCH)
    await conn.copy_records_to_table(
        "usage_batch",
        columns=_USAGE_COLUMNS,
        records=[
            (
                e.event_id,
                e.organisation_id,
                e.data.credits,
                e.data.member_id,
                e.data.agent_id,
                e.data.conversation_id,
                e.data.message_id,
                e.occurred_at,
            )
            for e in events
        ],
    )
    rows = await conn.fetch(_DEBIT, now)
    return [Debited(_wallet(r), r["debited"], r["entries"]) for r in rows]


async def debits_by_entry(
    conn: asyncpg.Connection, entry_ids: Sequence[UUID]
) -> dict[UUID, tuple[str, str, int]]:
    """(organisation, kind, amount) of the ledger entries with these ids."""
    rows = await conn.fetch(
        """SELECT entry_id, organisation_id, kind, amount
           FROM ledger WHERE entry_id = ANY($1::uuid[])""",
        list(entry_ids),
    )
    return {r["entry_id"]: (r["organisation_id"], r["kind"], r["amount"]) for r in rows}


async def lock_wallet(conn: asyncpg.Connection, organisation_id: str) -> Wallet:
    row = await conn.fetchrow(
        f"SELECT {_WALLET_COLUMNS} FROM wallets WHERE organisation_id = $1 FOR UPDATE",
        organisation_id,
    )
    return _wallet(row)


async def save_wallet(conn: asyncpg.Connection, wallet: Wallet, now: datetime) -> Wallet:
    row = await conn.fetchrow(
        f"""UPDATE wallets
            SET balance = $2, allotment = $3, used = $4, period_key = $5, period_start = $6,
                renews_at = $7, revision = revision + 1, updated_at = $8
            WHERE organisation_id = $1
            RETURNING {_WALLET_COLUMNS}""",
        wallet.organisation_id,
        wallet.balance,
        wallet.allotment,
        wallet.used,
        wallet.period_key,
        wallet.period_start,
        wallet.renews_at,
        now,
    )
    return _wallet(row)


async def record_grant(
    conn: asyncpg.Connection, command: CreditGrantRequestedV1, now: datetime
) -> bool:
    """Remember the grant; False if this (organisation, period key) was applied before."""
    g = command.data
    inserted = await conn.fetchval(
        """INSERT INTO grants (organisation_id, period_key, event_id, reason, amount, period_start,
                               period_end, plan, note, applied_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
           ON CONFLICT (organisation_id, period_key) DO NOTHING
           RETURNING true""",
        command.organisation_id,
        g.period_key,
        command.event_id,
        g.reason.value,
        g.amount,
        g.period_start,
        g.period_end,
        g.plan,
        g.note,
        now,
    )
    return bool(inserted)


async def append_entries(
    conn: asyncpg.Connection,
    organisation_id: str,
    entries: Sequence[tuple[UUID, Entry]],
    *,
    source_event_id: UUID,
    period_key: str | None,
    occurred_at: datetime,
    now: datetime,
) -> None:
    await conn.executemany(
        """INSERT INTO ledger (entry_id, organisation_id, kind, amount, source_event_id, reason,
                               period_key, occurred_at, recorded_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        [
            (
                entry_id,
                organisation_id,
                e.kind.value,
                e.amount,
                source_event_id,
                e.reason,
                period_key,
                occurred_at,
                now,
            )
            for entry_id, e in entries
        ],
    )


async def get_wallet(
    conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str
) -> tuple[Wallet, datetime] | None:
    row = await conn.fetchrow(
        f"SELECT {_WALLET_COLUMNS}, updated_at FROM wallets WHERE organisation_id = $1",
        organisation_id,
    )
    return None if row is None else (_wallet(row), row["updated_at"])


async def ledger_page(
    conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str, *, limit: int, before: int | None
) -> list[asyncpg.Record]:
    """Entries newest first; `before` is the `seq` of the last entry of the previous page."""
    return await conn.fetch(
        """SELECT seq, entry_id, kind, amount, reason, period_key, source_event_id, member_id,
                  agent_id, conversation_id, message_id, occurred_at, recorded_at
           FROM ledger
           WHERE organisation_id = $1 AND ($2::bigint IS NULL OR seq < $2)
           ORDER BY seq DESC
           LIMIT $3""",
        organisation_id,
        before,
        limit,
    )


# Authorizations. Lock order everywhere: hold rows first, then the wallet row.

_EXPIRE_AND_LOCK = """
WITH expired AS (
    UPDATE authorizations SET status = 'expired', closed_at = $3
    WHERE organisation_id = $1 AND status = 'held' AND expires_at <= $3
    RETURNING estimate
)
UPDATE wallets
SET held = held - coalesce((SELECT sum(estimate) FROM expired), 0)
WHERE organisation_id = $1
RETURNING balance, held, renews_at,
          ARRAY(SELECT message_id FROM authorizations
                WHERE organisation_id = $1 AND message_id = ANY($2::text[])) AS known
"""


class DecisionState(NamedTuple):
    balance: int
    held: int
    renews_at: datetime | None
    known: list[str]


async def lock_for_decision(
    conn: asyncpg.Connection, organisation_id: str, message_ids: Sequence[str], now: datetime
) -> DecisionState | None:
    """Expire the organisation's due holds, lock its wallet and list which of `message_ids`
    were decided before. None if the organisation has no wallet."""
    row = await conn.fetchrow(_EXPIRE_AND_LOCK, organisation_id, list(message_ids), now)
    if row is None:
        return None
    return DecisionState(row["balance"], row["held"], row["renews_at"], row["known"])


class NewDecision(NamedTuple):
    authorization_id: UUID
    message_id: str
    member_id: str
    agent_id: str | None
    reason: str | None
    estimate: int
    expires_at: datetime | None


async def record_decisions(
    conn: asyncpg.Connection, organisation_id: str, decisions: Sequence[NewDecision], now: datetime
) -> set[str]:
    """Insert the decisions and add the new holds to the wallet. Returns the message ids that
    were inserted; one decided concurrently elsewhere is left alone (and not counted)."""
    rows = await conn.fetch(
        """WITH inserted AS (
               INSERT INTO authorizations (authorization_id, organisation_id, message_id,
                   member_id, agent_id, decision, reason, estimate, status, decided_at, expires_at)
               SELECT a, $1, m, mb, ag,
                      CASE WHEN r IS NULL THEN 'allowed' ELSE 'denied' END, r, e,
                      CASE WHEN r IS NULL THEN 'held' ELSE 'denied' END, $2, x
               FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[],
                           $8::bigint[], $9::timestamptz[]) AS t(a, m, mb, ag, r, e, x)
               ON CONFLICT (organisation_id, message_id) DO NOTHING
               RETURNING message_id, CASE WHEN status = 'held' THEN estimate ELSE 0 END AS held
           ),
           wallet AS (
               UPDATE wallets SET held = held + (SELECT sum(held) FROM inserted)
               WHERE organisation_id = $1 AND (SELECT sum(held) FROM inserted) > 0
           )
           SELECT message_id FROM inserted""",
        organisation_id,
        now,
        [d.authorization_id for d in decisions],
        [d.message_id for d in decisions],
        [d.member_id for d in decisions],
        [d.agent_id for d in decisions],
        [d.reason for d in decisions],
        [d.estimate for d in decisions],
        [d.expires_at for d in decisions],
    )
    return {r["message_id"] for r in rows}


_AUTHORIZATION_COLUMNS = """authorization_id, organisation_id, message_id, member_id, agent_id,
    decision, reason, estimate, status, decided_at, expires_at, closed_at, settled_credits"""


async def decisions_for(
    conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str, message_ids: Sequence[str]
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {_AUTHORIZATION_COLUMNS} FROM authorizations
            WHERE organisation_id = $1 AND message_id = ANY($2::text[])""",
        organisation_id,
        list(message_ids),
    )


async def get_authorization(
    conn: asyncpg.Connection | asyncpg.Pool, authorization_id: UUID
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_AUTHORIZATION_COLUMNS} FROM authorizations WHERE authorization_id = $1",
        authorization_id,
    )


async def release_hold(conn: asyncpg.Connection, authorization_id: UUID, now: datetime) -> bool:
    """Release an active hold and give its credits back. False if it was not active."""
    released = await conn.fetchval(
        """WITH released AS (
               UPDATE authorizations SET status = 'released', closed_at = $2
               WHERE authorization_id = $1 AND status = 'held'
               RETURNING organisation_id, estimate
           ),
           wallet AS (
               UPDATE wallets w SET held = w.held - r.estimate
               FROM released r WHERE w.organisation_id = r.organisation_id
           )
           SELECT count(*) FROM released""",
        authorization_id,
        now,
    )
    return bool(released)


async def expire_due_holds(conn: asyncpg.Connection, now: datetime, *, limit: int) -> int:
    """Expire up to `limit` holds past their time, across organisations. Returns how many."""
    return await conn.fetchval(
        """WITH due AS (
               SELECT authorization_id FROM authorizations
               WHERE status = 'held' AND expires_at <= $1
               ORDER BY expires_at LIMIT $2
               FOR UPDATE SKIP LOCKED
           ),
           expired AS (
               UPDATE authorizations a SET status = 'expired', closed_at = $1
               FROM due WHERE a.authorization_id = due.authorization_id
               RETURNING a.organisation_id, a.estimate
           ),
           per_organisation AS (
               SELECT organisation_id, sum(estimate)::bigint AS freed
               FROM expired GROUP BY organisation_id
           ),
           wallet AS (
               UPDATE wallets w SET held = w.held - p.freed
               FROM per_organisation p WHERE w.organisation_id = p.organisation_id
           )
           SELECT count(*) FROM expired""",
        now,
        limit,
    )
