"""Credit metering: sustained end-to-end debits per second, beside two ceilings measured in the
same run on the same machine:

- end to end: N usage events for M organisations published to the usage topic while the
  metering service (its own process, production settings) consumes them; from the first publish
  until the last debit is committed, checked by counting the ledger;
- insert ceiling: the same rows inserted straight into the same ledger table, in batches of the
  same size, one transaction each, from one connection;
- consume ceiling: the same topic consumed by a consumer that does nothing;
- latency: at a moderate steady load, how long until a published debit shows in the balance that
  the HTTP API returns (p50 / p99).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.metering.app import SERVICE
from services.metering.settings import DEV_API_TOKEN
from shared.db import apply_migrations
from shared.events import CreditGrantRequestedV2, CreditGrantV2, GrantReasonV2
from shared.kafka import KeyPlacement, send_batched
from shared.testing import produce
from shared.topics import AGENT_USAGE, CREDIT_GRANT_REQUESTS, ensure_topics

from .httpload import latencies
from .process import ServiceProcess

BATCH = 10_000


@dataclass(frozen=True)
class Workload:
    events: list[tuple[bytes, bytes]]
    rows: list[tuple]
    credits: int

    def partitioned(self, partitions: int) -> list[tuple[int, bytes, bytes]]:
        """(partition, key, value) as Kafka's default partitioner places them; computed before
        the clock starts, so the load generator spends its time sending."""
        placement, every = KeyPlacement(), list(range(partitions))
        return [(placement.partition("", key, every), key, value) for key, value in self.events]


def make_workload(events: int, organisations: int, seed: int = 1) -> Workload:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    stamp = now.isoformat()
    encoded, rows, total = [], [], 0
    for i in range(events):
        organisation = f"org_bench{rng.randrange(organisations)}"
        credits = rng.randint(1, 20)
        event_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        data = {
            "member_id": f"member_{i % 50}",
            "agent_id": f"agent_{i % 7}",
            "conversation_id": f"conv_{i // 10}",
            "message_id": f"msg_{i}",
            "credits": credits,
        }
        body = {
            "event_id": str(event_id),
            "type": "agent_message.processed.v1",
            "organisation_id": organisation,
            "occurred_at": stamp,
            "producer": "bench",
            "data": data,
        }
        encoded.append((organisation.encode(), orjson.dumps(body)))
        rows.append((event_id, organisation, credits, *list(data.values())[:4], now))
        total += credits
    return Workload(encoded, rows, total)


async def publish(bootstrap: str, topic: str, events: list[tuple[int, bytes, bytes]]) -> float:
    """Publish as fast as one producer can (record batches per partition). Returns the start."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        records = [(topic, partition, key, value, []) for partition, key, value in events]
        started = time.perf_counter()
        await send_batched(producer, records)
        return started
    finally:
        await producer.stop()


class MeteringProcess(ServiceProcess):
    """The metering service in its own process, as in production."""

    def __init__(
        self,
        bootstrap: str,
        database_url: str,
        schema: str,
        prefix: str,
        *,
        extra: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            "services.metering", "METERING_", bootstrap, database_url, schema, prefix, extra=extra
        )


def bucket_grants(workload: Workload, buckets: int) -> list[tuple[bytes, bytes]]:
    """Credit packs for every organisation of the workload, `buckets` each, with different
    expiries and priorities, covering a quarter more than it will use: its debits cross from
    bucket to bucket in the spending order."""
    needs: dict[str, int] = {}
    for row in workload.rows:
        needs[row[1]] = needs.get(row[1], 0) + row[2]
    now = datetime.now(UTC)
    commands = []
    for organisation, need in sorted(needs.items()):
        each = need * 5 // 4 // buckets + 1
        for n in range(buckets):
            command = CreditGrantRequestedV2.new(
                organisation_id=organisation,
                producer="bench",
                occurred_at=now,
                data=CreditGrantV2(
                    period_key=f"bench:{n}",
                    amount=each,
                    reason=GrantReasonV2.PACK_PURCHASE,
                    expires_at=now + timedelta(days=30 + 7 * ((n * 3) % buckets)),
                    priority=n % 3,
                ),
            )
            commands.append((command.key, command.to_bytes()))
    return commands


