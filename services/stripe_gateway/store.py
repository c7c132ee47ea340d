"""SQL for the gateway's schema. Functions take a connection; the caller owns the transaction.
Rows leave as typed objects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from shared.events.stripe import SubscriptionStatus

from .domain.stripe_objects import Known, Subscription, Version

# Organisations and customers --------------------------------------------------------------------


async def customer_of(conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str) -> str | None:
    return await conn.fetchval(
        "SELECT customer_id FROM organisations WHERE organisation_id = $1", organisation_id
    )


async def organisation_of(conn: asyncpg.Connection, customer_id: str) -> str | None:
    return await conn.fetchval(
        "SELECT organisation_id FROM organisations WHERE customer_id = $1", customer_id
    )


async def remember_customer(
    conn: asyncpg.Connection, organisation_id: str, customer_id: str, now: datetime
) -> str:
    """Record the organisation's customer unless it has one; returns the one recorded."""
    return await conn.fetchval(
        """INSERT INTO organisations (organisation_id, customer_id, updated_at)
           VALUES ($1, $2, $3)
           ON CONFLICT (organisation_id) DO UPDATE
               SET customer_id = coalesce(organisations.customer_id, excluded.customer_id),
                   updated_at = excluded.updated_at
           RETURNING customer_id""",
        organisation_id,
        customer_id,
        now,
    )


async def advance_quantity_revision(
    conn: asyncpg.Connection, organisation_id: str, revision: int, now: datetime
) -> bool:
    """Lock the organisation's row; False if a revision this new was already applied."""
    applied = await conn.fetchval(
        """INSERT INTO organisations (organisation_id, quantity_revision, updated_at)
           VALUES ($1, -1, $2)
           ON CONFLICT (organisation_id) DO UPDATE SET updated_at = organisations.updated_at
           RETURNING quantity_revision""",
        organisation_id,
        now,
    )
    return revision > applied


async def set_quantity_revision(
    conn: asyncpg.Connection, organisation_id: str, revision: int, now: datetime
) -> None:
    await conn.execute(
        """UPDATE organisations SET quantity_revision = greatest(quantity_revision, $2),
                                    updated_at = $3
           WHERE organisation_id = $1""",
        organisation_id,
        revision,
        now,
    )


# Subscriptions ---------------------------------------------------------------------------------

_SUBSCRIPTION = """subscription_id, organisation_id, customer_id, status, price_id, item_id,
    quantity, period_start, period_end, cancel_at_period_end, deleted, version_created,
    version_event_id"""


def _known(row: asyncpg.Record) -> Known:
    return Known(
        subscription=Subscription(
            subscription_id=row["subscription_id"],
            customer_id=row["customer_id"],
            organisation_id=row["organisation_id"],
            status=SubscriptionStatus(row["status"]),
            price_id=row["price_id"],
            item_id=row["item_id"],
            quantity=row["quantity"],
            period_start=row["period_start"],
            period_end=row["period_end"],
            cancel_at_period_end=row["cancel_at_period_end"],
        ),
        organisation_id=row["organisation_id"],
        deleted=row["deleted"],
        version=Version(row["version_created"], row["version_event_id"]),
    )


async def lock_subscriptions(conn: asyncpg.Connection, subscription_ids: Sequence[str]) -> None:
    """Lock existing subscription rows in ascending order (so that concurrent batches never
    wait on each other in a cycle)."""
    await conn.execute(
        """SELECT 1 FROM subscriptions WHERE subscription_id = ANY($1::text[])
           ORDER BY subscription_id FOR UPDATE""",
        sorted(set(subscription_ids)),
    )


async def lock_subscription(conn: asyncpg.Connection, subscription_id: str) -> Known | None:
    row = await conn.fetchrow(
        f"SELECT {_SUBSCRIPTION} FROM subscriptions WHERE subscription_id = $1 FOR UPDATE",
        subscription_id,
    )
    return None if row is None else _known(row)


