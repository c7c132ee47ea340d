"""Wallets, usage debits (burning buckets down) and the ledger (see the package for the lock
order)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

import asyncpg

from ..domain.consumption import Consumption
from ..domain.credits import Entry, Wallet
from .budget_counts import add_spent, remove_held

_WALLET_COLUMNS = (
    "organisation_id, balance, allotment, used, revision, held, debt, period_key, period_start, "
    "renews_at"
)


def _wallet(row: asyncpg.Record) -> Wallet:
    return Wallet(
        organisation_id=row["organisation_id"],
        balance=row["balance"],
        allotment=row["allotment"],
        used=row["used"],
        revision=row["revision"],
        held=row["held"],
        debt=row["debt"],
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
CREATE TEMP TABLE IF NOT EXISTS usage_batch_v3 (
    n int, entry_id uuid, organisation_id text, credits bigint, member_id text, agent_id text,
    conversation_id text, message_id text, occurred_at timestamptz, rate_card text, model text,
    input_tokens bigint, output_tokens bigint, tool_calls integer
) ON COMMIT DELETE ROWS
"""
_USAGE_COLUMNS = (
    "n",
    "entry_id",
    "organisation_id",
    "credits",
    "member_id",
    "agent_id",
    "conversation_id",
    "message_id",
    "occurred_at",
    "rate_card",
    "model",
    "input_tokens",
    "output_tokens",
    "tool_calls",
)
_LOCK_BATCH_WALLETS = """
SELECT organisation_id FROM wallets
WHERE organisation_id IN (SELECT organisation_id FROM usage_batch_v3)
ORDER BY organisation_id
FOR UPDATE
"""
_DEBIT = f"""
WITH inserted AS (
    INSERT INTO ledger (entry_id, organisation_id, kind, amount, source_event_id, member_id,
                        agent_id, conversation_id, message_id, occurred_at, recorded_at,
                        rate_card, model, input_tokens, output_tokens, tool_calls)
    SELECT entry_id, organisation_id, 'debit', -credits, entry_id, member_id, agent_id,
           conversation_id, message_id, occurred_at, $1, rate_card, model, input_tokens,
           output_tokens, tool_calls
    FROM usage_batch_v3
    ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING seq, entry_id, organisation_id, message_id, member_id, agent_id,
              -amount AS credits
),
{add_spent("budget_spent", "inserted")},
settled AS (
    UPDATE authorizations a
    SET status = 'settled', settled_credits = i.credits, closed_at = $1
    FROM inserted i
    WHERE a.organisation_id = i.organisation_id AND a.message_id = i.message_id
      AND a.status = 'held'
    RETURNING a.organisation_id, a.member_id, a.agent_id, a.estimate
),
{remove_held("unheld", "settled")},
debited AS (
    SELECT organisation_id, sum(credits)::bigint AS debited, count(*)::int AS entries
    FROM inserted GROUP BY organisation_id
),
released AS (
    SELECT organisation_id, sum(estimate)::bigint AS released FROM settled GROUP BY organisation_id
),
spend AS (
    SELECT entry_id, organisation_id, credits,
           sum(credits) OVER (PARTITION BY organisation_id ORDER BY seq) AS hi
    FROM inserted
),
live AS (
    SELECT bucket_id, organisation_id, remaining,
           sum(remaining) OVER (PARTITION BY organisation_id
                                ORDER BY expires_at NULLS LAST, priority, seq) AS hi
    FROM buckets
    WHERE organisation_id IN (SELECT organisation_id FROM debited) AND live
      AND (ends_with_period OR expires_at IS NULL OR expires_at > $1)
),
allocated AS (
    SELECT s.entry_id, l.bucket_id, l.organisation_id,
           least(s.hi, l.hi) - greatest(s.hi - s.credits, l.hi - l.remaining) AS credits
    FROM spend s JOIN live l USING (organisation_id)
    WHERE s.hi - s.credits < l.hi AND l.hi - l.remaining < s.hi
),
allocations AS (
    INSERT INTO ledger_buckets (entry_id, bucket_id, amount)
    SELECT entry_id, bucket_id, -credits FROM allocated
),
burnt AS (
    UPDATE buckets b SET remaining = b.remaining - t.credits, updated_at = $1
    FROM (SELECT bucket_id, sum(credits)::bigint AS credits FROM allocated GROUP BY bucket_id) t
    WHERE b.bucket_id = t.bucket_id
),
covered AS (
    SELECT organisation_id, sum(credits)::bigint AS covered FROM allocated
    GROUP BY organisation_id
),
upserted AS (
    INSERT INTO wallets AS w (organisation_id, balance, used, debt, revision, created_at,
                              updated_at)
    SELECT organisation_id, -debited, debited, debited, 1, $1, $1 FROM debited
    ORDER BY organisation_id
    ON CONFLICT (organisation_id) DO UPDATE
    SET balance = w.balance - excluded.used,
        used = w.used + excluded.used,
        debt = w.debt + excluded.used - coalesce(
            (SELECT c.covered FROM covered c WHERE c.organisation_id = w.organisation_id), 0),
        held = w.held - coalesce(
            (SELECT r.released FROM released r WHERE r.organisation_id = w.organisation_id), 0),
        revision = w.revision + 1,
        updated_at = $1
    RETURNING {", ".join("w." + c.strip() for c in _WALLET_COLUMNS.split(","))}
)
SELECT u.*, d.debited, d.entries FROM upserted u JOIN debited d USING (organisation_id)
"""


