"""The consumer steps with fakes for the Kafka consumer and the dead-letter publisher: offsets
are committed only after the batch is applied and parked; poison is isolated, however many and
wherever; a systemic failure parks nothing, rewinds and pauses only its partitions.
(`test_consumer_properties` runs the same steps against the real broker and database.)"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg
import orjson
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from shared.consumer import BatchConsumer, RetryPolicy
from shared.events import AgentMessageProcessedV1
from shared.events.codec import TopicCodec
from shared.events.examples import example

TOPIC = "agent.usage"
FAST = RetryPolicy(first_delay=0.001, max_delay=0.002, transient_attempts=6)


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
    body["data"]["message_id"] = f"msg_{offset}"
    return Record(TOPIC, partition, offset, b"org_acme", orjson.dumps(body))


@dataclass
class FakeConsumer:
    commits: list[dict] = field(default_factory=list)
    seeks: list[tuple[TopicPartition, int]] = field(default_factory=list)
    paused_partitions: set[TopicPartition] = field(default_factory=set)

    async def commit(self, offsets: dict) -> None:
        self.commits.append(dict(offsets))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, p) for p in range(3)}

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_partitions.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_partitions.difference_update(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_partitions)

    def highwater(self, tp: TopicPartition) -> int:
        return 100


@dataclass
class FakeDeadLetters:
    parked: list[tuple[int, str]] = field(default_factory=list)

    async def park(self, topic: str, items) -> None:  # type: ignore[no-untyped-def]
        self.parked.extend((r.offset, rejection.reason) for r, rejection in items)


class Ledger:
    """Applies credits; refuses credits == 13 as the database refuses a poison row (a data
    exception); `broken` fails like a bug; `transient_failures` like a lost connection."""

    def __init__(
        self, broken: bool = False, transient_failures: int = 0, broken_credits: int = 0
    ) -> None:
        self.applied: list[int] = []
        self.calls = 0
        self.broken = broken
        self.broken_credits = broken_credits
        self.transient_failures = transient_failures

    async def apply(self, items):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.transient_failures:
            self.transient_failures -= 1
            raise asyncpg.exceptions.SerializationError("could not serialize access")
        if self.broken or any(i.event.data.credits == self.broken_credits for i in items):
            raise asyncpg.exceptions.UndefinedTableError('relation "ledger" does not exist')
        if any(i.event.data.credits == 13 for i in items):
            raise asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence")
        self.applied.extend(i.record.offset for i in items)
        return []


def make(
    ledger: Ledger | None = None, lanes: int = 1, *, apply=None, rebalance_flush_seconds=5.0
) -> tuple[BatchConsumer, FakeDeadLetters]:  # type: ignore[no-untyped-def]
    dead = FakeDeadLetters()
    consumer = BatchConsumer(
        name="usage",
        codec=TopicCodec((AgentMessageProcessedV1,), max_bytes=4096),
        apply=apply or ledger.apply,  # type: ignore[union-attr]
        dead_letters=dead,  # type: ignore[arg-type]
        dead_letter_topic=f"{TOPIC}.dlq",
        lanes=lanes,
        retry=FAST,
        rebalance_flush_seconds=rebalance_flush_seconds,
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


async def test_a_run_of_poison_messages_is_parked_and_the_rest_applied() -> None:
    ledger, kafka = Ledger(), FakeConsumer()
    consumer, dead = make(ledger)
    poison = {3, 4, 5, 6, 9}
    batch = [record(i, credits=13 if i in poison else 2) for i in range(12)]

    await consumer.handle(batch, kafka)  # type: ignore[arg-type]
    await consumer.flush()

    assert sorted(ledger.applied) == [i for i in range(12) if i not in poison]
    assert dead.parked == [(i, "processing_failed") for i in sorted(poison)]
    assert kafka.commits == [{TopicPartition(TOPIC, 0): 12}]
    assert consumer.stalled() == []


async def test_a_batch_of_nothing_but_poison_is_parked_whole() -> None:
    ledger, kafka = Ledger(), FakeConsumer()
    consumer, dead = make(ledger)

    await consumer.handle([record(i, credits=13) for i in range(5)], kafka)  # type: ignore[arg-type]
    await consumer.flush()

    assert dead.parked == [(i, "processing_failed") for i in range(5)]
    assert kafka.commits == [{TopicPartition(TOPIC, 0): 5}]


async def test_a_systemic_failure_parks_nothing_and_pauses_only_its_partitions() -> None:
    ledger, kafka = Ledger(broken=True), FakeConsumer()
    consumer, dead = make(ledger, lanes=2)
    first = [record(0, partition=0), record(1, partition=0)]

    await consumer.handle(first, kafka)  # type: ignore[arg-type]
    await consumer.flush()

    assert dead.parked == [] and kafka.commits == [] and ledger.applied == []
    assert (TopicPartition(TOPIC, 0), 0) in kafka.seeks
    assert kafka.paused_partitions == {TopicPartition(TOPIC, 0)}
    (stalled,) = consumer.stalled()
    assert (stalled.partition, stalled.offset, stalled.lag, stalled.failures) == (0, 0, 100, 1)
    assert "UndefinedTable" in stalled.error

    ledger.broken = False
    await asyncio.sleep(0.05)  # the pause ends after the retry delay
    assert kafka.paused_partitions == set()
    await consumer.handle([record(5, partition=1)], kafka)  # type: ignore[arg-type]
    await consumer.handle(first, kafka)  # type: ignore[arg-type]
    await consumer.flush()
    assert sorted(ledger.applied) == [0, 1, 5]
    assert consumer.stalled() == []


async def test_a_systemic_failure_stalls_only_the_partition_whose_records_cause_it() -> None:
    ledger, kafka = Ledger(broken_credits=99), FakeConsumer()
    consumer, dead = make(ledger, lanes=1)
    batch = [record(0, partition=0), record(1, partition=1, credits=99), record(2, partition=2)]

    await consumer.handle(batch, kafka)  # type: ignore[arg-type]
    await consumer.flush()

    assert sorted(ledger.applied) == [0, 2]
    assert kafka.commits == [{TopicPartition(TOPIC, 0): 1, TopicPartition(TOPIC, 2): 3}]
    assert [s.partition for s in consumer.stalled()] == [1]
    assert kafka.paused_partitions == {TopicPartition(TOPIC, 1)}
    assert dead.parked == []


async def test_transient_failures_are_retried_without_parking() -> None:
    ledger, kafka = Ledger(transient_failures=3), FakeConsumer()
    consumer, dead = make(ledger)

    await consumer.handle([record(0), record(1)], kafka)  # type: ignore[arg-type]
    await asyncio.wait_for(consumer.flush(), 2)

    assert ledger.applied == [0, 1]
    assert ledger.calls == 4
    assert dead.parked == []
    assert kafka.commits == [{TopicPartition(TOPIC, 0): 2}]


async def test_a_transient_failure_that_lasts_stalls_the_partition_instead_of_parking() -> None:
    ledger, kafka = Ledger(transient_failures=1_000), FakeConsumer()
    consumer, dead = make(ledger)

    await consumer.handle([record(0), record(1, credits=13)], kafka)  # type: ignore[arg-type]
    await consumer.flush()

    assert ledger.calls == FAST.transient_attempts
    assert dead.parked == [] and kafka.commits == []
    assert [s.partition for s in consumer.stalled()] == [0]


async def test_a_rebalance_does_not_wait_for_ever_for_a_batch_in_flight() -> None:
    release = asyncio.Event()

    async def stuck(items):  # type: ignore[no-untyped-def]
        await release.wait()
        return []

    kafka = FakeConsumer()
    consumer, _ = make(apply=stuck, rebalance_flush_seconds=0.05)
    await consumer.handle([record(0)], kafka)  # type: ignore[arg-type]

    await asyncio.wait_for(consumer.rebalance_listener().on_partitions_revoked([]), 2)

    assert kafka.commits == []
    await consumer.handle([record(1)], kafka)  # type: ignore[arg-type]
    assert (TopicPartition(TOPIC, 0), 0) in kafka.seeks  # the abandoned batch is fetched again


async def test_the_next_batch_waits_for_the_one_in_flight() -> None:
    order: list[str] = []
    release = asyncio.Event()

    async def slow_apply(items):  # type: ignore[no-untyped-def]
        order.append(f"apply {items[0].record.offset}")
        if items[0].record.offset == 0:
            await release.wait()
        return []

    kafka = FakeConsumer()
    consumer, _ = make(apply=slow_apply)
    await consumer.handle([record(0)], kafka)  # type: ignore[arg-type]
    second = asyncio.create_task(consumer.handle([record(1)], kafka))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert order == ["apply 0"] and kafka.commits == []
    release.set()
    await second
    await consumer.flush()
    assert order == ["apply 0", "apply 1"]
    assert kafka.commits == [{TopicPartition(TOPIC, 0): 1}, {TopicPartition(TOPIC, 0): 2}]


@dataclass
class SlowBroker(FakeConsumer):
    """Offset commits wait for `answer`; `fail` makes the next one fail like a lost broker."""

    answer: asyncio.Event = field(default_factory=asyncio.Event)
    sent: list[dict] = field(default_factory=list)
    fail: bool = False

    async def commit(self, offsets: dict) -> None:
        self.sent.append(dict(offsets))
        await self.answer.wait()
        if self.fail:
            self.fail = False
            raise KafkaConnectionError("broker gone")
        self.commits.append(dict(offsets))


async def test_a_slow_offset_commit_does_not_hold_up_the_next_batch_and_later_ones_merge() -> None:
    ledger, kafka = Ledger(), SlowBroker()
    consumer, _ = make(ledger)

    await consumer.handle([record(0), record(1)], kafka)  # type: ignore[arg-type]
    await consumer.handle([record(2), record(3, partition=1)], kafka)  # type: ignore[arg-type]
    await consumer.handle([record(4)], kafka)  # type: ignore[arg-type]
    await asyncio.sleep(0.01)

    assert ledger.applied == [0, 1, 2, 3, 4]  # applied while the first commit is unanswered
    assert kafka.sent == [{TopicPartition(TOPIC, 0): 2}] and kafka.commits == []
    kafka.answer.set()
    assert await consumer.flush(2)
    assert kafka.commits == [
        {TopicPartition(TOPIC, 0): 2},
        {TopicPartition(TOPIC, 0): 5, TopicPartition(TOPIC, 1): 4},
    ]


async def test_offsets_of_a_failed_commit_go_with_the_next_one() -> None:
    ledger, kafka = Ledger(), SlowBroker(fail=True)
    kafka.answer.set()
    consumer, _ = make(ledger)

    await consumer.handle([record(0, partition=1)], kafka)  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert kafka.sent == [{TopicPartition(TOPIC, 1): 1}] and kafka.commits == []
    await consumer.handle([record(1)], kafka)  # type: ignore[arg-type]
    await consumer.flush(2)

    assert kafka.commits == [{TopicPartition(TOPIC, 1): 1, TopicPartition(TOPIC, 0): 2}]


async def test_flush_sends_again_the_offsets_of_a_failed_commit() -> None:
    ledger, kafka = Ledger(), SlowBroker(fail=True)
    kafka.answer.set()
    consumer, _ = make(ledger)

    await consumer.handle([record(0)], kafka)  # type: ignore[arg-type]

    assert await consumer.flush(2) is True
    assert len(kafka.sent) == 2 and kafka.commits == [{TopicPartition(TOPIC, 0): 1}]


async def test_a_commit_still_on_its_way_does_not_clear_a_later_stall() -> None:
    ledger, kafka = Ledger(broken_credits=99), SlowBroker()
    consumer, _ = make(ledger)

    await consumer.handle([record(0)], kafka)  # type: ignore[arg-type]
    await consumer.handle([record(1, credits=99)], kafka)  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    kafka.answer.set()
    await consumer.flush(2)

    assert kafka.commits == [{TopicPartition(TOPIC, 0): 1}]
    assert [(s.partition, s.offset) for s in consumer.stalled()] == [(0, 1)]


async def test_flush_gives_up_on_a_commit_that_never_answers() -> None:
    ledger, kafka = Ledger(), SlowBroker()
    consumer, _ = make(ledger)

    await consumer.handle([record(0)], kafka)  # type: ignore[arg-type]

    assert await consumer.flush(0.05) is False
    kafka.answer.set()
    assert await consumer.flush(2) is True
    assert kafka.commits == [{TopicPartition(TOPIC, 0): 1}]


async def test_offsets_are_never_sent_for_a_partition_no_longer_assigned() -> None:
    ledger, kafka = Ledger(), SlowBroker()
    consumer, _ = make(ledger)
    await consumer.handle([record(0)], kafka)  # type: ignore[arg-type]
    await consumer.handle([record(1), record(2, partition=5)], kafka)  # type: ignore[arg-type]
    await asyncio.sleep(0.01)

    kafka.answer.set()
    await consumer.flush(2)

    assert kafka.commits == [{TopicPartition(TOPIC, 0): 1}, {TopicPartition(TOPIC, 0): 2}]