async def save_subscription(
    conn: asyncpg.Connection,
    subscription: Subscription,
    *,
    organisation_id: str,
    deleted: bool,
    version: Version,
    now: datetime,
) -> None:
    await conn.execute(
        f"""INSERT INTO subscriptions ({_SUBSCRIPTION}, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
            ON CONFLICT (subscription_id) DO UPDATE SET
                organisation_id = excluded.organisation_id, customer_id = excluded.customer_id,
                status = excluded.status, price_id = excluded.price_id,
                item_id = excluded.item_id, quantity = excluded.quantity,
                period_start = excluded.period_start, period_end = excluded.period_end,
                cancel_at_period_end = excluded.cancel_at_period_end,
                deleted = subscriptions.deleted OR excluded.deleted,
                version_created = excluded.version_created,
                version_event_id = excluded.version_event_id, updated_at = excluded.updated_at""",
        subscription.subscription_id,
        organisation_id,
        subscription.customer_id,
        subscription.status.value,
        subscription.price_id,
        subscription.item_id,
        subscription.quantity,
        subscription.period_start,
        subscription.period_end,
        subscription.cancel_at_period_end,
        deleted,
        version.created,
        version.event_id,
        now,
    )


async def live_subscription(
    conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str
) -> Known | None:
    """The organisation's newest subscription that Stripe has not deleted."""
    row = await conn.fetchrow(
        f"""SELECT {_SUBSCRIPTION} FROM subscriptions
            WHERE organisation_id = $1 AND NOT deleted
            ORDER BY version_created DESC LIMIT 1""",
        organisation_id,
    )
    return None if row is None else _known(row)


# Inbox -----------------------------------------------------------------------------------------


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


_INBOX = "event_id, type, created, payload, status, attempts, last_error, received_at, processed_at"


