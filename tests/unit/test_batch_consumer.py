"""The consumer steps with fakes for the Kafka consumer and the dead-letter publisher: offsets
are committed only after the batch is applied and parked; poison is isolated; a systemic
failure parks nothing and rewinds."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg
import orjson
from aiokafka import TopicPartition

from shared.consumer import BatchConsumer, RetryPolicy
from shared.events import AgentMessageProcessedV1
from shared.events.codec import TopicCodec
from shared.events.examples import example

TOPIC = "agent.usage"
FAST = RetryPolicy(first_delay=0.001, max_delay=0.002, max_consecutive_parks=50)


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp: int = 0
    headers: tuple = ()


def record(offset: int, credits: int = 5, partition: int = 0) -> Record:
    body = orjson.loads(example("agent_message.processed.v1"))
    body["event_id"] = f"00000000-0000-4000-8000-{offset:012d}"
    body["data"]["credits"] = credits
    return Record(TOPIC, partition, offset, b"org_acme", orjson.dumps(body))


@dataclass
class FakeConsumer:
    commits: list[dict] = field(default_factory=list)
    seeks: list[tuple[TopicPartition, int]] = field(default_factory=list)

    async def commit(self, offsets: dict) -> None:
        self.commits.append(dict(offsets))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, p) for p in range(3)}


@dataclass
class FakeDeadLetters:
    parked: list[tuple[int, str]] = field(default_factory=list)

    async def park(self, topic: str, items) -> None:  # type: ignore[no-untyped-def]
        self.parked.extend((r.offset, rejection.reason) for r, rejection in items)


class Ledger:
    """Applies credits; refuses credits == 13 as the database would refuse a poison row."""

    def __init__(self, fail_always: bool = False, transient_failures: int = 0) -> None:
        self.applied: list[int] = []
        self.calls = 0
        self.fail_always = fail_always
        self.transient_failures = transient_failures

    async def apply(self, items):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.transient_failures:
            self.transient_failures -= 1
            raise asyncpg.exceptions.SerializationError("could not serialize access")
        if self.fail_always or any(i.event.data.credits == 13 for i in items):
            raise asyncpg.exceptions.DataError("refused")
        self.applied.extend(i.record.offset for i in items)
        return []


def make(ledger: Ledger) -> tuple[BatchConsumer, FakeDeadLetters]:
    dead = FakeDeadLetters()
    consumer = BatchConsumer(
        name="usage",
        codec=TopicCodec((AgentMessageProcessedV1,), max_bytes=4096),
        apply=ledger.apply,
        dead_letters=dead,  # type: ignore[arg-type]
        dead_letter_topic=f"{TOPIC}.dlq",
        retry=FAST,
    )
    return consumer, dead


async def test_offsets_are_committed_after_the_batch_is_applied_and_parked() -> None:
    ledger, kafka = Ledger(), FakeConsumer()
    consumer, dead = make(ledger)
    batch = [record(0), Record(TOPIC, 0, 1, b"org_acme", b"{"), record(2), record(7, partition=1)]

    await consumer.handle(batch, kafka)  # type: ignore[arg-type]
    await consumer.flush()

    assert ledger.applied == [0, 2, 7]
    assert dead.parked == [(1, "malformed_json")]
    assert kafka.commits == [{TopicPartition(TOPIC, 0): 3, TopicPartition(TOPIC, 1): 8}]


async def test_a_poison_message_is_isolated_and_the_rest_applied() -> None:
    ledger, kafka = Ledger(), FakeConsumer()
    consumer, dead = make(ledger)
    batch = [record(i, credits=13 if i == 5 else 2) for i in range(8)]

    await consumer.handle(batch, kafka)  # type: ignore[arg-type]
    await consumer.flush()

    assert sorted(ledger.applied) == [0, 1, 2, 3, 4, 6, 7]
    assert dead.parked == [(5, "processing_failed")]
    assert kafka.commits == [{TopicPartition(TOPIC, 0): 8}]


async def test_a_systemic_failure_parks_nothing_commits_nothing_and_rewinds() -> None:
    ledger, kafka = Ledger(fail_always=True), FakeConsumer()
    consumer, dead = make(ledger)
    first, second = [record(0), record(1)], [record(2), record(3)]

    await consumer.handle(first, kafka)  # type: ignore[arg-type]
    await consumer.handle(second, kafka)  # type: ignore[arg-type]

    assert dead.parked == []
    assert kafka.commits == []
    assert (TopicPartition(TOPIC, 0), 0) in kafka.seeks
    assert ledger.applied == []


async def test_transient_failures_are_retried_without_parking() -> None:
    ledger, kafka = Ledger(transient_failures=3), FakeConsumer()
    consumer, dead = make(ledger)

    await consumer.handle([record(0), record(1)], kafka)  # type: ignore[arg-type]
    await asyncio.wait_for(consumer.flush(), 2)

    assert ledger.applied == [0, 1]
    assert ledger.calls == 4
    assert dead.parked == []
    assert kafka.commits == [{TopicPartition(TOPIC, 0): 2}]


async def test_the_next_batch_waits_for_the_one_in_flight() -> None:
    order: list[str] = []
    release = asyncio.Event()

    async def slow_apply(items):  # type: ignore[no-untyped-def]
        order.append(f"apply {items[0].record.offset}")
        if items[0].record.offset == 0:
            await release.wait()
        return []

    kafka = FakeConsumer()
    consumer = BatchConsumer(
        name="usage",
        codec=TopicCodec((AgentMessageProcessedV1,), max_bytes=4096),
        apply=slow_apply,
        dead_letters=FakeDeadLetters(),  # type: ignore[arg-type]
        dead_letter_topic="dlq",
        retry=FAST,
    )
    await consumer.handle([record(0)], kafka)  # type: ignore[arg-type]
    second = asyncio.create_task(consumer.handle([record(1)], kafka))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert order == ["apply 0"] and kafka.commits == []
    release.set()
    await second
    await consumer.flush()
    assert order == ["apply 0", "apply 1"]
    assert kafka.commits == [{TopicPartition(TOPIC, 0): 1}, {TopicPartition(TOPIC, 0): 2}]