async def end_to_end(
    bootstrap: str, database_url: str, workload: Workload, *, buckets: int = 0
) -> dict[str, Any]:
    """End to end; with `buckets`, every wallet first holds that many live buckets (granted
    before the clock starts) that its debits burn down."""
    schema, prefix = f"bench_{uuid.uuid4().hex[:8]}", f"bench{uuid.uuid4().hex[:8]}."
    topic = AGENT_USAGE.topic(prefix)
    await ensure_topics(bootstrap, prefix)
    async with MeteringProcess(bootstrap, database_url, schema, prefix):
        conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
        try:
            granted = 0
            if buckets:
                grants = bucket_grants(workload, buckets)
                granted = sum(orjson.loads(v)["data"]["amount"] for _, v in grants)
                await produce(bootstrap, CREDIT_GRANT_REQUESTS.topic(prefix), grants)
                seeded = "SELECT coalesce(sum(balance), 0)::bigint FROM wallets"
                while await conn.fetchval(seeded) < granted:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            placed = workload.partitioned(AGENT_USAGE.partitions)
            publishing = asyncio.create_task(publish(bootstrap, topic, placed))
            started = await publishing
            published = time.perf_counter()
            debited_so_far = "SELECT coalesce(sum(used), 0)::bigint FROM wallets"
            while await conn.fetchval(debited_so_far) < workload.credits:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            finished = time.perf_counter()
            counted = await conn.fetchval("SELECT count(*) FROM ledger WHERE kind = 'debit'")
            debited = granted - await conn.fetchval("SELECT sum(balance)::bigint FROM wallets")
            debt = await conn.fetchval("SELECT sum(debt)::bigint FROM wallets")
            touched = await conn.fetchval("SELECT count(*) FROM ledger_buckets")
        finally:
            await conn.close()
    assert counted == len(workload.events), (
        f"ledger has {counted} entries, {len(workload.events)} sent"
    )
    assert debited == workload.credits, f"debited {debited}, expected {workload.credits}"
    assert not buckets or debt == 0, f"{debt} credits of debt with buckets that cover the usage"
    return {
        "buckets_per_wallet": buckets,
        "allocations_written": touched,
        "events": len(workload.events),
        "seconds": round(finished - started, 3),
        "per_second": round(len(workload.events) / (finished - started)),
        "publish_per_second": round(len(workload.events) / (published - started)),
        "ledger_entries_counted": counted,
        "credits_debited": debited,
        "topic": topic,
        "schema": schema,
    }


async def insert_ceiling(database_url: str, workload: Workload) -> dict[str, Any]:
    schema = f"ceiling_{uuid.uuid4().hex[:8]}"
    await apply_migrations(database_url, schema, SERVICE.all_migrations)
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        now = datetime.now(UTC)
        started = time.perf_counter()
        for start in range(0, len(workload.rows), BATCH):
            chunk = workload.rows[start : start + BATCH]
            columns = list(zip(*chunk, strict=True))
            async with conn.transaction():
                await conn.execute(
                    """INSERT INTO ledger (entry_id, organisation_id, kind, amount, source_event_id,
                                           member_id, agent_id, conversation_id, message_id,
                                           occurred_at, recorded_at)
                       SELECT e, o, 'debit', -c, e, m, a, v, g, t, $9
                       FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                                   $6::text[], $7::text[], $8::timestamptz[])
                            AS r(e, o, c, m, a, v, g, t)""",
                    *columns,
                    now,
                )
        seconds = time.perf_counter() - started
        assert await conn.fetchval("SELECT count(*) FROM ledger") == len(workload.rows)
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
    return {
        "rows": len(workload.rows),
        "batch": BATCH,
        "seconds": round(seconds, 3),
        "per_second": round(len(workload.rows) / seconds),
    }


