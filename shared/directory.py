"""The member directory, projected: each member's newest state, in the service's own schema
(`directory_members`), kept from the directory's topic. One piece for every service that needs
to know who is an active member or an owner of an organisation.

Invariant: per member, the state with the highest `sequence` wins, whatever the order and the
number of deliveries. A service applies `changes(events)` with `apply` in the same transaction
as its own effects of the batch, or lets `projector` do it alone."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

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


async def apply(conn: asyncpg.Connection, found: Sequence[MemberChange], now: datetime) -> None:
    """Keep each member's state with the highest sequence."""
    if not found:
        return
    await conn.executemany(
        """INSERT INTO directory_members
               (organisation_id, member_id, role, status, sequence, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (organisation_id, member_id) DO UPDATE
               SET role = excluded.role, status = excluded.status,
                   sequence = excluded.sequence, updated_at = excluded.updated_at
               WHERE directory_members.sequence < excluded.sequence""",
        [
            (c.organisation_id, c.member_id, c.role.value, c.status.value, c.sequence, now)
            for c in found
        ],
    )


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
            await apply(conn, found, clock.now())
        return []

    return project
