"""SQL for the dashboard schema. Functions take a connection; the caller owns the transaction.
Rows leave as typed objects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

PARTS = ("credits", "subscription", "seats")


async def keep_newest(
    conn: asyncpg.Connection,
    part: str,
    states: Sequence[tuple[str, int, dict[str, Any]]],
    now: datetime,
) -> list[str]:
    """Store each organisation's `part` (credits, subscription or seats) unless a revision this
    new is stored. `states` is (organisation, revision, state), at most one per organisation.
    Returns the organisations whose view changed."""
    assert part in PARTS
    if not states:
        return []
    rows = await conn.fetch(
        f"""INSERT INTO views (organisation_id, {part}, {part}_revision, updated_at)
            SELECT n.o, n.s, n.r, $2
            FROM jsonb_to_recordset($1::jsonb) AS n(o text, r bigint, s jsonb)
            ON CONFLICT (organisation_id) DO UPDATE
                SET {part} = excluded.{part}, {part}_revision = excluded.{part}_revision,
                    updated_at = excluded.updated_at
                WHERE views.{part}_revision IS NULL
                   OR views.{part}_revision < excluded.{part}_revision
            RETURNING organisation_id""",
        orjson.dumps([{"o": o, "r": r, "s": s} for o, r, s in states]).decode(),
        now,
    )
    return [r[0] for r in rows]


@dataclass(frozen=True, slots=True)
class Debit:
    event_id: UUID
    organisation_id: str
    member_id: str
    agent_id: str
    credits: int
    occurred_at: datetime


async def add_usage(conn: asyncpg.Connection, debits: Sequence[Debit]) -> list[str]:
    """Remember usage events once (by event id). Returns the organisations with new usage."""
    return await _add_once(
        conn, "usage", debits, ("uuid", "text", "text", "text", "bigint", "timestamptz")
    )


@dataclass(frozen=True, slots=True)
class Denial:
    event_id: UUID
    organisation_id: str
    member_id: str
    agent_id: str | None
    reason: str | None
    estimate: int
    occurred_at: datetime


async def add_denials(conn: asyncpg.Connection, denials: Sequence[Denial]) -> list[str]:
    """Remember denied authorizations once (by event id). Returns the organisations with new
    denials."""
    return await _add_once(
        conn,
        "denials",
        denials,
        ("uuid", "text", "text", "text", "text", "bigint", "timestamptz"),
    )


@dataclass(frozen=True, slots=True)
class Audited:
    event_id: UUID
    organisation_id: str
    actor: str
    action: str
    target: str | None
    outcome: str
    request_id: str
    detail: str
    occurred_at: datetime


async def add_audit(conn: asyncpg.Connection, entries: Sequence[Audited]) -> list[str]:
    """Remember audit entries once (by event id). Returns the organisations with new ones."""
    return await _add_once(
        conn,
        "audit",
        entries,
        ("uuid", "text", "text", "text", "text", "text", "text", "text", "timestamptz"),
    )


async def _add_once(
    conn: asyncpg.Connection, table: str, rows: Sequence[Any], types: Sequence[str]
) -> list[str]:
    """Insert the `rows` (dataclasses whose fields are the table's columns, of `types`) whose
    event id is not stored yet. Returns the organisations that got a new row."""
    if not rows:
        return []
    columns = [f.name for f in fields(rows[0])]
    assert len(columns) == len(types)
    arrays = ", ".join(f"${n}::{t}[]" for n, t in enumerate(types, start=1))
    inserted = await conn.fetch(
        f"""INSERT INTO {table} ({", ".join(columns)})
            SELECT * FROM unnest({arrays})
            ON CONFLICT (event_id) DO NOTHING
            RETURNING organisation_id""",
        *([getattr(row, c) for row in rows] for c in columns),
    )
    return sorted({r[0] for r in inserted})


@dataclass(frozen=True, slots=True)
class Stored:
    """What the dashboard knows about one organisation."""

    credits: dict[str, Any] | None
    subscription: dict[str, Any] | None
    seats: dict[str, Any] | None
    recent: list[Debit]
    by_member: list[tuple[str, int]]
    by_agent: list[tuple[str, int]]
    daily: list[tuple[datetime, int]]
    denials: list[Denial]
    audit: list[Audited]


async def view(
    conn: asyncpg.Connection | asyncpg.Pool,
    organisation_id: str,
    *,
    since: datetime,
    until: datetime,
    recent: int,
) -> Stored:
    """The organisation's parts, its recent debits and denials, and usage since `since` (per
    day up to `until`, days without usage included)."""
    parts = await conn.fetchrow(
        "SELECT credits, subscription, seats FROM views WHERE organisation_id = $1",
        organisation_id,
    )
    debits = await conn.fetch(
        """SELECT event_id, organisation_id, member_id, agent_id, credits, occurred_at FROM usage
           WHERE organisation_id = $1 ORDER BY occurred_at DESC, event_id LIMIT $2""",
        organisation_id,
        recent,
    )
    totals = await conn.fetch(
        """SELECT 'member' AS kind, member_id AS name, sum(credits)::bigint AS credits
           FROM usage WHERE organisation_id = $1 AND occurred_at >= $2 GROUP BY member_id
           UNION ALL
           SELECT 'agent', agent_id, sum(credits)::bigint
           FROM usage WHERE organisation_id = $1 AND occurred_at >= $2 GROUP BY agent_id
           UNION ALL
           SELECT 'day', to_char(d, 'YYYY-MM-DD'), coalesce(sum(u.credits), 0)::bigint
           FROM generate_series(date_trunc('day', $2 AT TIME ZONE 'UTC'),
                                date_trunc('day', $3 AT TIME ZONE 'UTC'), '1 day') AS d
           LEFT JOIN usage u ON u.organisation_id = $1 AND u.occurred_at >= $2
                AND date_trunc('day', u.occurred_at AT TIME ZONE 'UTC') = d
           GROUP BY d""",
        organisation_id,
        since,
        until,
    )
    refused = await conn.fetch(
        """SELECT event_id, organisation_id, member_id, agent_id, reason, estimate, occurred_at
           FROM denials WHERE organisation_id = $1 ORDER BY occurred_at DESC LIMIT 10""",
        organisation_id,
    )

    audited = await conn.fetch(
        """SELECT event_id, organisation_id, actor, action, target, outcome, request_id, detail,
                  occurred_at
           FROM audit WHERE organisation_id = $1 ORDER BY occurred_at DESC LIMIT 20""",
        organisation_id,
    )

    def load(value: Any) -> dict[str, Any] | None:
        return None if value is None else orjson.loads(value)

    by = {"member": [], "agent": [], "day": []}  # type: dict[str, list[tuple[Any, int]]]
    for row in totals:
        by[row["kind"]].append((row["name"], row["credits"]))
    return Stored(
        credits=load(parts["credits"]) if parts else None,
        subscription=load(parts["subscription"]) if parts else None,
        seats=load(parts["seats"]) if parts else None,
        recent=[Debit(*r.values()) for r in debits],
        by_member=sorted(by["member"], key=lambda x: -x[1]),
        by_agent=sorted(by["agent"], key=lambda x: -x[1]),
        daily=sorted((datetime.fromisoformat(d), c) for d, c in by["day"]),
        denials=[Denial(*r.values()) for r in refused],
        audit=[Audited(*r.values()) for r in audited],
    )
