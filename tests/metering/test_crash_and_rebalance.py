"""Exactly-once debits across a SIGKILL in the middle of a batch, across a rebalance, and
across a rebalance while the database is down."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from unittest import mock

import asyncpg
import httpx
import pytest

from services.metering.app import SERVICE
from services.metering.settings import DEV_API_TOKEN, MeteringSettings
from shared.clock import SystemClock
from shared.devstack import EmbeddedPostgres, free_port
from shared.service import Kernel
from shared.testing import eventually, produce
from shared.topics import AGENT_USAGE
from tests.metering.conftest import usage_event

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {DEV_API_TOKEN}"}


def workload(organisations: int, events: int, seed: int) -> tuple[list, Counter]:
    rng = random.Random(seed)
    batch = [
        usage_event(f"org_load{rng.randrange(organisations)}", rng.randint(1, 9))
        for _ in range(events)
    ]
    expected: Counter = Counter()
    for event in batch:
        expected[event.organisation_id] += event.data.credits
    return batch, expected


async def assert_exact(db: asyncpg.Connection, expected: Counter, events: int) -> None:
    assert await db.fetchval("SELECT count(*) FROM ledger") == events
    balances = dict(await db.fetch("SELECT organisation_id, balance FROM wallets"))
    assert balances == {org: -credits for org, credits in expected.items()}
    sums = dict(await db.fetch("SELECT organisation_id, sum(amount) FROM ledger GROUP BY 1"))
    assert sums == balances


def start_metering(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.metering"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_sigkill_in_the_middle_of_a_batch_leaves_the_exact_balance(metering_env, db) -> None:
    port = free_port()
    env = {**metering_env, "METERING_HTTP_PORT": str(port), "METERING_BATCH_MAX_RECORDS": "500"}
    events, expected = workload(organisations=25, events=20_000, seed=7)
    process = start_metering(env)
    try:
        await eventually(lambda: _ready(port), what="metering ready")
        publishing = asyncio.create_task(
            produce(
                env["KAFKA_BOOTSTRAP_SERVERS"],
                AGENT_USAGE.topic(env["TOPIC_PREFIX"]),
                [(e.key, e.to_bytes()) for e in events],
            )
        )

        async def partly_applied() -> int:
            return 2_000 <= await db.fetchval("SELECT count(*) FROM ledger") < 15_000

        await eventually(partly_applied, interval=0.005, what="some batches applied")
        process.send_signal(signal.SIGKILL)
        process.wait()
        applied_before_restart = await db.fetchval("SELECT count(*) FROM ledger")
        await publishing

        process = start_metering(env)

        async def all_applied() -> bool:
            return await db.fetchval("SELECT count(*) FROM ledger") >= len(events)

        await eventually(all_applied, timeout=60, what="all events applied after restart")
        await asyncio.sleep(1)  # anything still redelivered would land now
        assert applied_before_restart < len(events)
        await assert_exact(db, expected, len(events))
        org, credits = expected.most_common(1)[0]
        async with httpx.AsyncClient(headers=AUTH) as client:
            shown = (
                await client.get(f"http://127.0.0.1:{port}/v1/organisations/{org}/credits")
            ).json()
        assert shown["balance"] == -credits
    finally:
        process.kill()
        process.wait()


async def _owns_all(runtime: Kernel, topic: str) -> bool:
    return runtime.assignments().get(topic) == list(range(AGENT_USAGE.partitions))


async def _ready(port: int) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (
                await client.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            ).status_code == 200
    except httpx.HTTPError:
        return False


async def test_a_rebalance_between_two_instances_debits_exactly_once(metering_env, db) -> None:
    with mock.patch.dict(os.environ, {**metering_env, "METERING_BATCH_MAX_RECORDS": "200"}):
        settings = MeteringSettings()
    events, expected = workload(organisations=40, events=12_000, seed=11)
    first = await Kernel.start(SERVICE, settings, SystemClock())
    second = None
    try:
        topic = AGENT_USAGE.topic(settings.topic_prefix)
        await produce(
            settings.kafka_bootstrap_servers, topic, [(e.key, e.to_bytes()) for e in events[:6_000]]
        )
        second = await Kernel.start(SERVICE, settings, SystemClock())  # joins: partitions are split

        async def split() -> bool:
            mine, theirs = first.assignments().get(topic, []), second.assignments().get(topic, [])
            return (
                bool(mine)
                and bool(theirs)
                and sorted(mine + theirs) == list(range(AGENT_USAGE.partitions))
            )

        await eventually(split, what="usage partitions split between the two instances")
        await produce(
            settings.kafka_bootstrap_servers, topic, [(e.key, e.to_bytes()) for e in events[6_000:]]
        )
        await first.stop()  # leaves: the second takes every partition
        first = None
        await eventually(
            lambda: _owns_all(second, topic),
            timeout=30,
            what="second instance owns every partition",
        )

        async def all_applied() -> bool:
            return await db.fetchval("SELECT count(*) FROM ledger") >= len(events)

        await eventually(all_applied, timeout=60, what="all events applied")
        await asyncio.sleep(1)
        await assert_exact(db, expected, len(events))
    finally:
        for runtime in (first, second):
            if runtime is not None:
                await runtime.stop()


async def test_a_rebalance_while_the_database_is_down_completes_and_loses_nothing(
    metering_env, tmp_path
) -> None:
    postgres = EmbeddedPostgres(tmp_path / "postgres", port=free_port())
    postgres.start()
    url = postgres.create_database("rebalance")
    env = {
        **metering_env,
        "DATABASE_URL": url,
        "METERING_BATCH_MAX_RECORDS": "200",
        "METERING_REBALANCE_FLUSH_SECONDS": "1",
    }
    with mock.patch.dict(os.environ, env):
        settings = MeteringSettings()
    events, expected = workload(organisations=40, events=6_000, seed=5)
    topic = AGENT_USAGE.topic(settings.topic_prefix)
    first = await Kernel.start(SERVICE, settings, SystemClock())
    second = await Kernel.start(SERVICE, settings, SystemClock())
    try:

        async def split() -> bool:
            mine, theirs = first.assignments().get(topic, []), second.assignments().get(topic, [])
            return bool(mine) and bool(theirs)

        await eventually(split, timeout=30, what="partitions split between the two instances")
        await produce(
            settings.kafka_bootstrap_servers, topic, [(e.key, e.to_bytes()) for e in events[:3_000]]
        )

        async def some_applied() -> bool:
            return await second.pool.fetchval("SELECT count(*) FROM ledger") > 0

        await eventually(some_applied, what="some batches applied")
        postgres.stop()
        await produce(
            settings.kafka_bootstrap_servers, topic, [(e.key, e.to_bytes()) for e in events[3_000:]]
        )
        await first.stop()  # leaves the group while its batches cannot reach the database
        first = None
        await eventually(
            lambda: _owns_all(second, topic),
            timeout=30,
            what="the rebalance completes while the database is down",
        )
        postgres.start()
        db = await asyncpg.connect(url, server_settings={"search_path": settings.db_schema})
        try:

            async def all_applied() -> bool:
                return await db.fetchval("SELECT count(*) FROM ledger") >= len(events)

            await eventually(all_applied, timeout=90, what="all events applied after the outage")
            await asyncio.sleep(1)
            await assert_exact(db, expected, len(events))
        finally:
            await db.close()
    finally:
        for kernel in (first, second):
            if kernel is not None:
                await kernel.stop()
        postgres.stop()
