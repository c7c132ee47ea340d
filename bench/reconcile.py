"""Reconciliation: one sweep of the Stripe gateway over N paid organisations in devstripe,
beside the raw fetch of the same subscriptions (listing them, page by page, through the same
SDK and pacing, and nothing else). A few of them drifted in Stripe without a webhook; the
sweep must find and repair exactly those."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from services.stripe_gateway.app import SERVICE
from services.stripe_gateway.devstripe import Devstripe
from services.stripe_gateway.settings import DEV_API_KEY
from services.stripe_gateway.stripe_api import StripeApi
from shared.db import apply_migrations
from shared.devstack import free_port
from shared.settings import DEV_API_TOKEN
from shared.topics import ensure_topics

from .process import ServiceProcess

RATE = 100.0
"""Requests per second to Stripe, for the sweep and for the raw fetch (Stripe live mode)."""


async def seed(devstripe: Devstripe, count: int, concurrency: int = 16) -> list[dict[str, Any]]:
    """`count` organisations, each a customer and a Pro subscription in devstripe (the set-up,
    not what is measured)."""
    base = devstripe.url
    async with httpx.AsyncClient(base_url=base, auth=(DEV_API_KEY, ""), timeout=60) as client:
        created: list[dict[str, Any]] = []
        lanes = asyncio.Semaphore(concurrency)

        async def one(n: int) -> None:
            org = f"org_rec{n:06d}"
            async with lanes:
                customer = await client.post(
                    "/v1/customers", data={"metadata[organisation_id]": org}
                )
                sub = await client.post(
                    "/v1/subscriptions",
                    data={
                        "customer": customer.json()["id"],
                        "items[0][price]": "price_pro_monthly",
                        "items[0][quantity]": str(1 + n % 7),
                        "metadata[organisation_id]": org,
                    },
                )
            created.append(sub.json())

        await one(0)  # the price exists after the first
        await asyncio.gather(*(one(n) for n in range(1, count)))
    return created


async def hold(database: str, schema: str, subscriptions: list[dict[str, Any]]) -> None:
    """The gateway's records as after every webhook arrived: each organisation's customer,
    its subscription as observed, the seat count asked for."""
    now = datetime.now(UTC)
    conn = await asyncpg.connect(database, server_settings={"search_path": schema})
    try:
        orgs = [s["metadata"]["organisation_id"] for s in subscriptions]
        await conn.copy_records_to_table(
            "organisations",
            records=[(o, s["customer"], -1, now) for o, s in zip(orgs, subscriptions, strict=True)],
            columns=["organisation_id", "customer_id", "quantity_revision", "updated_at"],
        )
        await conn.copy_records_to_table(
            "subscriptions",
            records=[
                (
                    s["id"],
                    o,
                    s["customer"],
                    s["status"],
                    s["items"]["data"][0]["plan"]["id"],
                    s["items"]["data"][0]["id"],
                    s["items"]["data"][0]["quantity"],
                    datetime.fromtimestamp(s["current_period_start"], UTC),
                    datetime.fromtimestamp(s["current_period_end"], UTC),
                    s["cancel_at_period_end"],
                    False,
                    1,
                    now,
                    now,
                )
                for o, s in zip(orgs, subscriptions, strict=True)
            ],
            columns=[
                "subscription_id",
                "organisation_id",
                "customer_id",
                "status",
                "price_id",
                "item_id",
                "quantity",
                "period_start",
                "period_end",
                "cancel_at_period_end",
                "deleted",
                "version",
                "observed_at",
                "updated_at",
            ],
        )
        await conn.copy_records_to_table(
            "quantities",
            records=[
                (o, s["items"]["data"][0]["quantity"], 1, s["items"]["data"][0]["quantity"], now)
                for o, s in zip(orgs, subscriptions, strict=True)
            ],
            columns=["organisation_id", "wanted", "wanted_revision", "sent", "updated_at"],
        )
    finally:
        await conn.close()


async def drift(devstripe: Devstripe, subscriptions: list[dict[str, Any]], count: int) -> None:
    """Change `count` subscriptions in Stripe with no webhook: a cancellation at period end."""
    async with httpx.AsyncClient(
        base_url=devstripe.url, auth=(DEV_API_KEY, ""), timeout=60
    ) as client:
        for sub in subscriptions[:count]:
            response = await client.post(
                f"/v1/subscriptions/{sub['id']}",
                data={"cancel_at_period_end": "true"},
                headers={"Devstripe-Silent": "1"},
            )
            response.raise_for_status()


async def raw_fetch(devstripe: Devstripe) -> dict[str, Any]:
    """Every subscription listed through the SDK, at the same pacing, doing nothing else."""
    api = StripeApi(
        api_key=DEV_API_KEY,
        api_base=devstripe.url,
        timeout=60,
        attempts=5,
        requests_per_second=RATE,
    )
    started = time.perf_counter()
    listed = 0
    async for page in api.list_subscriptions():
        listed += len(page)
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "listed": listed,
        "requests": api.requests,
    }


async def sweep(kafka: str, database: str, organisations: int, drifted: int) -> dict[str, Any]:
    devstripe = Devstripe(port=free_port())
    devstripe.start()
    try:
        started = time.perf_counter()
        subscriptions = await seed(devstripe, organisations)
        seeded = round(time.perf_counter() - started, 1)
        schema, prefix = f"bench_{uuid.uuid4().hex[:8]}", f"bench{uuid.uuid4().hex[:8]}."
        await ensure_topics(kafka, prefix)
        await apply_migrations(database, schema, SERVICE.all_migrations)
        await hold(database, schema, subscriptions)
        await drift(devstripe, subscriptions, drifted)
        baseline = await raw_fetch(devstripe)
        async with ServiceProcess(
            "services.stripe_gateway",
            SERVICE.env_prefix,
            kafka,
            database,
            schema,
            prefix,
            extra={
                "STRIPE_GATEWAY_API_BASE": devstripe.url,
                "STRIPE_GATEWAY_API_REQUESTS_PER_SECOND": str(RATE),
                "STRIPE_GATEWAY_RECONCILE_SECONDS": "0",
            },
        ) as gateway:
            async with httpx.AsyncClient(
                headers={"Authorization": f"Bearer {DEV_API_TOKEN}"}, timeout=600
            ) as client:
                started = time.perf_counter()
                response = await client.post(
                    f"http://127.0.0.1:{gateway.port}/v1/reconciliations", json={}
                )
                seconds = round(time.perf_counter() - started, 2)
        run = response.json()
    finally:
        devstripe.stop()
    return {
        "organisations": organisations,
        "drifted": drifted,
        "seed_seconds": seeded,
        "sweep_seconds": seconds,
        "sweep": run,
        "raw_fetch": baseline,
        "sweep_vs_raw_fetch": round(seconds / max(baseline["seconds"], 0.01), 2),
    }