async def consume_ceiling(bootstrap: str, topic: str, events: int) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-noop-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        seen, started = 0, None
        while seen < events:
            batch = await consumer.getmany(timeout_ms=200, max_records=BATCH)
            if batch and started is None:
                started = time.perf_counter()
            seen += sum(len(records) for records in batch.values())
            if batch:
                await consumer.commit()
        seconds = time.perf_counter() - (started or time.perf_counter())
    finally:
        await consumer.stop()
    return {"records": seen, "seconds": round(seconds, 3), "per_second": round(seen / seconds)}


async def visibility_latency(
    bootstrap: str, database_url: str, *, background_per_second: int, probes: int
) -> dict[str, Any]:
    """p50/p99 from publishing a debit to seeing it in the HTTP API's balance, under a steady
    background load spread over 1,000 organisations; beside it, the baseline: the same probes
    from publishing until a consumer that does nothing (fetching as the services do) has them."""
    schema, prefix = f"bench_{uuid.uuid4().hex[:8]}", f"bench{uuid.uuid4().hex[:8]}."
    topic = AGENT_USAGE.topic(prefix)
    await ensure_topics(bootstrap, prefix)
    background = make_workload(background_per_second * (probes // 20 + 10), 1_000, seed=3).events
    async with MeteringProcess(bootstrap, database_url, schema, prefix) as metering:
        # The probes leave at once; the background load is sent as a producer normally sends
        # (records lingering up to 5 ms are sent together, Kafka's default since 4.0), not one
        # request per record, which cost the broker about half a core at 2,000/s here.
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        loader = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
        await loader.start()
        stop = asyncio.Event()

        async def steady_load() -> None:
            tick, per_tick = 0.01, max(1, background_per_second // 100)
            for start in range(0, len(background), per_tick):
                if stop.is_set():
                    return
                for key, value in background[start : start + per_tick]:
                    await loader.send(topic, value, key=key)
                await asyncio.sleep(tick)

        delivered: dict[str, float] = {}
        delivery = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=25
        )
        await delivery.start()
        delivery.assign([TopicPartition(topic, p) for p in await producer.partitions_for(topic)])
        await delivery.seek_to_end()

        async def deliveries() -> None:
            while not stop.is_set():
                batch = await delivery.getmany(timeout_ms=100)
                now = time.perf_counter()
                for records in batch.values():
                    for record in records:
                        if record.key == b"org_probe":
                            delivered[orjson.loads(record.value)["data"]["message_id"]] = now

        watching = asyncio.create_task(deliveries())
        load = asyncio.create_task(steady_load())
        visible: list[float] = []
        sent_at: dict[str, float] = {}
        url = f"http://127.0.0.1:{metering.port}/v1/organisations/org_probe/credits"
        try:
            async with httpx.AsyncClient(
                headers={"Authorization": f"Bearer {DEV_API_TOKEN}"}
            ) as client:
                for n in range(1, probes + 1):
                    event = {
                        "event_id": str(uuid.uuid4()),
                        "type": "agent_message.processed.v1",
                        "organisation_id": "org_probe",
                        "occurred_at": datetime.now(UTC).isoformat(),
                        "producer": "bench",
                        "data": {
                            "member_id": "m",
                            "agent_id": "a",
                            "conversation_id": "c",
                            "message_id": f"probe{n}",
                            "credits": 1,
                        },
                    }
                    sent = sent_at[f"probe{n}"] = time.perf_counter()
                    await producer.send(topic, orjson.dumps(event), key=b"org_probe")
                    while True:
                        response = await client.get(url)
                        if response.status_code == 200 and response.json()["used"] >= n:
                            break
                        await asyncio.sleep(0.001)
                    visible.append((time.perf_counter() - sent) * 1000)
                    await asyncio.sleep(0.02)
        finally:
            stop.set()
            await load
            await watching
            await delivery.stop()
            await producer.stop()
            await loader.stop()
    baseline = [(delivered[m] - sent) * 1000 for m, sent in sent_at.items() if m in delivered]
    return {
        "background_events_per_second": background_per_second,
        "probes": probes,
        **latencies(visible, digits=1),
        "delivery": {"probes_seen": len(baseline), **latencies(baseline, digits=1)},
    }
