"""The webhook inbox: every verified event once, claimed by a processor for a while (no
transaction stays open while Stripe is asked), then `done`, retried or `parked`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

Db = asyncpg.Connection | asyncpg.Pool


@dataclass(frozen=True, slots=True)
class InboxEvent:
    event_id: str
    type: str
    created: datetime
    payload: bytes
    status: str
    attempts: int
    last_error: str | None
    received_at: datetime
    processed_at: datetime | None

    def body(self) -> dict[str, Any]:
        return orjson.loads(self.payload)


_COLUMNS = (
    "event_id, type, created, payload, status, attempts, last_error, received_at, processed_at"
)


async def store_event(
    db: Db,
    *,
    event_id: str,
    type: str,
    created: datetime,
    payload: bytes,
    status: str,
    now: datetime,
) -> bool:
    """Keep a verified event once; False if it was received before."""
    return bool(
        await db.fetchval(
            """INSERT INTO inbox (event_id, type, created, payload, status, next_attempt_at,
                                  received_at)
               VALUES ($1, $2, $3, $4, $5, $6, $6)
               ON CONFLICT (event_id) DO NOTHING
               RETURNING true""",
            event_id,
            type,
            created,
            payload,
            status,
            now,
        )
    )


async def record_rejection(
    db: Db,
    *,
    reason: str,
    detail: str,
    signature: str | None,
    body_sha256: str,
    body: bytes,
    now: datetime,
    per_minute: int,
) -> bool:
    """Record a refused request unless `per_minute` were recorded in the last minute (a
    sample: the requests are unauthenticated). True if recorded."""
    recorded = await db.fetchval(
        """INSERT INTO webhook_rejections (reason, detail, signature, body_sha256, body_bytes,
                                           body_head, received_at)
           SELECT $1, $2, $3, $4, $5, $6, $7
           WHERE (SELECT count(*) FROM webhook_rejections
                  WHERE received_at > $7::timestamptz - interval '1 minute') < $8
           RETURNING true""",
        reason,
        detail[:500],
        signature[:500] if signature else None,
        body_sha256,
        len(body),
        body[:512],
        now,
        per_minute,
    )
    return bool(recorded)


async def prune_rejections(db: Db, before: datetime) -> int:
    """Delete recorded refusals received before `before`; returns how many."""
    deleted = await db.execute("DELETE FROM webhook_rejections WHERE received_at < $1", before)
    return int(deleted.split()[-1])


async def claim_due(db: Db, now: datetime, until: datetime, limit: int) -> list[InboxEvent]:
    """Claim up to `limit` due events until `until` (one statement, no transaction left
    open): events another processor holds are skipped; a claim whose holder died lapses."""
    rows = await db.fetch(
        f"""UPDATE inbox SET claimed_until = $2
            WHERE event_id IN (
                SELECT event_id FROM inbox
                WHERE status = 'pending' AND next_attempt_at <= $1
                  AND (claimed_until IS NULL OR claimed_until <= $1)
                ORDER BY next_attempt_at, seq LIMIT $3
                FOR UPDATE SKIP LOCKED)
            RETURNING {_COLUMNS}""",
        now,
        until,
        limit,
    )
    return [InboxEvent(*r.values()) for r in rows]


async def finish_events(db: Db, event_ids: Sequence[str], now: datetime) -> None:
    await db.execute(
        """UPDATE inbox SET status = 'done', attempts = attempts + 1, processed_at = $2,
                            last_error = NULL, claimed_until = NULL
           WHERE event_id = ANY($1::text[]) AND status = 'pending'""",
        list(event_ids),
        now,
    )


async def fail_event(
    db: Db, event_id: str, *, error: str, retry_at: datetime, park: bool, now: datetime
) -> int | None:
    """Count a failed attempt; park the event if `park`, else schedule it. Returns attempts."""
    return await db.fetchval(
        """UPDATE inbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3,
                            claimed_until = NULL,
                            status = CASE WHEN $4::boolean THEN 'parked' ELSE 'pending' END,
                            processed_at = CASE WHEN $4::boolean THEN $5::timestamptz END
           WHERE event_id = $1 AND status = 'pending'
           RETURNING attempts""",
        event_id,
        error[:1000],
        retry_at,
        park,
        now,
    )


async def attempts_of(db: Db, event_id: str) -> int:
    return await db.fetchval("SELECT attempts FROM inbox WHERE event_id = $1", event_id) or 0


async def replay_event(db: Db, event_id: str, now: datetime) -> bool:
    """Make a parked event pending again, with a fresh count of attempts."""
    return bool(
        await db.fetchval(
            """UPDATE inbox SET status = 'pending', attempts = 0, next_attempt_at = $2,
                                processed_at = NULL, claimed_until = NULL
               WHERE event_id = $1 AND status = 'parked'
               RETURNING true""",
            event_id,
            now,
        )
    )


async def list_events(db: Db, *, status: str | None, limit: int) -> list[InboxEvent]:
    rows = await db.fetch(
        f"""SELECT {_COLUMNS} FROM inbox WHERE ($1::text IS NULL OR status = $1)
            ORDER BY seq DESC LIMIT $2""",
        status,
        limit,
    )
    return [InboxEvent(*r.values()) for r in rows]


async def get_event(db: Db, event_id: str) -> InboxEvent | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM inbox WHERE event_id = $1", event_id)
    return None if row is None else InboxEvent(*row.values())


async def parked_count(db: Db) -> int:
    return await db.fetchval("SELECT count(*) FROM inbox WHERE status = 'parked'")
