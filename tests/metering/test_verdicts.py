"""Each usage record gets the same verdict alone as in any batch, against the real broker and
database: the same topic is consumed by two metering instances of their own (own consumer group,
own schema), one taking records one at a time, the other in batches of a generated size. The
corpus mixes good records with bad, conflicting and boundary-crossing ones (two records whose
bytes, joined, form a valid event; duplicates by message id; event ids reused)."""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from unittest import mock

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.metering.app import SERVICE
from services.metering.settings import MeteringSettings
from shared.clock import SystemClock
from shared.events import AgentMessageProcessed, AgentMessageProcessedV1
from shared.service import Kernel
from shared.testing import committed, eventually, produce, read_topic
from shared.testing.plugin import Infrastructure
from shared.topics import AGENT_USAGE, ensure_topics

pytestmark = pytest.mark.slow

ORGANISATIONS = ["org_a", "org_b", "org_c"]
KINDS = [
    "good",
    "good",
    "good",
    "redelivery",
    "same_message",
    "id_conflict",
    "split",
    "two_events",
    "no_type",
    "bad_amount",
    "nul",
    "edge_time",
    "key_mismatch",
]


@dataclass(frozen=True)
class Spec:
    kind: str
    organisation: str
    credits: int
    ref: int


def usage(organisation: str, credits: int, message_id: str, event_id: uuid.UUID) -> bytes:
    return AgentMessageProcessedV1.new(
        organisation_id=organisation,
        producer="agent-runtime",
        occurred_at=datetime(2026, 11, 1, tzinfo=UTC),
        event_id=event_id,
        data=AgentMessageProcessed(
            member_id="m", agent_id="a", conversation_id="c", message_id=message_id, credits=credits
        ),
    ).to_bytes()


def corpus(specs: list[Spec]) -> list[tuple[bytes, bytes]]:
    """(key, value) records, in order, for the specs."""
    records: list[tuple[bytes, bytes]] = []
    goods: list[tuple[str, int, str, uuid.UUID, bytes]] = []
    for n, spec in enumerate(specs):
        org, key = spec.organisation, spec.organisation.encode()
        fresh = usage(org, spec.credits, f"msg_{n}", uuid.UUID(int=n + 1, version=4))
        same_org = [g for g in goods if g[0] == org]
        if spec.kind in {"redelivery", "same_message", "id_conflict"} and same_org:
            o, credits, message, event_id, raw = same_org[spec.ref % len(same_org)]
            if spec.kind == "redelivery":
                records.append((key, raw))
            elif spec.kind == "same_message":
                records.append((key, usage(o, credits, message, uuid.UUID(int=10_000 + n))))
            else:
                records.append((key, usage(o, credits + 1, message, event_id)))
        elif spec.kind == "split":
            cut = fresh.index(b',"producer"')
            records += [(key, fresh[:cut]), (key, fresh[cut + 1 :])]
        elif spec.kind == "two_events":
            other = usage(org, spec.credits, f"msg_{n}_b", uuid.UUID(int=20_000 + n))
            records.append((key, fresh + b"," + other))
        elif spec.kind in {"no_type", "bad_amount", "nul", "edge_time"}:
            body = orjson.loads(fresh)
            if spec.kind == "no_type":
                del body["type"]
            elif spec.kind == "bad_amount":
                body["data"]["credits"] = 0
            elif spec.kind == "nul":
                body["data"]["member_id"] = "m\x00"
            else:
                body["occurred_at"] = "0001-01-01T00:00:00+05:00"
            records.append((key, orjson.dumps(body)))
        elif spec.kind == "key_mismatch":
            records.append((b"org_elsewhere", fresh))
        else:
            records.append((key, fresh))
            goods.append((org, spec.credits, f"msg_{n}", uuid.UUID(int=n + 1, version=4), fresh))
    return records


