"""Stripe webhooks: verified, stored and answered by the gateway in its own process, at a
steady rate, beside what that costs at the least: the signature verification alone (the same
SDK call, in a loop) and a bare insert of the same rows, one committed statement per webhook,
at the same rate and concurrency."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import orjson
import stripe

from services.stripe_gateway.app import SERVICE
from services.stripe_gateway.devstripe.app import sign
from services.stripe_gateway.settings import DEV_WEBHOOK_SECRET
from shared.db import apply_migrations
from shared.topics import ensure_topics

from .httpload import Outcome, latencies, open_loop, paced
from .process import ServiceProcess

PATH = "/stripe/webhook"


def _event(n: int) -> bytes:
    suffix = uuid.uuid4().hex[:14]
    created = int(time.time())
    return orjson.dumps(
        {
            "id": f"evt_{suffix}",
            "object": "event",
            "api_version": "2025-01-01",
            "created": created,
            "livemode": False,
            "type": "customer.subscription.created",
            "data": {
                "object": {
                    "id": f"sub_{suffix}",
                    "object": "subscription",
                    "customer": f"cus_{suffix}",
                    "status": "active",
                    "cancel_at_period_end": False,
                    "metadata": {"organisation_id": f"org_bench{n % 1000}"},
                    "items": {
                        "object": "list",
                        "data": [
                            {
                                "id": f"si_{suffix}",
                                "quantity": 1 + n % 9,
                                "price": {"id": "price_pro_monthly"},
                                "current_period_start": created,
                                "current_period_end": created + 30 * 86400,
                            }
                        ],
                    },
                }
            },
        }
    )


def _request(payload: bytes) -> bytes:
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Stripe-Signature: {sign(payload, DEV_WEBHOOK_SECRET, int(time.time()))}\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def _latency(outcome: Outcome) -> dict[str, Any]:
    return {
        "requests": len(outcome.latencies_ms),
        "errors": outcome.errors,
        "achieved_per_second": round(len(outcome.latencies_ms) / outcome.seconds),
        **latencies(outcome.latencies_ms),
    }


async def through_the_gateway(
    kafka: str, database: str, *, rate: int, seconds: float, process: bool = True
) -> dict[str, Any]:
    schema, prefix = f"bench_{uuid.uuid4().hex[:8]}", f"bench{uuid.uuid4().hex[:8]}."
    await ensure_topics(kafka, prefix)
    payloads = [_event(n) for n in range(int(rate * seconds))]
    async with ServiceProcess(
        "services.stripe_gateway",
        SERVICE.env_prefix,
        kafka,
        database,
        schema,
        prefix,
        extra={"STRIPE_GATEWAY_PROCESS_INBOX": str(process).lower()},
    ) as gateway:
        outcome = await open_loop(
            "127.0.0.1",
            gateway.port,
            lambda n: _request(payloads[n]),
            rate=rate,
            seconds=seconds,
            connections=32,
        )
        conn = await asyncpg.connect(database, server_settings={"search_path": schema})
        try:
            started = time.perf_counter()
            while process and await conn.fetchval(  # noqa: ASYNC110
                "SELECT count(*) FROM inbox WHERE status = 'pending'"
            ):
                await asyncio.sleep(0.05)
            drained = time.perf_counter() - started
            stored = await conn.fetchval("SELECT count(*) FROM inbox")
            done = await conn.fetchval("SELECT count(*) FROM inbox WHERE status = 'done'")
        finally:
            await conn.close()
    assert stored == len(payloads), f"{stored} stored of {len(payloads)}"
    assert done == (stored if process else 0), f"{done} done of {stored}"
    return {
        **_latency(outcome),
        "stored": stored,
        "processed": done,
        "processing_behind_seconds": round(drained, 2),
    }


def verification_ceiling(count: int = 5_000) -> dict[str, Any]:
    """The SDK's signature verification alone, as the gateway calls it."""
    now = int(time.time())
    signed = [(p, sign(p, DEV_WEBHOOK_SECRET, now)) for p in (_event(n) for n in range(count))]
    started = time.perf_counter()
    for payload, signature in signed:
        stripe.WebhookSignature.verify_header(payload, signature, DEV_WEBHOOK_SECRET, 300)
    seconds = time.perf_counter() - started
    return {"per_verification_us": round(seconds / count * 1e6, 1)}


async def insert_ceiling(database: str, *, rate: int, seconds: float) -> dict[str, Any]:
    """The same rows inserted one committed statement each, at the same rate, from 32
    connections: latency from the scheduled time."""
    schema = f"ceiling_{uuid.uuid4().hex[:8]}"
    await apply_migrations(database, schema, SERVICE.all_migrations)
    pool = await asyncpg.create_pool(
        database, min_size=32, max_size=32, server_settings={"search_path": schema}
    )
    try:
        payloads = [_event(n) for n in range(int(rate * seconds))]

        async def one(n: int) -> None:
            payload = payloads[n]
            event = orjson.loads(payload)
            async with pool.acquire() as conn:
                await conn.execute(
                    """INSERT INTO inbox (event_id, type, created, payload, status,
                                          next_attempt_at, received_at)
                       VALUES ($1, $2, to_timestamp($3), $4, 'done', now(), now())
                       ON CONFLICT (event_id) DO NOTHING""",
                    event["id"],
                    event["type"],
                    event["created"],
                    payload,
                )

        waits = await paced(rate, len(payloads), one)
    finally:
        await pool.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await pool.close()
    return latencies(waits)
