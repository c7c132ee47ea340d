"""A gateway killed in the middle of a burst of webhooks, and started again, loses none and
processes none twice: Stripe retries every delivery that was not answered 2xx, as the sender
here does; the inbox dedupes them."""

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
from tests.stripe_gateway.conftest import signed, stripe_event, subscription_object

pytestmark = pytest.mark.slow

EVENTS = 300


def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.stripe_gateway"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_a_gateway_killed_during_a_burst_loses_nothing_and_doubles_nothing(
    gateway_env: dict[str, str], db: asyncpg.Connection
) -> None:
    port = free_port()
    env = {**gateway_env, "STRIPE_GATEWAY_HTTP_PORT": str(port)}
    url = f"http://127.0.0.1:{port}/stripe/webhook"
    events = [
        stripe_event(
            "customer.subscription.created",
            subscription_object(
                f"sub_{uuid.uuid4().hex[:14]}",
                f"cus_{uuid.uuid4().hex[:14]}",
                organisation=f"org_burst{n % 7}",
            ),
        )
        for n in range(EVENTS)
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
            return await db.fetchval("SELECT count(*) FROM inbox WHERE status = 'done'") == EVENTS

        await eventually(all_done, timeout=60, what="every event processed")
        records = await read_topic(
            env["KAFKA_BOOTSTRAP_SERVERS"],
            STRIPE_EVENTS.topic(env["TOPIC_PREFIX"]),
            at_least=EVENTS,
            timeout=60,
        )
    finally:
        process.kill()
        process.wait()

    assert stored_when_killed < EVENTS  # killed in the middle of the burst
    assert await db.fetchval("SELECT count(*) FROM inbox") == EVENTS
    assert await db.fetchval("SELECT max(attempts) FROM inbox") == 1
    announced: dict[str, set[str]] = {}
    for record in records:
        body = orjson.loads(record.value)
        announced.setdefault(body["data"]["stripe_event_id"], set()).add(body["event_id"])
    assert set(announced) == {e["id"] for e in events}
    assert all(len(ids) == 1 for ids in announced.values())  # one announcement each
    assert sum(answered.values()) == EVENTS + EVENTS // 2
