"""Kafka wiring shared by the services: the FastStream broker, consumer options, and batched
sending for high-volume producers (the outbox relay, the load generator)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from faststream.kafka import KafkaBroker

from shared.settings import CommonSettings

MAX_REQUEST_BYTES = 4 * 1024 * 1024


def make_broker(settings: CommonSettings, *, client_id: str) -> KafkaBroker:
    """A FastStream broker. Publishing waits for all in-sync replicas (`acks=all`).

    The idempotent producer is off: the embedded broker (Tansu) does not support it, and
    exactly-once effect comes from idempotent consumers anyway.
    """
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=client_id,
        acks="all",
        linger_ms=2,
        max_request_size=MAX_REQUEST_BYTES,
        enable_idempotence=False,
        logger=logging.getLogger(f"{client_id}.broker"),
        log_level=logging.DEBUG,
    )


def consumer_options(
    settings: CommonSettings, *, fetch_bytes: int = 8 * 1024 * 1024
) -> dict[str, Any]:
    """Options for every consumer: offsets committed by us, after the database commit."""
    session = settings.kafka_session_timeout_ms
    static = (
        {"group_instance_id": settings.kafka_group_instance_id}
        if settings.kafka_group_instance_id
        else {}
    )
    return {
        **static,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": session,
        "heartbeat_interval_ms": max(100, session // 10),
        "max_partition_fetch_bytes": fetch_bytes,
        # The broker answers a fetch after at most this long even with nothing new; the
        # default (500 ms) is what a new message waits, worst case, on an idle partition.
        "fetch_max_wait_ms": 25,
        "fetch_max_bytes": fetch_bytes * 8,
    }


class KeyPlacement:
    """Places keys on partitions as Kafka's default partitioner does (murmur2), remembering each
    key: the hash costs microseconds in pure Python, and keys (organisations) repeat."""

    def __init__(self, *, remember: int = 1_000_000) -> None:
        self._partitioner = DefaultPartitioner()
        self._placed: dict[tuple[str, bytes], int] = {}
        self._remember = remember

    def partition(self, topic: str, key: bytes, partitions: Sequence[int]) -> int:
        placed = self._placed.get((topic, key))
        if placed is None:
            if len(self._placed) >= self._remember:
                self._placed.clear()
            placed = self._placed[(topic, key)] = self._partitioner(key, partitions, partitions)
        return placed

    def forget(self) -> None:
        self._placed.clear()


Record = tuple[str, int, bytes, bytes, Sequence[tuple[str, bytes]]]
"""(topic, partition, key, value, headers)."""


async def send_batched(producer: AIOKafkaProducer, records: Iterable[Record]) -> None:
    """Send records as record batches, one open batch per partition, keeping their order, and
    wait until the broker acknowledged them all. Per record this costs a few microseconds
    instead of a full `send`."""
    open_batches: dict[tuple[str, int], Any] = {}
    sends = []
    for topic, partition, key, value, headers in records:
        batch = open_batches.get((topic, partition))
        if (
            batch is not None
            and batch.append(key=key, value=value, timestamp=None, headers=headers) is not None
        ):
            continue
        if batch is not None:
            sends.append(await producer.send_batch(batch, topic, partition=partition))
        batch = open_batches[(topic, partition)] = producer.create_batch()
        batch.append(key=key, value=value, timestamp=None, headers=headers)
    for (topic, partition), batch in open_batches.items():
        sends.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*sends)
