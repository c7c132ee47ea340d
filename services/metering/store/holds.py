"""Authorization decisions and their holds. Every statement that changes hold rows locks their
wallets first (see the package)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

import asyncpg

from shared import outbox
from shared.events import Event

from ..domain.budgets import NO_BUDGETS, Budgets
from .budget_counts import add_held, remove_held
from .budgets import budgets_of

_DECISION_STATES = """
SELECT w.organisation_id, w.balance, w.held, w.renews_at,
       (SELECT coalesce(sum(a.estimate), 0) FROM authorizations a
        WHERE a.organisation_id = w.organisation_id AND a.status = 'held'
          AND a.expires_at <= $3)::bigint AS lapsed,
       (SELECT coalesce(sum(b.remaining), 0) FROM buckets b
        WHERE b.organisation_id = w.organisation_id AND b.live
          AND NOT b.ends_with_period AND b.expires_at <= $4)::bigint AS expiring,
       ARRAY(SELECT a.message_id FROM authorizations a
             WHERE a.organisation_id = w.organisation_id AND a.message_id = ANY($2::text[]))
           AS known,
       budget.lines AS budget
FROM wallets w
LEFT JOIN LATERAL (
    SELECT ARRAY(
        SELECT ROW('cap', b.scope, b.subject_id, b.monthly_cap) FROM budgets b
        WHERE b.organisation_id = w.organisation_id
          AND (b.scope = 'member_default'
               OR b.subject_id = ANY(CASE b.scope WHEN 'member' THEN $5::text[]
                                                  ELSE $6::text[] END))
        UNION ALL
        SELECT ROW('used', s.scope, s.subject_id, s.spent) FROM budget_spend s
        WHERE s.organisation_id = w.organisation_id AND s.period_key = coalesce(w.period_key, '')
          AND s.subject_id = ANY(CASE s.scope WHEN 'member' THEN $5::text[] ELSE $6::text[] END)
        UNION ALL
        SELECT ROW('used', h.scope, h.subject_id, h.held) FROM budget_held h
        WHERE h.organisation_id = w.organisation_id
          AND h.subject_id = ANY(CASE h.scope WHEN 'member' THEN $5::text[] ELSE $6::text[] END)
    ) AS lines
    WHERE EXISTS (SELECT 1 FROM budgets b WHERE b.organisation_id = w.organisation_id)
) budget ON true
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
    budgets: Budgets = NO_BUDGETS
    """The caps that apply to the members and agents asked about, and what each used this
    credit period: debited, plus active holds (a hold past its expiry counts until the sweeper
    expires it, within `METERING_HOLD_SWEEP_SECONDS`: a budget errs on the side of caution)."""

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
    members: Sequence[str] = (),
    agents: Sequence[str] = (),
) -> dict[str, DecisionState]:
    """The wallets as decisions see them (no lock taken), each with which of `message_ids` it
    decided before, how much of its balance expires by `horizon` (when a hold taken now
    lapses), and, if it has budgets, those of `members` and `agents`. Organisations without a
    wallet are absent."""
    rows = await conn.fetch(
        _DECISION_STATES,
        list(organisations),
        list(message_ids),
        now,
        horizon,
        list(members),
        list(agents),
    )
    return {
        r["organisation_id"]: DecisionState(
            r["balance"],
            r["held"],
            r["lapsed"],
            r["expiring"],
            r["renews_at"],
            r["known"],
            NO_BUDGETS if r["budget"] is None else budgets_of(r["budget"]),
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


_RECORD_DECISIONS = f"""
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
    RETURNING organisation_id, message_id, member_id, agent_id,
              CASE WHEN status = 'held' THEN estimate ELSE 0 END AS held
),
{add_held("budget_holds", "inserted", "held")},
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
        f"""WITH released AS (
               UPDATE authorizations SET status = 'released', closed_at = $2
               WHERE authorization_id = $1 AND status = 'held'
               RETURNING organisation_id, member_id, agent_id, estimate
           ),
           {remove_held("unheld", "released")}
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
        f"""WITH expired AS (
               UPDATE authorizations SET status = 'expired', closed_at = $1
               WHERE organisation_id = ANY($2::text[]) AND status = 'held' AND expires_at <= $1
               RETURNING organisation_id, member_id, agent_id, estimate
           ),
           {remove_held("unheld", "expired")},
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
