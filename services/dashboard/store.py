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
    denials: list[Denial]
    audit: list[Audited]
    usage: dict[str, Any] | None = None
    """Metering's usage of the period shown (`sources.MeteringUsage`); None: unavailable."""
    period: tuple[datetime, datetime] | None = None
    """The period shown, [start, end); None: no credit period known yet."""
    current_period: bool = True
    invoices: list[dict[str, Any]] | None = None
    """The latest invoices (the gateway's); None: unavailable."""
    buckets: list[dict[str, Any]] | None = None
    """Where the credits are (metering's live buckets, in spending order); None: unavailable."""
    recharge: dict[str, Any] | None = None
    """The organisation's auto-recharge (the subscription service's), as the viewer may see it."""
    budgets: dict[str, Any] | None = None
    """The budgets as the viewer may see them (metering's: all for an owner, else their own)."""


async def view(conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str) -> Stored:
    """The organisation's parts, its latest denials and audit entries."""
    parts = await conn.fetchrow(
        "SELECT credits, subscription, seats FROM views WHERE organisation_id = $1",
        organisation_id,
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

    return Stored(
        credits=load(parts["credits"]) if parts else None,
        subscription=load(parts["subscription"]) if parts else None,
        seats=load(parts["seats"]) if parts else None,
        denials=[Denial(*r.values()) for r in refused],
        audit=[Audited(*r.values()) for r in audited],
    )
