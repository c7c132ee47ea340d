"""The batch consumer against the real broker and database, with generated inputs: whatever
runs of poison records sit wherever in whatever batches, every good record is applied, every bad
one parked once with its reason, and the offsets are committed to the end.

The service under test is a toy one built on the kernel the way a real service is (domain-free:
it stores each usage event in a table whose CHECK constraint refuses 13 credits, as PostgreSQL
refuses a poison row). It also shows what a new service needs: a `Service`, a migration, a
`build` that declares its consumer."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.clock import SystemClock
from shared.consumer import Decoded
from shared.events import AgentMessageProcessed, AgentMessageProcessedV1
from shared.service import Kernel, Service
from shared.settings import ServiceSettings
from shared.testing import committed, eventually, produce, read_topic
from shared.testing.plugin import Infrastructure
from shared.topics import TopicSpec, ensure_topics

pytestmark = pytest.mark.slow

MIGRATIONS = Path(__file__).parent / "toy_migrations"
TOPIC = TopicSpec(
    name="toy.usage",
    schemas=(AgentMessageProcessedV1,),
    description="usage events for the toy service",
    producers=("tests",),
    consumers=("toy",),
    partitions=3,
)
POISON_CREDITS = 13


class ToySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TOY_", extra="ignore", frozen=True)

    db_schema: str = "toy"
    http_port: int = Field(0, ge=0, le=65535)
    consumer_group: str = "toy"
    batch_max_records: int = 10
    lanes: int = 1


async def store(pool: asyncpg.Pool, items: Sequence[Decoded[AgentMessageProcessedV1]]) -> list:
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO items (event_id, credits) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            [(i.event.event_id, i.event.data.credits) for i in items],
        )
    return []


async def build(kernel: Kernel[ToySettings]) -> None:
    kernel.consume(
        TOPIC,
        "items",
        lambda items: store(kernel.pool, items),
        lanes=kernel.settings.lanes,
        max_records=kernel.settings.batch_max_records,
    )


TOY = Service(
    name="toy",
    module="tests.kernel.toy",
    title="Toy",
    summary="A consumer that stores usage events.",
    settings=ToySettings,
    migrations=MIGRATIONS,
    build=build,
)

KINDS = st.sampled_from(["good", "good", "good", "poison", "malformed", "invalid_amount"])
EXPECTED = {
    "poison": "processing_failed",
    "malformed": "malformed_json",
    "invalid_amount": "invalid_amount",
}


@dataclass(frozen=True)
class Item:
    kind: str
    organisation: str
    event_id: uuid.UUID

    def value(self) -> bytes:
        event = AgentMessageProcessedV1.new(
            organisation_id=self.organisation,
            producer="tests",
            occurred_at=datetime(2026, 11, 1, tzinfo=UTC),
            event_id=self.event_id,
            data=AgentMessageProcessed(
                member_id="m",
                agent_id="a",
                conversation_id="c",
                message_id=f"msg_{self.event_id.hex[:8]}",
                credits=POISON_CREDITS if self.kind == "poison" else 5,
            ),
        ).to_bytes()
        if self.kind == "malformed":
            return event[: len(event) // 2]
        if self.kind == "invalid_amount":
            body = orjson.loads(event)
            body["data"]["credits"] = -1
            return orjson.dumps(body)
        return event


scenarios = st.lists(
    st.builds(
        Item,
        kind=KINDS,
        organisation=st.sampled_from(["org_a", "org_b", "org_c", "org_d"]),
        event_id=st.uuids(version=4),
    ),
    min_size=1,
    max_size=60,
    unique_by=lambda item: item.event_id,
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    items=scenarios,
    batch=st.integers(min_value=1, max_value=25),
    lanes=st.integers(min_value=1, max_value=3),
)
@example(  # a long run of poison in one batch: it used to stall the partition for good
    items=[
        Item("poison" if 3 <= n < 15 else "good", "org_a", uuid.UUID(int=n + 1, version=4))
        for n in range(20)
    ],
    batch=25,
    lanes=1,
)
def test_any_pattern_of_poison_ends_applied_parked_and_committed(
    infrastructure: Infrastructure, items: list[Item], batch: int, lanes: int
) -> None:
    asyncio.run(_scenario(infrastructure, items, batch, lanes))


async def _scenario(
    infrastructure: Infrastructure, items: list[Item], batch: int, lanes: int
) -> None:
    suffix = uuid.uuid4().hex[:10]
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": infrastructure.kafka_bootstrap,
        "DATABASE_URL": infrastructure.database_url,
        "TOPIC_PREFIX": f"p{suffix}.",
        "KAFKA_SESSION_TIMEOUT_MS": "2000",
        "TOY_DB_SCHEMA": f"p_{suffix}",
        "TOY_BATCH_MAX_RECORDS": str(batch),
        "TOY_LANES": str(lanes),
    }
    with mock.patch.dict(os.environ, env):
        toy = ToySettings()
    await ensure_topics(toy.kafka_bootstrap_servers, toy.topic_prefix, [TOPIC])
    await produce(
        toy.kafka_bootstrap_servers,
        TOPIC.topic(toy.topic_prefix),
        [(i.organisation.encode(), i.value()) for i in items],
    )
    kernel = await Kernel.start(TOY, toy, SystemClock())
    try:
        group = toy.group_id("items")
        topic = TOPIC.topic(toy.topic_prefix)

        async def all_committed() -> bool:
            total = await committed(toy.kafka_bootstrap_servers, group, topic, TOPIC.partitions)
            return total >= len(items)

        await eventually(all_committed, timeout=60, what="offsets committed to the end")
        stored = {r["event_id"] for r in await kernel.pool.fetch("SELECT event_id FROM items")}
        bad = [i for i in items if i.kind != "good"]
        parked = (
            await read_topic(
                toy.kafka_bootstrap_servers,
                TOPIC.dead_letter_topic(toy.topic_prefix),
                at_least=len(bad),
            )
            if bad
            else []
        )
    finally:
        await kernel.stop()
        conn = await asyncpg.connect(toy.database_url.get_secret_value())
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{toy.db_schema}" CASCADE')
        finally:
            await conn.close()

    assert stored == {i.event_id for i in items if i.kind == "good"}
    reasons = sorted(
        (orjson.loads(r.value)["event_id"] if r.value.endswith(b"}") else None, _header(r))
        for r in parked
        if _header(r) != "malformed_json"
    )
    assert reasons == sorted(
        (str(i.event_id), EXPECTED[i.kind]) for i in bad if i.kind != "malformed"
    )
    malformed = [r.value for r in parked if _header(r) == "malformed_json"]
    assert sorted(malformed) == sorted(i.value() for i in bad if i.kind == "malformed")
    assert kernel.consumers[0].stalled() == []


def _header(record: object) -> str:
    return dict(record.headers)["dlq.reason"].decode()  # type: ignore[attr-defined]
