"""SQL for credit purchases and auto-recharge rules. Functions take a connection; the caller
owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from .domain.packs import AutoRecharge, Purchase, Source, Status

Db = asyncpg.Connection | asyncpg.Pool

_PURCHASE = """purchase_id, organisation_id, pack, credits, price, currency, valid_days, source,
    status, payment_intent_id, payment_version, refunded, clawed_back, failure_code, paid_at"""


def _purchase(row: asyncpg.Record) -> Purchase:
    return Purchase(
        **{
            **dict(row),
            "source": Source(row["source"]),
            "status": Status(row["status"]),
        }
    )


async def add_purchase(
    conn: Db, purchase: Purchase, *, requested_by: str | None, now: datetime
) -> None:
    await conn.execute(
        f"""INSERT INTO credit_purchases ({_PURCHASE}, requested_by, created_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                    $17)""",
        *_values(purchase),
        requested_by,
        now,
    )


def _values(p: Purchase) -> tuple:
    return (
        p.purchase_id,
        p.organisation_id,
        p.pack,
        p.credits,
        p.price,
        p.currency,
        p.valid_days,
        p.source.value,
        p.status.value,
        p.payment_intent_id,
        p.payment_version,
        p.refunded,
        p.clawed_back,
        p.failure_code,
        p.paid_at,
    )


async def checkout_opened(db: Db, purchase_id: str, url: str) -> None:
    await db.execute(
        "UPDATE credit_purchases SET checkout_url = $2 WHERE purchase_id = $1", purchase_id, url
    )


async def lock_purchase(conn: asyncpg.Connection, purchase_id: str) -> Purchase | None:
    row = await conn.fetchrow(
        f"SELECT {_PURCHASE} FROM credit_purchases WHERE purchase_id = $1 FOR UPDATE",
        purchase_id,
    )
    return None if row is None else _purchase(row)


async def save_purchase(conn: asyncpg.Connection, purchase: Purchase, now: datetime) -> None:
    await conn.execute(
        """UPDATE credit_purchases
           SET status = $2, payment_intent_id = $3, payment_version = $4, refunded = $5,
               clawed_back = $6, failure_code = $7, paid_at = $8, updated_at = $9
           WHERE purchase_id = $1""",
        purchase.purchase_id,
        purchase.status.value,
        purchase.payment_intent_id,
        purchase.payment_version,
        purchase.refunded,
        purchase.clawed_back,
        purchase.failure_code,
        purchase.paid_at,
        now,
    )


async def purchases_of(db: Db, organisation_id: str, limit: int) -> list[Purchase]:
    rows = await db.fetch(
        f"""SELECT {_PURCHASE} FROM credit_purchases WHERE organisation_id = $1
            ORDER BY created_at DESC, purchase_id DESC LIMIT $2""",
        organisation_id,
        limit,
    )
    return [_purchase(r) for r in rows]


async def recharged_since(conn: Db, organisation_id: str, since: datetime) -> int:
    """Credits of the auto-recharges charged (open or paid) since `since`."""
    return await conn.fetchval(
        """SELECT coalesce(sum(credits), 0)::bigint FROM credit_purchases
           WHERE organisation_id = $1 AND source = 'auto_recharge'
             AND status IN ('open', 'paid') AND created_at >= $2""",
        organisation_id,
        since,
    )


_RULE = """organisation_id, enabled, threshold, pack, monthly_cap, armed, crossings, in_flight,
    failures, last_failure, disabled_reason, balance_revision, retry_at"""


async def rule_of(db: Db, organisation_id: str) -> AutoRecharge | None:
    row = await db.fetchrow(
        f"SELECT {_RULE} FROM auto_recharges WHERE organisation_id = $1", organisation_id
    )
    return None if row is None else AutoRecharge(**dict(row))


async def lock_rules(
    conn: asyncpg.Connection, organisations: Sequence[str]
) -> dict[str, AutoRecharge]:
    rows = await conn.fetch(
        f"""SELECT {_RULE} FROM auto_recharges WHERE organisation_id = ANY($1::text[])
            ORDER BY organisation_id FOR UPDATE""",
        sorted(organisations),
    )
    return {r["organisation_id"]: AutoRecharge(**dict(r)) for r in rows}


async def save_rule(
    conn: Db, rule: AutoRecharge, now: datetime, *, updated_by: str | None = None
) -> None:
    await conn.execute(
        f"""INSERT INTO auto_recharges ({_RULE}, updated_by, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
            ON CONFLICT (organisation_id) DO UPDATE SET
                enabled = excluded.enabled, threshold = excluded.threshold,
                pack = excluded.pack, monthly_cap = excluded.monthly_cap,
                armed = excluded.armed, crossings = excluded.crossings,
                in_flight = excluded.in_flight, failures = excluded.failures,
                last_failure = excluded.last_failure,
                disabled_reason = excluded.disabled_reason,
                balance_revision = excluded.balance_revision, retry_at = excluded.retry_at,
                updated_by = coalesce(excluded.updated_by, auto_recharges.updated_by),
                updated_at = excluded.updated_at""",
        rule.organisation_id,
        rule.enabled,
        rule.threshold,
        rule.pack,
        rule.monthly_cap,
        rule.armed,
        rule.crossings,
        rule.in_flight,
        rule.failures,
        rule.last_failure,
        rule.disabled_reason,
        rule.balance_revision,
        rule.retry_at,
        updated_by,
        now,
    )
