"""Grant commands applied, and the buckets of credits they made (see the package for the lock
order)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

import asyncpg

from shared.events import GrantReasonV2

from ..domain.buckets import Bucket, Source
from ..domain.credits import GrantCommand


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
            WHERE (organisation_id = ANY($1::text[]) AND live)
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


async def due_buckets(
    conn: asyncpg.Connection | asyncpg.Pool, now: datetime, limit: int
) -> list[str]:
    """Organisations with a bucket past its expiry and credits left in it."""
    rows = await conn.fetch(
        """SELECT DISTINCT organisation_id FROM buckets
           WHERE live AND NOT ends_with_period AND expires_at <= $1
           LIMIT $2""",
        now,
        limit,
    )
    return [r["organisation_id"] for r in rows]
