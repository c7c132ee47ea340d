"""A year of billing: a stack holding N organisations on mixed plans (Free, Pro and Max monthly,
Pro annual) moved forward one year with `billing clock`'s stepping, every service in its own
process on a movable clock and devstripe on a test clock: 12 credit renewals each, Stripe's
renewals and invoices. Reports the time, the steps, and the cost per renewal."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import httpx

from services.metering.app import SERVICE as METERING
from services.seats.app import SERVICE as SEATS
from services.stripe_gateway.app import SERVICE as GATEWAY
from services.stripe_gateway.devstripe import Devstripe
from services.stripe_gateway.settings import DEV_WEBHOOK_SECRET
from services.subscriptions.app import SERVICE as SUBSCRIPTIONS
from shared import identity
from shared.calendar import add_months
from shared.cli.clock import Stack, advance
from shared.devstack import free_port
from shared.events.members import (
    MemberJoinedV1,
    MemberRole,
    MemberState,
    MemberStatus,
    OrganisationCreated,
    OrganisationCreatedV1,
)
from shared.identity import IDENTITY_HEADER
from shared.settings import DEV_API_TOKEN
from shared.testing import produce
from shared.topics import WORKSPACE_MEMBERS, ensure_topics

from .process import ServiceProcess

PLANS = (
    (None, None),
    ("pro", "monthly"),
    ("max", "monthly"),
    (None, None),
    ("pro", "monthly"),
    ("max", "monthly"),
    ("pro", "annual"),
    (None, None),
    ("pro", "monthly"),
    (None, None),
)
"""Ten organisations' plans, repeated: 40 % Free, 30 % Pro monthly, 20 % Max monthly, 10 %
Pro annual."""

AUTH = {"Authorization": f"Bearer {DEV_API_TOKEN}"}


async def organisations(kafka: str, prefix: str, count: int, at: datetime) -> list[str]:
    orgs = [f"org_y{n:05d}" for n in range(count)]
    records = []
    for org in orgs:
        events = [
            OrganisationCreatedV1.new(
                organisation_id=org,
                producer="bench",
                occurred_at=at,
                data=OrganisationCreated(created_at=at),
            ),
            *(
                MemberJoinedV1.new(
                    organisation_id=org,
                    producer="bench",
                    occurred_at=at,
                    data=MemberState(
                        member_id=member,
                        role=MemberRole.OWNER if member == "ada" else MemberRole.MEMBER,
                        status=MemberStatus.ACTIVE,
                        sequence=1,
                    ),
                )
                for member in ("ada", "bob")
            ),
        ]
        records += [(e.key, e.to_bytes()) for e in events]
    await produce(kafka, WORKSPACE_MEMBERS.topic(prefix), records)
    return orgs


async def subscribe(
    subscriptions: str, devstripe: str, orgs: list[str], concurrency: int = 8
) -> int:
    """The owners of the paid ones go through Checkout and pay."""
    lanes = asyncio.Semaphore(concurrency)
    paid = 0

    async def one(client: httpx.AsyncClient, org: str, plan: str, cycle: str) -> None:
        nonlocal paid
        clock = (await client.get(f"{subscriptions}/v1/clock", headers=AUTH)).json()
        now = datetime.fromisoformat(clock["now"])
        async with lanes:
            for _ in range(100):  # until the directory's announcement is projected
                answer = await client.post(
                    f"{subscriptions}/v1/subscription/change",
                    json={"plan": plan, "cycle": cycle},
                    headers={**AUTH, IDENTITY_HEADER: identity.sign(org, "ada", now)},
                )
                if answer.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            session = answer.json()["checkout_url"].rsplit("/", 1)[1]
            await client.post(f"{devstripe}/_devstripe/checkout/{session}/complete")
            paid += 1

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(
            *(
                one(client, org, *PLANS[n % len(PLANS)])
                for n, org in enumerate(orgs)
                if PLANS[n % len(PLANS)][0] is not None
            )
        )
    return paid


async def run(kafka: str, database: str, count: int) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench{run_id}."
    await ensure_topics(kafka, prefix)
    devstripe = Devstripe(port=free_port(), frozen_clock=True, retry_seconds=0.2)
    devstripe.start()
    clock_on = {"CLOCK_CONTROL": "true", "LOG_LEVEL": "WARNING"}
    try:
        async with contextlib.AsyncExitStack() as stack:
            gateway = await stack.enter_async_context(
                ServiceProcess(
                    "services.stripe_gateway",
                    GATEWAY.env_prefix,
                    kafka,
                    database,
                    f"bench_{run_id}_gateway",
                    prefix,
                    extra={
                        **clock_on,
                        "STRIPE_GATEWAY_API_BASE": devstripe.url,
                        "STRIPE_GATEWAY_API_REQUESTS_PER_SECOND": "1000",
                        "STRIPE_GATEWAY_RECONCILE_SECONDS": "0",
                    },
                )
            )
            devstripe.register_webhook(
                "bench", f"http://127.0.0.1:{gateway.port}/stripe/webhook", DEV_WEBHOOK_SECRET
            )
            processes = {"stripe-gateway": gateway}
            for service, extra in (
                (METERING, {}),
                (SEATS, {}),
                (
                    SUBSCRIPTIONS,
                    {
                        "SUBSCRIPTIONS_GATEWAY_URL": f"http://127.0.0.1:{gateway.port}",
                        "SUBSCRIPTIONS_RECONCILE_SECONDS": "0",
                    },
                ),
            ):
                processes[service.name] = await stack.enter_async_context(
                    ServiceProcess(
                        service.module,
                        service.env_prefix,
                        kafka,
                        database,
                        f"bench_{run_id}_{service.name}",
                        prefix,
                        extra={**clock_on, **extra},
                    )
                )
            urls = {n: f"http://127.0.0.1:{p.port}" for n, p in processes.items()}
            clock = Stack(urls, devstripe.url, httpx.Client(headers=AUTH, timeout=60))
            began = datetime.fromisoformat(clock.states()["metering"]["now"])
            await asyncio.to_thread(  # Stripe's test clock at the services' now
                clock.http.post, f"{devstripe.url}/_devstripe/clock", json={"to": began.isoformat()}
            )
            orgs = await organisations(kafka, prefix, count, began)
            started = time.perf_counter()
            paid = await subscribe(urls["subscriptions"], devstripe.url, orgs)
            await asyncio.to_thread(clock.wait_idle, 300)
            set_up = time.perf_counter() - started

            started = time.perf_counter()
            steps = await asyncio.to_thread(advance, clock, add_months(began, 12), timeout=600)
            seconds = time.perf_counter() - started
            resets = await _count(
                database,
                f"bench_{run_id}_metering",
                "SELECT count(*) FROM grants WHERE reason = 'renewal_reset'",
            )
            stripe = (
                await asyncio.to_thread(httpx.get, f"{devstripe.url}/_devstripe/stats")
            ).json()
    finally:
        devstripe.stop()
    renewed_in_stripe = sum(
        n for kind, n in stripe["invoices"].items() if kind.startswith("subscription_cycle")
    )
    return {
        "organisations": count,
        "paid": paid,
        "set_up_seconds": round(set_up, 1),
        "year_seconds": round(seconds, 1),
        "steps": steps,
        "credit_renewals": resets,
        "stripe_renewal_invoices": renewed_in_stripe,
        "stripe": stripe,
        "ms_per_renewal": round(seconds * 1000 / max(1, resets + renewed_in_stripe), 2),
    }


async def _count(database: str, schema: str, query: str) -> int:
    conn = await asyncpg.connect(database, server_settings={"search_path": schema})
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()
