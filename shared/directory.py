"""The member directory, projected: each member's newest state, in the service's own schema
(`directory_members`), kept from the directory's topic. One piece for every service that needs
to know who is an active member or an owner of an organisation.

Invariant: per member, the state with the highest `sequence` wins, whatever the order and the
number of deliveries. A service saves `changes(events)` with `save` in the same transaction
as its own effects of the batch, or lets `projector` do it alone."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from shared.clock import Clock
from shared.db import Migrations
from shared.events import Event
from shared.events.members import MemberRole, MemberStatus, split_directory

MIGRATIONS = Migrations("directory", Path(__file__).parent / "migrations" / "directory")


@dataclass(frozen=True, slots=True)
class MemberChange:
    organisation_id: str
    member_id: str
    role: MemberRole
    status: MemberStatus
    sequence: int


@dataclass(frozen=True, slots=True)
class Member:
    member_id: str
    role: MemberRole
    status: MemberStatus

    @property
    def active(self) -> bool:
        return self.status is MemberStatus.ACTIVE


def changes(events: Iterable[Event]) -> list[MemberChange]:
    """The member changes among the directory's events (organisations created are left out)."""
    _, members = split_directory(events)
    return [
        MemberChange(
            e.organisation_id, e.data.member_id, e.data.role, e.data.status, e.data.sequence
        )
        for e in members
    ]


async def lock(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], MemberChange]:
    """The stored states of these (organisation, member) keys, locked in key order (for a
    service that derives more from them in the same transaction: seats)."""
    rows = await conn.fetch(
        """SELECT m.organisation_id, m.member_id, m.role, m.status, m.sequence
           FROM directory_members m
           JOIN jsonb_to_recordset($1::jsonb) AS k(o text, m text)
             ON m.organisation_id = k.o AND m.member_id = k.m
           ORDER BY m.organisation_id, m.member_id FOR UPDATE OF m""",
        _rows([{"o": o, "m": m} for o, m in keys]),
    )
    return {
        (r[0], r[1]): MemberChange(r[0], r[1], MemberRole(r[2]), MemberStatus(r[3]), r[4])
        for r in rows
    }


async def save(conn: asyncpg.Connection, found: Sequence[MemberChange], now: datetime) -> None:
    """Store these states where they are newer than the stored ones (at most one per member)."""
    if not found:
        return
    await conn.execute(
        """INSERT INTO directory_members
               (organisation_id, member_id, role, status, sequence, updated_at)
           SELECT n.o, n.m, n.r, n.s, n.q, $2
           FROM jsonb_to_recordset($1::jsonb) AS n(o text, m text, r text, s text, q bigint)
           ON CONFLICT (organisation_id, member_id) DO UPDATE
               SET role = excluded.role, status = excluded.status, sequence = excluded.sequence,
                   updated_at = excluded.updated_at
               WHERE directory_members.sequence < excluded.sequence""",
        _rows(
            [
                {
                    "o": c.organisation_id,
                    "m": c.member_id,
                    "r": c.role,
                    "s": c.status,
                    "q": c.sequence,
                }
                for c in _newest(found)
            ]
        ),
        now,
    )


def _newest(found: Sequence[MemberChange]) -> list[MemberChange]:
    newest: dict[tuple[str, str], MemberChange] = {}
    for c in found:
        key = (c.organisation_id, c.member_id)
        if key not in newest or newest[key].sequence < c.sequence:
            newest[key] = c
    return list(newest.values())


def _rows(rows: list[dict[str, object]]) -> str:
    """Many rows as one JSON parameter (`jsonb_to_recordset`): one string to encode, instead
    of arrays whose every element the driver inspects."""
    return orjson.dumps(rows).decode()


async def member(
    conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str, member_id: str
) -> Member | None:
    row = await conn.fetchrow(
        """SELECT member_id, role, status FROM directory_members
           WHERE organisation_id = $1 AND member_id = $2""",
        organisation_id,
        member_id,
    )
    return None if row is None else Member(row[0], MemberRole(row[1]), MemberStatus(row[2]))


async def active_members(conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str) -> int:
    return await conn.fetchval(
        """SELECT count(*) FROM directory_members
           WHERE organisation_id = $1 AND status = 'active'""",
        organisation_id,
    )


def projector(pool: asyncpg.Pool, clock: Clock) -> Any:
    """A consumer's apply (`Kernel.consume`) that only keeps the directory."""

    async def project(items: Sequence[Any]) -> list[Any]:
        found = changes(i.event for i in items)
        async with pool.acquire() as conn, conn.transaction():
            await save(conn, found, clock.now())
        return []

    return project
