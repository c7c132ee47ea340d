from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "",
) -> T:
    """Poll `check` until it returns something truthy; fail with its last value after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"not reached within {timeout}s: {what or check}; last value: {last!r}")


async def produce(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes | None]],
    *,
    headers: Sequence[tuple[str, bytes]] = (),
) -> None:
    """Publish raw (key, value) records with a plain aiokafka producer, as any client would."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sends = [
            await producer.send(topic, value=value, key=key, headers=list(headers))
            for key, value in records
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def read_topic(
    bootstrap: str, topic: str, *, at_least: int = 0, timeout: float = 20.0
) -> list[ConsumerRecord]:
    """Every record of `topic` from the beginning (no consumer group), waiting until there are
    at least `at_least` of them. Records come in partition order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            if topic in await consumer.topics() or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        partitions = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions or ())]
        if not tps:
            raise AssertionError(f"topic {topic} does not exist")
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        found: list[ConsumerRecord] = []
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                found.extend(records)
            ends = await consumer.end_offsets(tps)
            caught_up = all([await consumer.position(tp) >= ends[tp] for tp in tps])
            if caught_up and len(found) >= at_least:
                return sorted(found, key=lambda r: (r.partition, r.offset))
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: {len(found)} records, expected at least {at_least}")
    finally:
        await consumer.stop()


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """The offsets `group` committed on `topic`, summed over its partitions: once every record
    is applied or parked, the number of records published. (End offsets are not a reliable
    count on the embedded broker; see shared/facts.)"""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        offsets = [await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)]
    finally:
        await consumer.stop()
    return sum(offset or 0 for offset in offsets)
