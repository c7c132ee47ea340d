"""Credit authorization, through the HTTP API of a metering process, beside the raw PostgreSQL
ceiling measured in the same run:

- hot: one organisation, many concurrent callers (closed loop). The wallet covers fewer
  estimates than there are requests, so the run also shows that exactly as many are approved
  as the credits cover. Ceiling: one conditional single-row update per request, committed,
  from as many concurrent connections, straight into PostgreSQL;
- spread: 1,000 organisations at a steady rate (open loop), latency from the caller. Beside it,
  the same single-row update, committed, at the same steady rate over 1,000 rows.
- zero overspend: after each run, what approved decisions hold never exceeds what was granted.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import asyncpg
import orjson

from services.metering.app import SERVICE
from services.metering.settings import DEV_API_TOKEN
from shared.db import apply_migrations
from shared.testing import produce
from shared.topics import CREDIT_GRANT_REQUESTS, ensure_topics

from .httpload import Outcome, closed_loop, latencies, open_loop, paced, request_bytes
from .metering import MeteringProcess

HOT = "org_hot"
SPREAD = [f"org_spread{i}" for i in range(1_000)]
PATH = "/v1/authorizations"


def _grant(organisation: str, amount: int) -> tuple[bytes, bytes]:
    event = {
        "event_id": str(uuid.uuid4()),
        "type": "credit_grant.requested.v1",
        "organisation_id": organisation,
        "occurred_at": "2026-11-01T00:00:00Z",
        "producer": "bench",
        "data": {
            "period_key": "bench",
            "amount": amount,
            "reason": "plan_start",
            "period_start": "2026-11-01T00:00:00Z",
            "period_end": "2026-12-01T00:00:00Z",
            "plan": "max",
            "note": None,
        },
    }
    return organisation.encode(), orjson.dumps(event)


def _ask(organisation: str) -> bytes:
    return request_bytes(
        PATH,
        DEV_API_TOKEN,
        {
            "organisation_id": organisation,
            "member_id": "member_bench",
            "message_id": f"msg_{uuid.uuid4().hex}",
            "agent_id": "agent_bench",
            "estimate": 1,
        },
    )


def _latency(outcome: Outcome) -> dict[str, float]:
    return latencies(outcome.latencies_ms)


async def _overspend(conn: asyncpg.Connection, organisations: list[str]) -> dict[str, int]:
    """Across `organisations`: granted credits, credits held by approved decisions, and by how
    much the second exceeds the first (must be 0: nothing was settled, so no overshoot)."""
    row = await conn.fetchrow(
        """SELECT (SELECT coalesce(sum(amount), 0) FROM grants
                   WHERE organisation_id = ANY($1))::bigint AS granted,
                  (SELECT coalesce(sum(estimate), 0) FROM authorizations
                   WHERE organisation_id = ANY($1) AND decision = 'allowed')::bigint AS held,
                  (SELECT coalesce(sum(held), 0) FROM wallets
                   WHERE organisation_id = ANY($1))::bigint AS wallet_held""",
        organisations,
    )
    return {
        "granted": row["granted"],
        "held_by_approved": row["held"],
        "wallet_held": row["wallet_held"],
        "overspend": max(0, row["held"] - row["granted"]),
    }


async def _quiet(conn: asyncpg.Connection) -> None:
    """Let the previous phase's announcements leave the outbox before measuring again."""
    while await conn.fetchval("SELECT count(*) FROM outbox"):  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)


async def through_the_api(
    kafka: str,
    database: str,
    *,
    hot_requests: int,
    hot_credits: int,
    connections: int,
    spread_rates: list[int],
    spread_seconds: float,
) -> dict[str, Any]:
    schema, prefix = f"bench_{uuid.uuid4().hex[:8]}", f"bench{uuid.uuid4().hex[:8]}."
    await ensure_topics(kafka, prefix)
    async with MeteringProcess(kafka, database, schema, prefix) as metering:
        conn = await asyncpg.connect(database, server_settings={"search_path": schema})
        try:
            await produce(
                kafka,
                CREDIT_GRANT_REQUESTS.topic(prefix),
                [_grant(HOT, hot_credits), *(_grant(o, 1_000_000) for o in SPREAD)],
            )
            while await conn.fetchval("SELECT count(*) FROM grants") < 1 + len(SPREAD):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            hot_asks = iter([_ask(HOT) for _ in range(hot_requests)])
            hot = await closed_loop("127.0.0.1", metering.port, hot_asks, connections=connections)
            hot_check = await _overspend(conn, [HOT])
            rng = random.Random(5)
            spreads = {}
            for rate in spread_rates:
                await _quiet(conn)
                spreads[rate] = await open_loop(
                    "127.0.0.1",
                    metering.port,
                    lambda _: _ask(rng.choice(SPREAD)),
                    rate=rate,
                    seconds=spread_seconds,
                )
            spread_check = await _overspend(conn, SPREAD)
        finally:
            await conn.close()
    approved = sum(1 for b in hot.bodies if b["decision"] == "allowed")
    return {
        "hot": {
            "requests": hot_requests,
            "connections": connections,
            "credits_granted": hot_credits,
            "approved": approved,
            "errors": hot.errors,
            "per_second": round(hot_requests / hot.seconds),
            **_latency(hot),
            **hot_check,
        },
        "spread": {
            "organisations": len(SPREAD),
            "by_rate": {
                str(rate): {
                    "requests": len(outcome.latencies_ms),
                    "errors": outcome.errors,
                    "achieved_per_second": round(len(outcome.latencies_ms) / outcome.seconds),
                    **_latency(outcome),
                }
                for rate, outcome in spreads.items()
            },
            **spread_check,
        },
    }


