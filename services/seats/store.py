"""SQL for the seats schema. Functions take a connection; the caller owns the transaction.
Rows leave as typed objects."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
import orjson

from shared import directory
from shared.events.members import MemberRole, MemberStatus
from shared.events.subscriptions import Plan

from .domain.seats import Billing, MemberState, Organisation, QuantitySync

_ORGANISATION = """organisation_id, seats, owners, plan, seat_limit, stripe_subscription_id,
    subscription_revision, revision"""


def _organisation(row: asyncpg.Record) -> Organisation:
    billing = (
        None
        if row["plan"] is None
        else Billing(
            Plan(row["plan"]),
            row["seat_limit"],
            row["stripe_subscription_id"],
            row["subscription_revision"],
        )
    )
    return Organisation(
        row["organisation_id"], row["seats"], tuple(row["owners"]), billing, row["revision"]
    )


async def lock_organisations(
    conn: asyncpg.Connection, organisation_ids: Sequence[str], now: datetime
) -> dict[str, Organisation]:
    """Lock `organisation_ids`, in ascending order (the one lock order of this service),
    creating the unknown ones empty (revision 0): two transactions that meet an organisation
    for the first time, from two topics, then wait for each other instead of both inserting."""
    ids = sorted(set(organisation_ids))
    await conn.execute(
        """INSERT INTO organisations (organisation_id, seats, owners, revision, updated_at)
           SELECT o, 0, '{}', 0, $2 FROM unnest($1::text[]) AS o
           ON CONFLICT (organisation_id) DO NOTHING""",
        ids,
        now,
    )
    rows = await conn.fetch(
        f"""SELECT {_ORGANISATION} FROM organisations
            WHERE organisation_id = ANY($1::text[]) ORDER BY organisation_id FOR UPDATE""",
        ids,
    )
    return {r["organisation_id"]: _organisation(r) for r in rows}


async def organisation(
    conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str
) -> Organisation | None:
    row = await conn.fetchrow(
        f"SELECT {_ORGANISATION} FROM organisations WHERE organisation_id = $1", organisation_id
    )
    return None if row is None else _organisation(row)


async def organisation_and_member(
    conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str, member_id: str | None
) -> tuple[Organisation | None, MemberState | None]:
    """The organisation and, if asked, one member's state: one round trip (the seat check)."""
    row = await conn.fetchrow(
        f"""SELECT {", ".join("o." + c.strip() for c in _ORGANISATION.split(","))},
                   m.member_id, m.role, m.status, m.sequence
            FROM organisations o
            LEFT JOIN directory_members m
                   ON m.organisation_id = o.organisation_id AND m.member_id = $2
            WHERE o.organisation_id = $1""",
        organisation_id,
        member_id,
    )
    if row is None:
        return None, None
    member = (
        None
        if row["member_id"] is None
        else MemberState(
            organisation_id,
            row["member_id"],
            MemberRole(row["role"]),
            MemberStatus(row["status"]),
            row["sequence"],
        )
    )
    return _organisation(row), member


async def save_organisations(
    conn: asyncpg.Connection, organisations: Sequence[Organisation], now: datetime
) -> None:
    """Write these (locked) organisations' counts, owners and subscription state."""
    if not organisations:
        return
    await conn.execute(
        """UPDATE organisations AS t
           SET seats = n.s, owners = ARRAY(SELECT jsonb_array_elements_text(n.w)),
               plan = n.p, seat_limit = n.l, stripe_subscription_id = n.i,
               subscription_revision = n.r, revision = n.v, updated_at = $2
           FROM jsonb_to_recordset($1::jsonb)
               AS n(o text, s int, w jsonb, p text, l int, i text, r bigint, v bigint)
           WHERE t.organisation_id = n.o""",
        _rows(
            [
                {
                    "o": o.organisation_id,
                    "s": o.seats,
                    "w": o.owners,
                    "p": o.billing.plan if o.billing else None,
                    "l": o.billing.seat_limit if o.billing else None,
                    "i": o.billing.stripe_subscription_id if o.billing else None,
                    "r": o.billing.revision if o.billing else None,
                    "v": o.revision,
                }
                for o in organisations
            ]
        ),
        now,
    )