async def debit(
    conn: asyncpg.Connection, events: Sequence[Consumption], now: datetime
) -> list[Debited]:
    """Append one debit per event that is new by both its event id and its (organisation,
    message id), the first in `events` order winning; settle the hold of each message debited;
    debit each wallet once by the sum, burning its live buckets down in spending order
    (`domain.buckets`; each debit's share of each bucket is recorded in `ledger_buckets`, what
    no bucket covers becomes debt). Events not appended change nothing, holds and wallets
    included: a wallet is created (at zero, then debited) only for an organisation that got a
    debit.

    The batch travels by binary COPY into a temporary table (emptied at commit), which costs
    both sides less than array parameters. Then the batch's existing wallets are locked in
    order, and one statement appends, settles and debits."""
    await conn.execute(_USAGE_BATCH)
    await conn.copy_records_to_table(
        "usage_batch_v3",
        columns=_USAGE_COLUMNS,
        records=[
            (
                n,
                e.event_id,
                e.organisation_id,
                e.credits,
                e.member_id,
                e.agent_id,
                e.conversation_id,
                e.message_id,
                e.occurred_at,
                *(
                    (None,) * 5
                    if e.priced is None or e.usage is None
                    else (
                        e.priced.version,
                        e.priced.model,
                        e.usage.input_tokens,
                        e.usage.output_tokens,
                        e.usage.tool_calls,
                    )
                ),
            )
            for n, e in enumerate(events)
        ],
    )
    await conn.execute(_LOCK_BATCH_WALLETS)
    rows = await conn.fetch(_DEBIT, now)
    return [Debited(_wallet(r), r["debited"], r["entries"]) for r in rows]


class StoredDebit(NamedTuple):
    entry_id: UUID
    organisation_id: str
    kind: str
    credits: int
    """The amount, as a positive number of credits for a debit."""
    message_id: str | None


async def entries_by_id(
    conn: asyncpg.Connection, entry_ids: Sequence[UUID]
) -> dict[UUID, StoredDebit]:
    """The ledger entries with these ids."""
    rows = await conn.fetch(
        """SELECT entry_id, organisation_id, kind, -amount AS credits, message_id
           FROM ledger WHERE entry_id = ANY($1::uuid[])""",
        list(entry_ids),
    )
    return {r["entry_id"]: StoredDebit(*r.values()) for r in rows}


async def debits_by_message(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], StoredDebit]:
    """The debits recorded for these (organisation, message id) pairs."""
    rows = await conn.fetch(
        """SELECT entry_id, organisation_id, kind, -amount AS credits, message_id
           FROM ledger
           WHERE kind = 'debit' AND (organisation_id, message_id) IN
                 (SELECT * FROM unnest($1::text[], $2::text[]))""",
        [o for o, _ in keys],
        [m for _, m in keys],
    )
    return {(r["organisation_id"], r["message_id"]): StoredDebit(*r.values()) for r in rows}


async def lock_wallets(conn: asyncpg.Connection, organisations: Sequence[str]) -> dict[str, Wallet]:
    """Lock the existing wallets of `organisations`, in ascending order."""
    rows = await conn.fetch(
        f"""SELECT {_WALLET_COLUMNS} FROM wallets WHERE organisation_id = ANY($1::text[])
            ORDER BY organisation_id FOR UPDATE""",
        sorted(organisations),
    )
    return {r["organisation_id"]: _wallet(r) for r in rows}


