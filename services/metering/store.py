"""SQL for the metering schema. Functions take a connection; the caller owns the transaction.

Lock order, everywhere: an organisation's wallet row first (several wallets in ascending
organisation id), then its hold rows (`authorizations`), then inserts. Every path that changes
holds or wallets (usage debits, decision cycles, releases, expiry sweeps, grants) follows it, so
no two of them can deadlock."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

import asyncpg

from shared import outbox
from shared.events import AgentMessageProcessedV1, Event, GrantReasonV2

from .domain.buckets import Bucket, Source
from .domain.credits import Entry, GrantCommand, Wallet

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
CREATE TEMP TABLE IF NOT EXISTS usage_batch_v2 (
    n int, entry_id uuid, organisation_id text, credits bigint, member_id text, agent_id text,
    conversation_id text, message_id text, occurred_at timestamptz
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
)
_LOCK_BATCH_WALLETS = """
SELECT organisation_id FROM wallets
WHERE organisation_id IN (SELECT organisation_id FROM usage_batch_v2)
ORDER BY organisation_id
FOR UPDATE
"""
_DEBIT = f"""
WITH inserted AS (
    INSERT INTO ledger (entry_id, organisation_id, kind, amount, source_event_id, member_id,
                        agent_id, conversation_id, message_id, occurred_at, recorded_at)
    SELECT entry_id, organisation_id, 'debit', -credits, entry_id, member_id, agent_id,
           conversation_id, message_id, occurred_at, $1
    FROM usage_batch_v2
    ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING seq, entry_id, organisation_id, message_id, -amount AS credits
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
    WHERE organisation_id IN (SELECT organisation_id FROM debited) AND remaining > 0
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
    conn: asyncpg.Connection, events: Sequence[AgentMessageProcessedV1], now: datetime
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
        "usage_batch_v2",
        columns=_USAGE_COLUMNS,
        records=[
            (
                n,
                e.event_id,
                e.organisation_id,
                e.data.credits,
                e.data.member_id,
                e.data.agent_id,
                e.data.conversation_id,
                e.data.message_id,
                e.occurred_at,
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


async def find_grants(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], GrantCommand]:
    """The terms of the grants applied under these (organisation, period key) pairs."""
    rows = await conn.fetch(
        """SELECT organisation_id, period_key, reason, amount, period_start, period_end, plan,
                  expires_at, priority, rollover_cap, clawback_of
           FROM grants WHERE (organisation_id, period_key) IN
               (SELECT * FROM unnest($1::text[], $2::text[]))""",
        [o for o, _ in keys],
        [k for _, k in keys],
    )
    return {
        (r["organisation_id"], r["period_key"]): GrantCommand(
            key=r["period_key"],
            reason=GrantReasonV2(r["reason"]),
            amount=r["amount"],
            period_start=r["period_start"],
            period_end=r["period_end"],
            plan=r["plan"],
            expires_at=r["expires_at"],
            priority=r["priority"],
            rollover_cap=r["rollover_cap"],
            clawback_of=r["clawback_of"],
        )
        for r in rows
    }


class AppliedGrant(NamedTuple):
    organisation_id: str
    event_id: UUID
    grant: GrantCommand
    note: str | None


async def record_grants(
    conn: asyncpg.Connection, applied: Sequence[AppliedGrant], now: datetime
) -> None:
    """Remember the grants under (organisation, period key); the caller checked they are new."""
    await conn.execute(
        """INSERT INTO grants (organisation_id, period_key, event_id, reason, amount,
                               period_start, period_end, plan, note, applied_at, expires_at,
                               priority, rollover_cap, clawback_of)
           SELECT o, k, e, r, a, s, n, p, t, $10, x, y, c, b
           FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[], $5::bigint[],
                       $6::timestamptz[], $7::timestamptz[], $8::text[], $9::text[],
                       $11::timestamptz[], $12::int[], $13::bigint[], $14::text[])
               AS g(o, k, e, r, a, s, n, p, t, x, y, c, b)""",
        [a.organisation_id for a in applied],
        [a.grant.key for a in applied],
        [a.event_id for a in applied],
        [a.grant.reason.value for a in applied],
        [a.grant.amount for a in applied],
        [a.grant.period_start for a in applied],
        [a.grant.period_end for a in applied],
        [a.grant.plan for a in applied],
        [a.note for a in applied],
        now,
        [a.grant.expires_at for a in applied],
        [a.grant.priority for a in applied],
        [a.grant.rollover_cap for a in applied],
        [a.grant.clawback_of for a in applied],
    )


_BUCKET_COLUMNS = (
    "bucket_id, organisation_id, grant_key, source, granted, remaining, priority, "
    "effective_from, expires_at, seq"
)


def _bucket(row: asyncpg.Record) -> Bucket:
    return Bucket(
        bucket_id=row["bucket_id"],
        organisation_id=row["organisation_id"],
        key=row["grant_key"],
        source=Source(row["source"]),
        granted=row["granted"],
        remaining=row["remaining"],
        priority=row["priority"],
        effective_from=row["effective_from"],
        expires_at=row["expires_at"],
        seq=row["seq"],
    )


async def buckets_of(
    conn: asyncpg.Connection | asyncpg.Pool,
    organisations: Sequence[str],
    *,
    keys: Sequence[tuple[str, str]] = (),
) -> dict[str, list[Bucket]]:
    """The buckets with credits left of `organisations`, and those granted under `keys`
    ((organisation, grant key) pairs) whatever is left of them, oldest first."""
    rows = await conn.fetch(
        f"""SELECT {_BUCKET_COLUMNS} FROM buckets
            WHERE (organisation_id = ANY($1::text[]) AND remaining > 0)
               OR (organisation_id, grant_key) IN (SELECT * FROM unnest($2::text[], $3::text[]))
            ORDER BY organisation_id, seq""",
        list(organisations),
        [o for o, _ in keys],
        [k for _, k in keys],
    )
    found: dict[str, list[Bucket]] = {}
    for row in rows:
        found.setdefault(row["organisation_id"], []).append(_bucket(row))
    return found


async def save_buckets(
    conn: asyncpg.Connection, created: Sequence[Bucket], changed: Sequence[Bucket], now: datetime
) -> None:
    """Insert `created` (in that order: it is their spending order among equals) and store what
    remains of `changed`."""
    if created:
        await conn.execute(
            """INSERT INTO buckets (bucket_id, organisation_id, grant_key, source, granted,
                                    remaining, priority, ends_with_period, effective_from,
                                    expires_at, created_at, updated_at)
               SELECT i, o, k, s, g, r, p, e, f, x, $11, $11
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                           $6::bigint[], $7::int[], $8::bool[], $9::timestamptz[],
                           $10::timestamptz[]) WITH ORDINALITY AS b(i, o, k, s, g, r, p, e, f, x, n)
               ORDER BY n""",
            [b.bucket_id for b in created],
            [b.organisation_id for b in created],
            [b.key for b in created],
            [b.source.value for b in created],
            [b.granted for b in created],
            [b.remaining for b in created],
            [b.priority for b in created],
            [b.ends_with_period for b in created],
            [b.effective_from for b in created],
            [b.expires_at for b in created],
            now,
        )
    if changed:
        await conn.execute(
            """UPDATE buckets b SET remaining = c.remaining, updated_at = $3
               FROM unnest($1::uuid[], $2::bigint[]) AS c(bucket_id, remaining)
               WHERE b.bucket_id = c.bucket_id""",
            [b.bucket_id for b in changed],
            [b.remaining for b in changed],
            now,
        )


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


async def due_buckets(
    conn: asyncpg.Connection | asyncpg.Pool, now: datetime, limit: int
) -> list[str]:
    """Organisations with a bucket past its expiry and credits left in it."""
    rows = await conn.fetch(
        """SELECT DISTINCT organisation_id FROM buckets
           WHERE remaining > 0 AND NOT ends_with_period AND expires_at <= $1
           LIMIT $2""",
        now,
        limit,
    )
    return [r["organisation_id"] for r in rows]


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


# Authorizations. Every statement that changes hold rows locks their wallets first (see the
# module docstring).

_DECISION_STATES = """
SELECT w.organisation_id, w.balance, w.held, w.renews_at,
       (SELECT coalesce(sum(a.estimate), 0) FROM authorizations a
        WHERE a.organisation_id = w.organisation_id AND a.status = 'held'
          AND a.expires_at <= $3)::bigint AS lapsed,
       (SELECT coalesce(sum(b.remaining), 0) FROM buckets b
        WHERE b.organisation_id = w.organisation_id AND b.remaining > 0
          AND NOT b.ends_with_period AND b.expires_at <= $4)::bigint AS expiring,
       ARRAY(SELECT a.message_id FROM authorizations a
             WHERE a.organisation_id = w.organisation_id AND a.message_id = ANY($2::text[]))
           AS known
FROM wallets w
WHERE w.organisation_id = ANY($1::text[])
"""


class DecisionState(NamedTuple):
    balance: int
    held: int
    lapsed: int
    """Part of `held` whose holds are past their expiry but not yet swept: free to reuse."""
    expiring: int
    """Part of `balance` in buckets that expire before a hold taken now would lapse: a hold
    is never backed by credits that may be gone when its usage arrives."""
    renews_at: datetime | None
    known: list[str]

    @property
    def reservable(self) -> int:
        """The balance without the credits that expire before a new hold would lapse."""
        return self.balance - self.expiring


async def decision_states(
    conn: asyncpg.Connection,
    organisations: Sequence[str],
    message_ids: Sequence[str],
    now: datetime,
    *,
    horizon: datetime,
) -> dict[str, DecisionState]:
    """The wallets as decisions see them (no lock taken), each with which of `message_ids` it
    decided before, and how much of its balance expires by `horizon` (when a hold taken now
    lapses). Organisations without a wallet are absent."""
    rows = await conn.fetch(_DECISION_STATES, list(organisations), list(message_ids), now, horizon)
    return {
        r["organisation_id"]: DecisionState(
            r["balance"], r["held"], r["lapsed"], r["expiring"], r["renews_at"], r["known"]
        )
        for r in rows
    }


class NewDecision(NamedTuple):
    authorization_id: UUID
    organisation_id: str
    message_id: str
    member_id: str
    agent_id: str | None
    reason: str | None
    estimate: int
    expires_at: datetime | None


_RECORD_DECISIONS = """
WITH seen AS (
    SELECT * FROM unnest($2::text[], $3::bigint[], $4::bigint[])
        AS s(organisation_id, balance, held)
),
unchanged AS (
    SELECT w.organisation_id FROM wallets w JOIN seen s USING (organisation_id)
    WHERE w.balance = s.balance AND w.held = s.held
    ORDER BY w.organisation_id
    FOR UPDATE OF w
),
proceeding AS (
    SELECT organisation_id FROM unchanged
    UNION ALL
    SELECT unnest($5::text[])
),
batch AS (
    SELECT * FROM unnest($6::uuid[], $7::text[], $8::text[], $9::text[], $10::text[],
                         $11::text[], $12::bigint[], $13::timestamptz[], $14::text[],
                         $15::bytea[], $16::text[], $17::bytea[])
        WITH ORDINALITY AS t(a, o, m, mb, ag, r, e, x, topic, key, event_type, payload, n)
),
inserted AS (
    INSERT INTO authorizations (authorization_id, organisation_id, message_id, member_id,
        agent_id, decision, reason, estimate, status, decided_at, expires_at)
    SELECT a, o, m, mb, ag, CASE WHEN r IS NULL THEN 'allowed' ELSE 'denied' END, r, e,
           CASE WHEN r IS NULL THEN 'held' ELSE 'denied' END, $1, x
    FROM batch
    WHERE o IN (SELECT organisation_id FROM proceeding)
    ORDER BY o, m
    ON CONFLICT (organisation_id, message_id) DO NOTHING
    RETURNING organisation_id, message_id,
              CASE WHEN status = 'held' THEN estimate ELSE 0 END AS held
),
added AS (
    SELECT organisation_id, sum(held)::bigint AS held FROM inserted
    GROUP BY organisation_id HAVING sum(held) > 0
),
wallet AS (
    UPDATE wallets w SET held = w.held + a.held
    FROM added a WHERE w.organisation_id = a.organisation_id
),
announced AS (
    INSERT INTO outbox (topic, key, event_type, payload, created_at)
    SELECT b.topic, b.key, b.event_type, b.payload, $1
    FROM batch b JOIN inserted i ON i.organisation_id = b.o AND i.message_id = b.m
    ORDER BY b.n
)
SELECT ARRAY(SELECT organisation_id FROM proceeding) AS proceeding,
       ARRAY(SELECT organisation_id || ' ' || message_id FROM inserted) AS inserted
"""


class Recorded(NamedTuple):
    proceeded: set[str]
    """Organisations whose decisions were written; the others changed since they were read."""
    inserted: set[tuple[str, str]]
    """(organisation, message id) recorded now; the others were decided concurrently."""


async def record_decisions(
    conn: asyncpg.Connection,
    decisions: Sequence[NewDecision],
    announcements: Sequence[Event],
    *,
    seen: dict[str, DecisionState],
    prefix: str,
    now: datetime,
) -> Recorded:
    """In one statement (one transaction), for every organisation whose wallet still has the
    balance and holds that were `seen` (compare and set): insert its decisions, add their holds
    to its wallet, and put their announcements (one per decision, same order) in the outbox.
    Decisions of organisations without a wallet (all denials) are recorded as they are."""
    topics, keys, types, payloads = outbox.columns(announcements, prefix=prefix)
    walletless = sorted({d.organisation_id for d in decisions} - seen.keys())
    row = await conn.fetchrow(
        _RECORD_DECISIONS,
        now,
        list(seen),
        [s.balance for s in seen.values()],
        [s.held for s in seen.values()],
        walletless,
        [d.authorization_id for d in decisions],
        [d.organisation_id for d in decisions],
        [d.message_id for d in decisions],
        [d.member_id for d in decisions],
        [d.agent_id for d in decisions],
        [d.reason for d in decisions],
        [d.estimate for d in decisions],
        [d.expires_at for d in decisions],
        topics,
        keys,
        types,
        payloads,
    )
    inserted = {tuple(item.split(" ", 1)) for item in row["inserted"]}
    return Recorded(set(row["proceeding"]), inserted)  # type: ignore[arg-type]


_AUTHORIZATION_COLUMNS = """authorization_id, organisation_id, message_id, member_id, agent_id,
    decision, reason, estimate, status, decided_at, expires_at, closed_at, settled_credits"""


async def decisions_for(
    conn: asyncpg.Connection | asyncpg.Pool, keys: Sequence[tuple[str, str]]
) -> list[asyncpg.Record]:
    """The recorded decisions for these (organisation, message id) pairs."""
    return await conn.fetch(
        f"""SELECT {_AUTHORIZATION_COLUMNS} FROM authorizations
            WHERE (organisation_id, message_id) IN
                  (SELECT * FROM unnest($1::text[], $2::text[]))""",
        [o for o, _ in keys],
        [m for _, m in keys],
    )


async def get_authorization(
    conn: asyncpg.Connection | asyncpg.Pool, authorization_id: UUID
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_AUTHORIZATION_COLUMNS} FROM authorizations WHERE authorization_id = $1",
        authorization_id,
    )


async def release_hold(conn: asyncpg.Connection, authorization_id: UUID, now: datetime) -> None:
    """Release the hold if it is active, and give its credits back; otherwise change nothing.
    Run it in a transaction: the wallet is locked first."""
    organisation_id = await conn.fetchval(
        "SELECT organisation_id FROM authorizations WHERE authorization_id = $1", authorization_id
    )
    if organisation_id is None:
        return
    await conn.execute(
        "SELECT 1 FROM wallets WHERE organisation_id = $1 FOR UPDATE", organisation_id
    )
    await conn.execute(
        """WITH released AS (
               UPDATE authorizations SET status = 'released', closed_at = $2
               WHERE authorization_id = $1 AND status = 'held'
               RETURNING organisation_id, estimate
           )
           UPDATE wallets w SET held = w.held - r.estimate
           FROM released r WHERE w.organisation_id = r.organisation_id""",
        authorization_id,
        now,
    )


async def expire_due_holds(
    conn: asyncpg.Connection, now: datetime, *, limit: int
) -> tuple[int, int]:
    """Expire the holds past their time of up to `limit` organisations. Run it in a
    transaction. Wallets busy in another transaction are skipped (their holds already count as
    free for decisions; the next sweep expires them). Returns (organisations due, holds expired).
    """
    due = await conn.fetch(
        """SELECT DISTINCT organisation_id FROM authorizations
           WHERE status = 'held' AND expires_at <= $1
           LIMIT $2""",
        now,
        limit,
    )
    locked = await conn.fetch(
        """SELECT organisation_id FROM wallets WHERE organisation_id = ANY($1::text[])
           ORDER BY organisation_id
           FOR UPDATE SKIP LOCKED""",
        [r["organisation_id"] for r in due],
    )
    if not locked:
        return len(due), 0
    expired = await conn.fetchval(
        """WITH expired AS (
               UPDATE authorizations SET status = 'expired', closed_at = $1
               WHERE organisation_id = ANY($2::text[]) AND status = 'held' AND expires_at <= $1
               RETURNING organisation_id, estimate
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
        [r["organisation_id"] for r in locked],
    )
    return len(due), expired
