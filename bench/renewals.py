"""Monthly renewal at scale: many organisations whose credit period ends at the same instant,
renewed by the subscription service and applied by metering, both in their own processes;
from that instant until the last reset is in metering's ledger. Beside it, in the same run,
metering's grant-apply ceiling: the same number of renewal grants published straight to its
topic, from the first publish until the last is applied."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from services.metering.app import SERVICE as METERING
from services.subscriptions.app import SERVICE as SUBSCRIPTIONS
from shared.db import apply_migrations
from shared.kafka import KeyPlacement, send_batched
from shared.topics import CREDIT_GRANT_REQUESTS, ensure_topics

from .process import ServiceProcess

RESETS = "SELECT count(*) FROM ledger WHERE reason = 'renewal_reset'"


async def _seed(database: str, schema: str, organisations: int, due: datetime) -> None:
    """Free subscriptions whose credit period ends at `due` (as if created a month before)."""
    conn = await asyncpg.connect(database, server_settings={"search_path": schema})
    try:
        await conn.execute(
            """INSERT INTO subscriptions (organisation_id, created_at, plan, standing, anchor,
                   credit_period_start, credit_period_end, cancel_at_period_end,
                   next_renewal_at, revision, updated_at)
               SELECT 'org_renew' || n, $1, 'free', 'active', $1, $1, $2, false, $2, 1, $1
               FROM generate_series(1, $3) AS n""",
            due - timedelta(days=31),
            due,
            organisations,
        )
    finally:
        await conn.close()


async def _wait_for(database: str, schema: str, count: int, started: float) -> float:
    conn = await asyncpg.connect(database, server_settings={"search_path": schema})
    try:
        while True:
            try:
                if await conn.fetchval(RESETS) >= count:
                    return time.perf_counter() - started
            except asyncpg.UndefinedTableError:
                pass
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def through_the_services(kafka: str, database: str, organisations: int) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    subscriptions, metering = (f"bench_{uuid.uuid4().hex[:8]}" for _ in range(2))
    await ensure_topics(kafka, prefix)
    await apply_migrations(database, subscriptions, SUBSCRIPTIONS.all_migrations)
    await apply_migrations(database, metering, METERING.all_migrations)
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=20)
    await _seed(database, subscriptions, organisations, due)
    async with (
        ServiceProcess("services.metering", METERING.env_prefix, kafka, database, metering, prefix),
        ServiceProcess(
            "services.subscriptions",
            SUBSCRIPTIONS.env_prefix,
            kafka,
            database,
            subscriptions,
            prefix,
        ),
    ):
        await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
        started = time.perf_counter()
        seconds = await _wait_for(database, metering, organisations, started)
    conn = await asyncpg.connect(database, server_settings={"search_path": metering})
    try:
        resets = await conn.fetchval(RESETS)
        wallets = await conn.fetchval("SELECT count(*) FROM wallets WHERE balance = 1000")
    finally:
        await conn.close()
    return {
        "organisations": organisations,
        "seconds": round(seconds, 2),
        "per_second": round(organisations / seconds),
        "resets_in_ledger": resets,
        "wallets_at_free_allotment": wallets,
    }


async def grant_ceiling(kafka: str, database: str, organisations: int) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    topic = CREDIT_GRANT_REQUESTS.topic(prefix)
    await ensure_topics(kafka, prefix)
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = now, now + timedelta(days=30)
    records = []
    for n in range(organisations):
        organisation = f"org_ceiling{n}"
        records.append(
            (
                organisation.encode(),
                orjson.dumps(
                    {
                        "event_id": str(uuid.uuid4()),
                        "type": "credit_grant.requested.v1",
                        "organisation_id": organisation,
                        "occurred_at": now.isoformat(),
                        "producer": "bench",
                        "data": {
                            "period_key": f"renew:{start.isoformat()}",
                            "amount": 1000,
                            "reason": "renewal_reset",
                            "period_start": start.isoformat(),
                            "period_end": end.isoformat(),
                            "plan": "free",
                            "note": None,
                        },
                    }
                ),
            )
        )
    async with ServiceProcess(
        "services.metering", METERING.env_prefix, kafka, database, schema, prefix
    ):
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka, acks="all", linger_ms=5, enable_idempotence=False
        )
        await producer.start()
        try:
            placement = KeyPlacement()
            partitions = sorted(await producer.partitions_for(topic))
            started = time.perf_counter()
            await send_batched(
                producer,
                [(topic, placement.partition(topic, k, partitions), k, v, []) for k, v in records],
            )
            seconds = await _wait_for(database, schema, organisations, started)
        finally:
            await producer.stop()
    return {"seconds": round(seconds, 2), "per_second": round(organisations / seconds)}