async def save_wallets(
    conn: asyncpg.Connection, wallets: Sequence[Wallet], now: datetime
) -> list[Wallet]:
    rows = await conn.fetch(
        f"""UPDATE wallets w
            SET balance = s.balance, allotment = s.allotment, used = s.used, debt = s.debt,
                period_key = s.period_key, period_start = s.period_start,
                renews_at = s.renews_at, revision = w.revision + 1, updated_at = $8
            FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[],
                        $6::timestamptz[], $7::timestamptz[], $9::bigint[])
                AS s(organisation_id, balance, allotment, used, period_key, period_start,
                     renews_at, debt)
            WHERE w.organisation_id = s.organisation_id
            RETURNING {", ".join("w." + c.strip() for c in _WALLET_COLUMNS.split(","))}""",
        [w.organisation_id for w in wallets],
        [w.balance for w in wallets],
        [w.allotment for w in wallets],
        [w.used for w in wallets],
        [w.period_key for w in wallets],
        [w.period_start for w in wallets],
        [w.renews_at for w in wallets],
        now,
        [w.debt for w in wallets],
    )
    return sorted((_wallet(r) for r in rows), key=lambda w: w.organisation_id)


class NewEntry(NamedTuple):
    entry_id: UUID
    organisation_id: str
    entry: Entry
    source_event_id: UUID
    period_key: str | None
    occurred_at: datetime


async def append_grant_entries(
    conn: asyncpg.Connection, entries: Sequence[NewEntry], now: datetime
) -> None:
    """The entries, and what each took from each bucket."""
    if not entries:
        return
    await conn.execute(
        """INSERT INTO ledger (entry_id, organisation_id, kind, amount, source_event_id, reason,
                               period_key, occurred_at, recorded_at)
           SELECT i, o, k, a, s, r, p, t, $8::timestamptz
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::uuid[], $6::text[],
                       $7::text[], $9::timestamptz[]) AS e(i, o, k, a, s, r, p, t)""",
        [e.entry_id for e in entries],
        [e.organisation_id for e in entries],
        [e.entry.kind.value for e in entries],
        [e.entry.amount for e in entries],
        [e.source_event_id for e in entries],
        [e.entry.reason for e in entries],
        [e.period_key for e in entries],
        now,
        [e.occurred_at for e in entries],
    )
    allocations = [(e.entry_id, b, amount) for e in entries for b, amount in e.entry.allocations]
    if allocations:
        await conn.execute(
            """INSERT INTO ledger_buckets (entry_id, bucket_id, amount)
               SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[])""",
            [a[0] for a in allocations],
            [a[1] for a in allocations],
            [a[2] for a in allocations],
        )


async def lock_wallets_skip_busy(
    conn: asyncpg.Connection, organisations: Sequence[str]
) -> dict[str, Wallet]:
    """Lock the wallets of `organisations` not locked by another transaction, in order."""
    rows = await conn.fetch(
        f"""SELECT {_WALLET_COLUMNS} FROM wallets WHERE organisation_id = ANY($1::text[])
            ORDER BY organisation_id FOR UPDATE SKIP LOCKED""",
        sorted(organisations),
    )
    return {r["organisation_id"]: _wallet(r) for r in rows}


async def get_wallet(
    conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str
) -> tuple[Wallet, datetime] | None:
    row = await conn.fetchrow(
        f"SELECT {_WALLET_COLUMNS}, updated_at FROM wallets WHERE organisation_id = $1",
        organisation_id,
    )
    return None if row is None else (_wallet(row), row["updated_at"])


class LedgerEntry(NamedTuple):
    seq: int
    entry_id: UUID
    kind: str
    amount: int
    reason: str | None
    period_key: str | None
    source_event_id: UUID
    member_id: str | None
    agent_id: str | None
    conversation_id: str | None
    message_id: str | None
    occurred_at: datetime
    recorded_at: datetime
    rate_card: str | None
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    tool_calls: int | None
    buckets: list[tuple[UUID, int]]
    """(bucket, credits taken) for each bucket the entry took from."""


async def ledger_page(
    conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str, *, limit: int, before: int | None
) -> list[LedgerEntry]:
    """Entries newest first; `before` is the `seq` of the last entry of the previous page."""
    rows = await conn.fetch(
        f"""SELECT {", ".join("l." + f for f in LedgerEntry._fields[:-1])},
                   ARRAY(SELECT ROW(a.bucket_id, -a.amount) FROM ledger_buckets a
                         WHERE a.entry_id = l.entry_id ORDER BY a.amount) AS buckets
            FROM ledger l
            WHERE l.organisation_id = $1 AND ($2::bigint IS NULL OR l.seq < $2)
            ORDER BY l.seq DESC
            LIMIT $3""",
        organisation_id,
        before,
        limit,
    )
    return [LedgerEntry(*list(r.values())[:-1], [(b[0], b[1]) for b in r["buckets"]]) for r in rows]
