"""A gateway killed in the middle of a burst of webhooks, and started again, loses none and
announces nothing twice: Stripe retries every delivery that was not answered 2xx, as the
sender here does; the inbox dedupes them; events claimed by the killed instance are taken
again once their claim lapses; and an observation already applied is not announced again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter

import asyncpg
import httpx
import orjson
import pytest

from shared.devstack import free_port
from shared.testing import eventually, read_topic
from shared.topics import STRIPE_EVENTS
from tests.stripe_gateway.conftest import (
    signed,
    stripe_event,
    stripe_subscription,
    subscription_object,
)

pytestmark = pytest.mark.slow

EVENTS = 300
SUBSCRIPTIONS = 20


def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.stripe_gateway"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_a_gateway_killed_during_a_burst_loses_nothing_and_doubles_nothing(
    gateway_env: dict[str, str], db: asyncpg.Connection, devstripe
) -> None:
    port = free_port()
    env = {
        **gateway_env,
        "STRIPE_GATEWAY_HTTP_PORT": str(port),
        "STRIPE_GATEWAY_INBOX_CLAIM_SECONDS": "5",
        "STRIPE_GATEWAY_INBOX_MAX_ATTEMPTS": "20",
    }
    url = f"http://127.0.0.1:{port}/stripe/webhook"
    run = uuid.uuid4().hex[:8]
    subscriptions = [
        await stripe_subscription(devstripe, f"org_burst{run}{n % 7}", quantity=1 + n % 3)
        for n in range(SUBSCRIPTIONS)
    ]
    events = [
        stripe_event(
            "customer.subscription.updated",
            subscription_object(  # a stale payload: the gateway keeps what Stripe holds
                sub["id"], sub["customer"], organisation=sub["metadata"]["organisation_id"]
            ),
        )
        for n in range(EVENTS)
        for sub in [subscriptions[n % SUBSCRIPTIONS]]
    ]
    answered: Counter[str] = Counter()

    lanes = asyncio.Semaphore(8)

    async def deliver(client: httpx.AsyncClient, event: dict) -> None:
        """As Stripe does: again and again until a 2xx (a few deliveries at a time)."""
        async with lanes:
            await deliver_now(client, event)

    async def deliver_now(client: httpx.AsyncClient, event: dict) -> None:
        while True:
            payload, signature = signed(event)
            try:
                response = await client.post(
                    url, content=payload, headers={"Stripe-Signature": signature}
                )
                if response.is_success:
                    answered[event["id"]] += 1
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)

    process = start(env)
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            senders = asyncio.gather(*(deliver(client, e) for e in events))

            async def some_stored() -> bool:
                try:
                    return await db.fetchval("SELECT count(*) FROM inbox") >= EVENTS // 3
                except asyncpg.UndefinedTableError:
                    return False

            await eventually(some_stored, timeout=60, interval=0.01, what="a third stored")
            process.send_signal(signal.SIGKILL)
            process.wait()
            stored_when_killed = await db.fetchval("SELECT count(*) FROM inbox")
            await asyncio.sleep(0.5)
            process = start(env)
            await senders
            await asyncio.gather(*(deliver(client, e) for e in events[: EVENTS // 2]))  # again

        async def all_done() -> bool:
            done = await db.fetchval(
                "SELECT count(*) FROM inbox WHERE status = 'done' AND event_id = ANY($1)",
                [e["id"] for e in events],
            )
            return done == EVENTS

        await eventually(all_done, timeout=60, what="every event processed")
        records = await read_topic(
            env["KAFKA_BOOTSTRAP_SERVERS"],
            STRIPE_EVENTS.topic(env["TOPIC_PREFIX"]),
            at_least=SUBSCRIPTIONS,
            timeout=60,
        )
    finally:
        process.kill()
        process.wait()

    assert stored_when_killed < EVENTS  # killed in the middle of the burst
    assert (
        await db.fetchval(
            "SELECT count(*) FROM inbox WHERE event_id = ANY($1)", [e["id"] for e in events]
        )
        == EVENTS
    )
    announced: dict[tuple[str, int], set[str]] = {}
    for record in records:  # the outbox publishes at least once: the same event may come twice
        body = orjson.loads(record.value)
        key = (body["data"]["subscription_id"], body["data"]["version"])
        announced.setdefault(key, set()).add(body["event_id"])
    assert set(announced) == {(sub["id"], 1) for sub in subscriptions}  # Stripe's state, once
    assert all(len(ids) == 1 for ids in announced.values())  # no observation announced twice
    held = await db.fetch("SELECT subscription_id, quantity FROM subscriptions")
    assert {(r[0], r[1]) for r in held} == {(s["id"], s["quantity"]) for s in subscriptions}
    assert sum(answered.values()) == EVENTS + EVENTS // 2
