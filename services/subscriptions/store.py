"""SQL for the subscriptions schema. Functions take a connection; the caller owns the
transaction. Rows leave as typed objects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import orjson

from shared.events.subscriptions import Cycle, Plan, Standing

from .domain.catalogue import EnterpriseTerms
from .domain.subscription import StripeFacts, Subscription

# Organisations and members --------------------------------------------------------------------


async def add_organisation(
    conn: asyncpg.Connection,
    organisation_id: str,
    name: str | None,
    created_at: datetime,
    now: datetime,
) -> None:
    await conn.execute(
        """INSERT INTO organisations (organisation_id, name, created_at, known_at)
           VALUES ($1, $2, $3, $4) ON CONFLICT (organisation_id) DO NOTHING""",
        organisation_id,
        name,
        created_at,
        now,
    )


# Subscriptions ---------------------------------------------------------------------------------

_COLUMNS = """organisation_id, created_at, plan, cycle, standing, anchor, credit_period_start,
    credit_period_end, paid_period_end, cancel_at_period_end, pending_plan, pending_cycle,
    stripe_subscription_id, stripe_version, revision, enterprise_credits,
    enterprise_seat_limit, enterprise_features, stripe_facts"""


def _facts_json(facts: StripeFacts | None) -> str | None:
    if facts is None:
        return None
    return orjson.dumps(
        {
            "subscription_id": facts.subscription_id,
            "status": facts.status,
            "price_id": facts.price_id,
            "period_start": facts.period_start,
            "period_end": facts.period_end,
            "cancel_at_period_end": facts.cancel_at_period_end,
            "deleted": facts.deleted,
            "version": facts.version,
            "quantity": facts.quantity,
            "legacy_created": facts.legacy_created,
        }
    ).decode()


def _facts(value: str | None) -> StripeFacts | None:
    if value is None:
        return None
    found = orjson.loads(value)
    for key in ("period_start", "period_end", "legacy_created"):
        if found.get(key) is not None:
            found[key] = datetime.fromisoformat(found[key])
    return StripeFacts(**found)


def _subscription(row: asyncpg.Record) -> Subscription:
    enterprise = (
        EnterpriseTerms(
            row["enterprise_credits"],
            row["enterprise_seat_limit"],
            tuple(orjson.loads(row["enterprise_features"] or "[]")),
        )
        if row["enterprise_credits"] is not None
        else None
    )
    return Subscription(
        organisation_id=row["organisation_id"],
        created_at=row["created_at"],
        plan=Plan(row["plan"]),
        cycle=Cycle(row["cycle"]) if row["cycle"] else None,
        standing=Standing(row["standing"]),
        anchor=row["anchor"],
        credit_period_start=row["credit_period_start"],
        credit_period_end=row["credit_period_end"],
        paid_period_end=row["paid_period_end"],
        cancel_at_period_end=row["cancel_at_period_end"],
        pending_plan=Plan(row["pending_plan"]) if row["pending_plan"] else None,
        pending_cycle=Cycle(row["pending_cycle"]) if row["pending_cycle"] else None,
        stripe_subscription_id=row["stripe_subscription_id"],
        stripe_version=row["stripe_version"],
        revision=row["revision"],
        enterprise=enterprise,
        stripe_facts=_facts(row["stripe_facts"]),
    )


def _values(sub: Subscription) -> tuple[object, ...]:
    terms = sub.enterprise
    return (
        sub.organisation_id,
        sub.created_at,
        sub.plan.value,
        sub.cycle.value if sub.cycle else None,
        sub.standing.value,
        sub.anchor,
        sub.credit_period_start,
        sub.credit_period_end,
        sub.paid_period_end,
        sub.cancel_at_period_end,
        sub.pending_plan.value if sub.pending_plan else None,
        sub.pending_cycle.value if sub.pending_cycle else None,
        sub.stripe_subscription_id,
        sub.stripe_version,
        sub.revision,
        terms.monthly_credits if terms else None,
        terms.seat_limit if terms else None,
        orjson.dumps(list(terms.features)).decode() if terms else None,
        _facts_json(sub.stripe_facts),
        sub.next_renewal_at,
    )


async def add_subscription(conn: asyncpg.Connection, sub: Subscription, now: datetime) -> bool:
    """Store a new organisation's subscription; False if it has one."""
    return bool(
        await conn.fetchval(
            f"""INSERT INTO subscriptions ({_COLUMNS}, next_renewal_at, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                        $17, $18::jsonb, $19::jsonb, $20, $21)
                ON CONFLICT (organisation_id) DO NOTHING
                RETURNING true""",
            *_values(sub),
            now,
        )
    )


async def lock(conn: asyncpg.Connection, organisation_id: str) -> Subscription | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM subscriptions WHERE organisation_id = $1 FOR UPDATE",
        organisation_id,
    )
    return None if row is None else _subscription(row)