async def mark_created(conn: asyncpg.Connection, created: Sequence[tuple[str, datetime]]) -> None:
    """Remember when (locked) organisations were created (the directory's word; the first)."""
    if not created:
        return
    await conn.execute(
        """UPDATE organisations AS t SET created_at = n.c
           FROM unnest($1::text[], $2::timestamptz[]) AS n(o, c)
           WHERE t.organisation_id = n.o AND t.created_at IS NULL""",
        [o for o, _ in created],
        [c for _, c in created],
    )


async def lock_members(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], MemberState]:
    locked = await directory.lock(conn, keys)
    return {
        key: MemberState(c.organisation_id, c.member_id, c.role, c.status, c.sequence)
        for key, c in locked.items()
    }


async def save_members(
    conn: asyncpg.Connection, members: Sequence[MemberState], now: datetime
) -> None:
    """Store member states the caller found newer than the stored ones (one per member)."""
    await directory.save(
        conn,
        [
            directory.MemberChange(m.organisation_id, m.member_id, m.role, m.status, m.sequence)
            for m in members
        ],
        now,
    )


def _rows(rows: list[dict[str, object]]) -> str:
    """Many rows as one JSON parameter (`jsonb_to_recordset`): one string to encode, instead
    of arrays whose every element the driver inspects."""
    return orjson.dumps(rows).decode()


async def members(
    conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str
) -> list[MemberState]:
    rows = await conn.fetch(
        """SELECT member_id, role, status, sequence FROM directory_members
           WHERE organisation_id = $1
           ORDER BY member_id""",
        organisation_id,
    )
    return [
        MemberState(organisation_id, r[0], MemberRole(r[1]), MemberStatus(r[2]), r[3]) for r in rows
    ]


# Quantity syncs -------------------------------------------------------------------------------


async def pending_syncs(
    conn: asyncpg.Connection, organisation_ids: Sequence[str]
) -> dict[str, QuantitySync]:
    rows = await conn.fetch(
        """SELECT organisation_id, quantity, revision, due_at FROM quantity_syncs
           WHERE organisation_id = ANY($1::text[]) AND pending""",
        list(organisation_ids),
    )
    return {r[0]: QuantitySync(r[1], r[2], r[3]) for r in rows}


async def want_quantities(conn: asyncpg.Connection, syncs: dict[str, QuantitySync]) -> None:
    """Set the quantity each organisation should have in Stripe, pending until sent."""
    if not syncs:
        return
    await conn.execute(
        """INSERT INTO quantity_syncs (organisation_id, quantity, revision, due_at, pending)
           SELECT o, q, r, d, true
           FROM unnest($1::text[], $2::int[], $3::bigint[], $4::timestamptz[]) AS n(o, q, r, d)
           ON CONFLICT (organisation_id) DO UPDATE
               SET quantity = excluded.quantity, revision = excluded.revision,
                   due_at = excluded.due_at, pending = true
               WHERE quantity_syncs.revision < excluded.revision""",
        list(syncs),
        [s.quantity for s in syncs.values()],
        [s.revision for s in syncs.values()],
        [s.due_at for s in syncs.values()],
    )


async def drop_pending(conn: asyncpg.Connection, organisation_ids: Sequence[str]) -> None:
    """Forget quantities not sent yet (the organisation no longer pays per seat in Stripe)."""
    if organisation_ids:
        await conn.execute(
            "UPDATE quantity_syncs SET pending = false WHERE organisation_id = ANY($1::text[])",
            list(organisation_ids),
        )


async def take_due_syncs(
    conn: asyncpg.Connection, now: datetime, limit: int
) -> list[tuple[str, QuantitySync]]:
    """Lock pending quantities that are due, skipping those another instance holds, and mark
    them sent (the caller enqueues their commands in the same transaction)."""
    rows = await conn.fetch(
        """WITH due AS (
               SELECT organisation_id FROM quantity_syncs
               WHERE pending AND due_at <= $1
               ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED)
           UPDATE quantity_syncs q
           SET pending = false, sent_quantity = q.quantity, sent_revision = q.revision,
               sent_at = $1
           FROM due WHERE q.organisation_id = due.organisation_id
           RETURNING q.organisation_id, q.quantity, q.revision, q.due_at""",
        now,
        limit,
    )
    return [(r[0], QuantitySync(r[1], r[2], r[3])) for r in rows]
