"""Commands, claimed before Stripe is called and recorded with their outcome; and the seat
quantities, sent within Stripe's budget."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg
import orjson

Db = asyncpg.Connection | asyncpg.Pool


class Claim(StrEnum):
    CLAIMED = "claimed"
    """This caller runs the command now."""
    SUCCEEDED = "succeeded"
    """It ran before: its recorded result is the answer."""
    RUNNING = "running"
    """Another caller runs it now: wait for its outcome."""
    CONFLICT = "conflict"
    """The same id was used for another request."""


@dataclass(frozen=True, slots=True)
class Claimed:
    claim: Claim
    result: dict[str, Any]


async def claim(
    db: Db,
    *,
    key: str,
    organisation_id: str,
    type: str,
    fingerprint: str,
    now: datetime,
    until: datetime,
) -> Claimed:
    """Claim the command `key` until `until`: a new command, a failed one (run again), or one
    whose claim lapsed (its holder died; Stripe answers the same key with the same object)."""
    taken = await db.fetchval(
        """INSERT INTO commands (command_id, organisation_id, type, status, result, executed_at,
                                 fingerprint, claimed_until)
           VALUES ($1, $2, $3, 'running', '{}', $5, $4, $6)
           ON CONFLICT (command_id) DO UPDATE
               SET status = 'running', claimed_until = excluded.claimed_until,
                   attempts = commands.attempts + 1, executed_at = excluded.executed_at
               WHERE commands.fingerprint IS NOT DISTINCT FROM excluded.fingerprint
                 AND (commands.status = 'failed'
                      OR (commands.status = 'running' AND commands.claimed_until <= $5))
           RETURNING true""",
        key,
        organisation_id,
        type,
        fingerprint,
        now,
        until,
    )
    if taken:
        return Claimed(Claim.CLAIMED, {})
    row = await db.fetchrow(
        "SELECT status, result, fingerprint FROM commands WHERE command_id = $1", key
    )
    if row is None:  # removed meanwhile: try again
        return Claimed(Claim.RUNNING, {})
    if row["fingerprint"] != fingerprint:
        return Claimed(Claim.CONFLICT, {})
    if row["status"] == "succeeded":
        return Claimed(Claim.SUCCEEDED, orjson.loads(row["result"]))
    return Claimed(Claim.RUNNING, {})


async def release(db: Db, key: str, now: datetime) -> None:
    """Give up a claim at once (the run broke before any outcome): the next try takes it."""
    await db.execute(
        """UPDATE commands SET claimed_until = $2
           WHERE command_id = $1 AND status = 'running'""",
        key,
        now,
    )


async def finish(db: Db, key: str, *, status: str, result: dict[str, Any], now: datetime) -> None:
    """Record how a claimed command ended (a failed one may run again, on a replay)."""
    await db.execute(
        """UPDATE commands SET status = $2, result = $3::jsonb, executed_at = $4,
                               claimed_until = NULL
           WHERE command_id = $1""",
        key,
        status,
        orjson.dumps(result).decode(),
        now,
    )


# Seat quantities -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quantity:
    organisation_id: str
    wanted: int
    wanted_revision: int
    sent: int | None
    sends: int
    sent_times: tuple[datetime, ...]


def _quantity(row: asyncpg.Record) -> Quantity:
    return Quantity(
        row["organisation_id"],
        row["wanted"],
        row["wanted_revision"],
        row["sent"],
        row["sends"],
        tuple(row["sent_times"]),
    )


async def want_quantity(
    db: Db, organisation_id: str, quantity: int, revision: int, now: datetime
) -> bool:
    """Keep the newest count asked for (by revision); due at once. False if a newer or equal
    revision was asked before."""
    return bool(
        await db.fetchval(
            """INSERT INTO quantities (organisation_id, wanted, wanted_revision, due_at, updated_at)
               VALUES ($1, $2, $3, $4, $4)
               ON CONFLICT (organisation_id) DO UPDATE
                   SET wanted = excluded.wanted, wanted_revision = excluded.wanted_revision,
                       due_at = greatest(coalesce(quantities.due_at, excluded.due_at),
                                         excluded.due_at),
                       updated_at = excluded.updated_at
                   WHERE quantities.wanted_revision < excluded.wanted_revision
               RETURNING true""",
            organisation_id,
            quantity,
            revision,
            now,
        )
    )


async def due_quantities(db: Db, now: datetime, limit: int) -> list[Quantity]:
    rows = await db.fetch(
        """SELECT organisation_id, wanted, wanted_revision, sent, sends, sent_times
           FROM quantities WHERE due_at <= $1 ORDER BY due_at LIMIT $2""",
        now,
        limit,
    )
    return [_quantity(r) for r in rows]


async def quantity_of(db: Db, organisation_id: str) -> Quantity | None:
    row = await db.fetchrow(
        """SELECT organisation_id, wanted, wanted_revision, sent, sends, sent_times
           FROM quantities WHERE organisation_id = $1""",
        organisation_id,
    )
    return None if row is None else _quantity(row)


async def quantities_against_stripe(
    db: Db, organisation_id: str | None
) -> list[tuple[str, int, int]]:
    """(organisation, the newest count asked for, the quantity its live subscription holds)
    for every organisation with both."""
    rows = await db.fetch(
        """SELECT q.organisation_id, q.wanted, s.quantity
           FROM quantities q
           JOIN subscriptions s ON s.organisation_id = q.organisation_id AND NOT s.deleted
           WHERE $1::text IS NULL OR q.organisation_id = $1""",
        organisation_id,
    )
    return [(r[0], r[1], r[2]) for r in rows]


async def postpone_quantity(
    db: Db, organisation_id: str, until: datetime | None, error: str | None, now: datetime
) -> None:
    """Not sent now: due again at `until` (None: when a new count or a subscription comes)."""
    await db.execute(
        """UPDATE quantities SET due_at = $2, last_error = $3, updated_at = $4
           WHERE organisation_id = $1""",
        organisation_id,
        until,
        error,
        now,
    )


async def quantity_sent(
    db: Db, organisation_id: str, quantity: int, revision: int, now: datetime
) -> None:
    """A send happened (counted against the hour's budget). If no newer count came meanwhile,
    nothing is due any more."""
    await db.execute(
        """UPDATE quantities SET sent = $2, sends = sends + 1, last_error = NULL,
               sent_times = array_append(
                   ARRAY(SELECT t FROM unnest(sent_times) AS t
                         WHERE t > $4::timestamptz - interval '1 hour' ORDER BY t),
                   $4::timestamptz),
               due_at = CASE WHEN wanted_revision = $3 AND wanted = $2 THEN NULL ELSE due_at END,
               updated_at = $4
           WHERE organisation_id = $1""",
        organisation_id,
        quantity,
        revision,
        now,
    )


async def resend_quantity(db: Db, organisation_id: str, now: datetime) -> None:
    """Stripe holds another quantity than the newest asked for: due again."""
    await db.execute(
        """UPDATE quantities SET due_at = coalesce(due_at, $2), updated_at = $2
           WHERE organisation_id = $1""",
        organisation_id,
        now,
    )