async def postgres_ceiling(
    database: str, *, hot_requests: int, connections: int, spread_rate: int, spread_seconds: float
) -> dict[str, Any]:
    """One conditional single-row update per request, committed (autocommit), straight into
    the same wallets table: the hot row from `connections` connections; then 1,000 rows at the
    spread rate, latency from the scheduled time."""
    schema = f"ceiling_{uuid.uuid4().hex[:8]}"
    await apply_migrations(database, schema, SERVICE.all_migrations)
    pool = await asyncpg.create_pool(
        database,
        min_size=connections,
        max_size=connections,
        server_settings={"search_path": schema},
    )
    update = """UPDATE wallets SET held = held + 1
                WHERE organisation_id = $1 AND balance - held >= 1"""
    try:
        await pool.execute(
            """INSERT INTO wallets (organisation_id, balance, created_at, updated_at)
               SELECT o, 1000000000, now(), now() FROM unnest($1::text[]) AS o""",
            [HOT, *SPREAD],
        )
        remaining = iter(range(hot_requests))

        async def hot_caller() -> None:
            async with pool.acquire() as conn:
                statement = await conn.prepare(update)
                for _ in remaining:
                    await statement.fetch(HOT)

        started = time.perf_counter()
        await asyncio.gather(*(hot_caller() for _ in range(connections)))
        hot_seconds = time.perf_counter() - started

        rng = random.Random(5)

        async def one(_: int) -> None:
            async with pool.acquire() as conn:
                await conn.execute(update, rng.choice(SPREAD))

        waits = await paced(spread_rate, int(spread_rate * spread_seconds), one)
    finally:
        await pool.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await pool.close()
    spread = latencies(waits)
    return {
        "hot_per_second": round(hot_requests / hot_seconds),
        "spread_p50_ms": spread["p50_ms"],
        "spread_p99_ms": spread["p99_ms"],
    }


async def api_apart(kafka: str, database: str, *, rate: int, seconds: float) -> dict[str, Any]:
    """The spread again, with metering as two processes on one schema: the HTTP API alone
    (`RUN_CONSUMERS=false`, `RUN_RELAY=false`) and the consumers with the outbox relay."""
    schema, prefix = f"bench_{uuid.uuid4().hex[:8]}", f"bench{uuid.uuid4().hex[:8]}."
    await ensure_topics(kafka, prefix)
    async with MeteringProcess(kafka, database, schema, prefix):
        async with MeteringProcess(
            kafka,
            database,
            schema,
            prefix,
            extra={"METERING_RUN_CONSUMERS": "false", "METERING_RUN_RELAY": "false"},
        ) as api:
            conn = await asyncpg.connect(database, server_settings={"search_path": schema})
            try:
                await produce(
                    kafka,
                    CREDIT_GRANT_REQUESTS.topic(prefix),
                    [_grant(o, 1_000_000) for o in SPREAD],
                )
                while await conn.fetchval("SELECT count(*) FROM grants") < len(SPREAD):  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
                await _quiet(conn)
                rng = random.Random(5)
                outcome = await open_loop(
                    "127.0.0.1",
                    api.port,
                    lambda _: _ask(rng.choice(SPREAD)),
                    rate=rate,
                    seconds=seconds,
                )
                check = await _overspend(conn, SPREAD)
            finally:
                await conn.close()
    return {
        "rate": rate,
        "requests": len(outcome.latencies_ms),
        "errors": outcome.errors,
        **_latency(outcome),
        **check,
    }