async def store_event(
    conn: asyncpg.Connection | asyncpg.Pool,
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
        await conn.fetchval(
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
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    reason: str,
    detail: str,
    signature: str | None,
    body_sha256: str,
    body: bytes,
    now: datetime,
) -> None:
    await conn.execute(
        """INSERT INTO webhook_rejections (reason, detail, signature, body_sha256, body_bytes,
                                           body_head, received_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        reason,
        detail[:500],
        signature[:500] if signature else None,
        body_sha256,
        len(body),
        body[:2048],
        now,
    )


async def due_events(
    conn: asyncpg.Connection | asyncpg.Pool, now: datetime, limit: int
) -> list[str]:
    rows = await conn.fetch(
        """SELECT event_id FROM inbox
           WHERE status = 'pending' AND next_attempt_at <= $1
           ORDER BY created, seq LIMIT $2""",
        now,
        limit,
    )
    return [r["event_id"] for r in rows]


async def claim_due(conn: asyncpg.Connection, now: datetime, limit: int) -> list[InboxEvent]:
    """Lock up to `limit` due events, in Stripe's order, skipping those another instance has."""
    rows = await conn.fetch(
        f"""SELECT {_INBOX} FROM inbox
            WHERE status = 'pending' AND next_attempt_at <= $1
            ORDER BY created, seq LIMIT $2
            FOR UPDATE SKIP LOCKED""",
        now,
        limit,
    )
    return [InboxEvent(*r.values()) for r in rows]


async def finish_events(conn: asyncpg.Connection, event_ids: Sequence[str], now: datetime) -> None:
    await conn.execute(
        """UPDATE inbox SET status = 'done', attempts = attempts + 1, processed_at = $2,
                            last_error = NULL
           WHERE event_id = ANY($1::text[])""",
        list(event_ids),
        now,
    )


async def claim_event(conn: asyncpg.Connection, event_id: str) -> InboxEvent | None:
    """Lock a pending event for processing; None if it is done or another instance has it."""
    row = await conn.fetchrow(
        f"""SELECT {_INBOX} FROM inbox WHERE event_id = $1 AND status = 'pending'
            FOR UPDATE SKIP LOCKED""",
        event_id,
    )
    return None if row is None else InboxEvent(*row.values())


async def finish_event(conn: asyncpg.Connection, event_id: str, now: datetime) -> None:
    await conn.execute(
        """UPDATE inbox SET status = 'done', attempts = attempts + 1, processed_at = $2,
                            last_error = NULL
           WHERE event_id = $1""",
        event_id,
        now,
    )


async def fail_event(
    conn: asyncpg.Connection | asyncpg.Pool,
    event_id: str,
    *,
    error: str,
    retry_at: datetime,
    park: bool,
    now: datetime,
) -> int:
    """Count a failed attempt; park the event if `park`, else schedule it. Returns attempts."""
    return await conn.fetchval(
        """UPDATE inbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3,
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


async def attempts_of(conn: asyncpg.Connection | asyncpg.Pool, event_id: str) -> int:
    return await conn.fetchval("SELECT attempts FROM inbox WHERE event_id = $1", event_id) or 0


async def replay_event(
    conn: asyncpg.Connection | asyncpg.Pool, event_id: str, now: datetime
) -> bool:
    """Make a parked event pending again, with a fresh count of attempts."""
    return bool(
        await conn.fetchval(
            """UPDATE inbox SET status = 'pending', attempts = 0, next_attempt_at = $2,
                                processed_at = NULL
               WHERE event_id = $1 AND status = 'parked'
               RETURNING true""",
            event_id,
            now,
        )
    )


async def list_events(
    conn: asyncpg.Connection | asyncpg.Pool, *, status: str | None, limit: int
) -> list[InboxEvent]:
    rows = await conn.fetch(
        f"""SELECT {_INBOX} FROM inbox WHERE ($1::text IS NULL OR status = $1)
            ORDER BY seq DESC LIMIT $2""",
        status,
        limit,
    )
    return [InboxEvent(*r.values()) for r in rows]


async def get_event(conn: asyncpg.Connection | asyncpg.Pool, event_id: str) -> InboxEvent | None:
    row = await conn.fetchrow(f"SELECT {_INBOX} FROM inbox WHERE event_id = $1", event_id)
    return None if row is None else InboxEvent(*row.values())


# Commands --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandRecord:
    command_id: str
    organisation_id: str
    type: str
    status: str
    result: dict[str, Any]


async def command(conn: asyncpg.Connection | asyncpg.Pool, command_id: str) -> CommandRecord | None:
    row = await conn.fetchrow(
        "SELECT command_id, organisation_id, type, status, result FROM commands "
        "WHERE command_id = $1",
        command_id,
    )
    if row is None:
        return None
    return CommandRecord(
        row["command_id"],
        row["organisation_id"],
        row["type"],
        row["status"],
        orjson.loads(row["result"]),
    )


async def record_command(
    conn: asyncpg.Connection,
    *,
    command_id: str,
    organisation_id: str,
    type: str,
    status: str,
    result: dict[str, Any],
    now: datetime,
) -> None:
    """Remember how a command ended (a failed one may be executed again, by a replay)."""
    await conn.execute(
        """INSERT INTO commands (command_id, organisation_id, type, status, result, executed_at)
           VALUES ($1, $2, $3, $4, $5::jsonb, $6)
           ON CONFLICT (command_id) DO UPDATE
               SET status = excluded.status, result = excluded.result,
                   executed_at = excluded.executed_at
               WHERE commands.status = 'failed'""",
        command_id,
        organisation_id,
        type,
        status,
        orjson.dumps(result).decode(),
        now,
    )


async def subscriptions_of(
    conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str
) -> Sequence[Known]:
    rows = await conn.fetch(
        f"""SELECT {_SUBSCRIPTION} FROM subscriptions WHERE organisation_id = $1
            ORDER BY version_created DESC""",
        organisation_id,
    )
    return [_known(r) for r in rows]