specs = st.lists(
    st.builds(
        Spec,
        kind=st.sampled_from(KINDS),
        organisation=st.sampled_from(ORGANISATIONS),
        credits=st.integers(min_value=1, max_value=50),
        ref=st.integers(min_value=0, max_value=10),
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(specs=specs, batch=st.integers(min_value=2, max_value=50))
@example(
    specs=[Spec(kind, ORGANISATIONS[n % 3], 7, n) for n, kind in enumerate(KINDS * 2)], batch=50
)
@example(  # a split event next to a record smuggling two: joined, the bytes are a valid batch
    specs=[
        Spec("good", "org_a", 3, 0),
        Spec("split", "org_a", 4, 0),
        Spec("two_events", "org_a", 5, 0),
    ],
    batch=10,
)
def test_every_record_has_the_same_verdict_alone_and_in_a_batch(
    infrastructure: Infrastructure, specs: list[Spec], batch: int
) -> None:
    asyncio.run(_compare(infrastructure, corpus(specs), batch))


async def _compare(
    infrastructure: Infrastructure, records: list[tuple[bytes, bytes]], batch: int
) -> None:
    suffix = uuid.uuid4().hex[:10]
    prefix = f"v{suffix}."
    await ensure_topics(infrastructure.kafka_bootstrap, prefix, [AGENT_USAGE])
    await produce(infrastructure.kafka_bootstrap, AGENT_USAGE.topic(prefix), records)
    alone = _settings(infrastructure, prefix, f"v_{suffix}_alone", "alone", 1)
    batched = _settings(infrastructure, prefix, f"v_{suffix}_batched", "batched", batch)
    kernels = await asyncio.gather(
        *(Kernel.start(SERVICE, s, SystemClock()) for s in (alone, batched))
    )
    try:
        for s in (alone, batched):
            await eventually(
                lambda s=s: _committed(s, len(records)), timeout=60, what="all committed"
            )
        # Every record the consumers parked (the broker's end offsets alone may lag behind
        # what it acknowledged: shared/facts).
        refused = sum(c.parked.count for k in kernels for c in k.consumers if c.name == "usage")
        parked = await read_topic(
            infrastructure.kafka_bootstrap, AGENT_USAGE.dead_letter_topic(prefix), at_least=refused
        )
        ledgers = [await _ledger(k.pool) for k in kernels]
    finally:
        for kernel in kernels:
            await kernel.stop()
        conn = await asyncpg.connect(infrastructure.database_url)
        try:
            for s in (alone, batched):
                await conn.execute(f'DROP SCHEMA IF EXISTS "{s.db_schema}" CASCADE')
        finally:
            await conn.close()

    verdicts = [_verdicts(parked, s.group_id("usage")) for s in (alone, batched)]
    assert verdicts[0] == verdicts[1]
    assert len(verdicts[0]) == sum(1 for r in parked if _group(r) == alone.group_id("usage"))
    assert ledgers[0] == ledgers[1]


def _settings(
    infrastructure: Infrastructure, prefix: str, schema: str, group: str, batch: int
) -> MeteringSettings:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": infrastructure.kafka_bootstrap,
        "DATABASE_URL": infrastructure.database_url,
        "TOPIC_PREFIX": prefix,
        "KAFKA_SESSION_TIMEOUT_MS": "2000",
        "KAFKA_CREATE_TOPICS": "false",
        "METERING_DB_SCHEMA": schema,
        "METERING_CONSUMER_GROUP": group,
        "METERING_BATCH_MAX_RECORDS": str(batch),
    }
    with mock.patch.dict(os.environ, env):
        return MeteringSettings()


def _group(record: object) -> str:
    return dict(record.headers)["dlq.consumer_group"].decode()  # type: ignore[attr-defined]


def _verdicts(parked: list, group: str) -> dict[tuple[int, int], str]:
    """(partition, offset) -> reason, of what `group` parked; the rest was accepted."""
    return {
        (
            int(dict(r.headers)["dlq.original_partition"]),
            int(dict(r.headers)["dlq.original_offset"]),
        ): dict(r.headers)["dlq.reason"].decode()
        for r in parked
        if _group(r) == group
    }


async def _ledger(pool: asyncpg.Pool) -> tuple[list, list]:
    entries = await pool.fetch(
        "SELECT entry_id, organisation_id, amount, message_id FROM ledger ORDER BY entry_id"
    )
    wallets = await pool.fetch(
        "SELECT organisation_id, balance, used FROM wallets ORDER BY organisation_id"
    )
    return [tuple(r.values()) for r in entries], [tuple(r.values()) for r in wallets]


async def _committed(settings: MeteringSettings, records: int) -> bool:
    total = await committed(
        settings.kafka_bootstrap_servers,
        settings.group_id("usage"),
        AGENT_USAGE.topic(settings.topic_prefix),
        AGENT_USAGE.partitions,
    )
    return total >= records