async def changed_since(conn: asyncpg.Connection, organisation_id: str, since: datetime) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT updated_at > $2 FROM subscriptions WHERE organisation_id = $1",
            organisation_id,
            since,
        )
    )


async def get(conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str) -> Subscription | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM subscriptions WHERE organisation_id = $1", organisation_id
    )
    return None if row is None else _subscription(row)


async def paid(
    conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str | None
) -> list[Subscription]:
    """The subscriptions paid through Stripe (or the organisation's, whatever its plan)."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM subscriptions
            WHERE ($1::text IS NULL AND stripe_subscription_id IS NOT NULL)
               OR organisation_id = $1""",
        organisation_id,
    )
    return [_subscription(r) for r in rows]


async def lock_due(conn: asyncpg.Connection, now: datetime, limit: int) -> list[Subscription]:
    """Lock up to `limit` subscriptions whose next renewal is due, skipping those another
    instance (or a request) holds: two scheduler instances never take the same one."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM subscriptions
            WHERE next_renewal_at <= $1
            ORDER BY next_renewal_at
            LIMIT $2
            FOR UPDATE SKIP LOCKED""",
        now,
        limit,
    )
    return [_subscription(r) for r in rows]


async def save(
    conn: asyncpg.Connection, subscriptions: Sequence[Subscription], now: datetime
) -> None:
    if not subscriptions:
        return
    columns = [list(column) for column in zip(*(_values(s) for s in subscriptions), strict=True)]
    await conn.execute(
        """UPDATE subscriptions t SET
               plan = s.plan, cycle = s.cycle, standing = s.standing, anchor = s.anchor,
               credit_period_start = s.cps, credit_period_end = s.cpe,
               paid_period_end = s.ppe, cancel_at_period_end = s.cancel,
               pending_plan = s.pp, pending_cycle = s.pc,
               stripe_subscription_id = s.ssid, stripe_version = s.sv, revision = s.revision,
               enterprise_credits = s.ec, enterprise_seat_limit = s.esl,
               enterprise_features = s.ef::jsonb, stripe_facts = s.sf::jsonb,
               next_renewal_at = s.nra, updated_at = $21
           FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                       $6::timestamptz[], $7::timestamptz[], $8::timestamptz[],
                       $9::timestamptz[], $10::boolean[], $11::text[], $12::text[], $13::text[],
                       $14::timestamptz[], $15::bigint[], $16::bigint[], $17::int[],
                       $18::text[], $19::text[], $20::timestamptz[])
               AS s(organisation_id, created_at, plan, cycle, standing, anchor, cps, cpe, ppe,
                    cancel, pp, pc, ssid, sv, revision, ec, esl, ef, sf, nra)
           WHERE t.organisation_id = s.organisation_id""",
        *columns,
        now,
    )


# Checkouts and applied facts -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkout:
    request_id: str
    organisation_id: str
    plan: Plan
    cycle: Cycle


async def add_checkout(
    conn: asyncpg.Connection | asyncpg.Pool, checkout: Checkout, member_id: str, now: datetime
) -> None:
    await conn.execute(
        """INSERT INTO checkouts (request_id, organisation_id, plan, cycle, requested_by,
                                  requested_at)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        checkout.request_id,
        checkout.organisation_id,
        checkout.plan.value,
        checkout.cycle.value,
        member_id,
        now,
    )


async def checkout_opened(
    conn: asyncpg.Connection | asyncpg.Pool, request_id: str, session_id: str, url: str
) -> None:
    await conn.execute(
        "UPDATE checkouts SET session_id = $2, url = $3 WHERE request_id = $1",
        request_id,
        session_id,
        url,
    )


async def checkout(conn: asyncpg.Connection, request_id: str) -> Checkout | None:
    row = await conn.fetchrow(
        "SELECT request_id, organisation_id, plan, cycle FROM checkouts WHERE request_id = $1",
        request_id,
    )
    return None if row is None else Checkout(row[0], row[1], Plan(row[2]), Cycle(row[3]))


async def checkout_completed(conn: asyncpg.Connection, request_id: str, now: datetime) -> None:
    await conn.execute(
        "UPDATE checkouts SET completed_at = $2 WHERE request_id = $1", request_id, now
    )


async def applied(conn: asyncpg.Connection, key: str) -> bool:
    return bool(await conn.fetchval("SELECT true FROM applied WHERE key = $1", key))


async def first_time(conn: asyncpg.Connection, key: str, now: datetime) -> bool:
    """Record `key` as applied; False if it was applied before (a redelivery)."""
    return bool(
        await conn.fetchval(
            """INSERT INTO applied (key, applied_at) VALUES ($1, $2)
               ON CONFLICT (key) DO NOTHING RETURNING true""",
            key,
            now,
        )
    )
