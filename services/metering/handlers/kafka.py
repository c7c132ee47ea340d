"""FastStream subscribers. Each hands the raw batch to its `BatchConsumer`, which applies,
parks and commits; offsets are committed by it, never by FastStream (AckPolicy.MANUAL)."""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.message import FAKE_CONSUMER, KafkaAckableMessage

from shared.consumer import BatchConsumer
from shared.kafka import consumer_options
from shared.topics import AGENT_USAGE, CREDIT_GRANT_REQUESTS, TopicSpec

from ..settings import MeteringSettings


async def _raw_batch(records: tuple[ConsumerRecord, ...]) -> KafkaAckableMessage:
    """Hand the records through untouched: `BatchConsumer` decodes the whole batch at once, so
    FastStream's per-record copying of bodies and headers is skipped."""
    first = records[0]
    return KafkaAckableMessage(
        raw_message=records,
        body=b"",
        message_id=f"{first.topic}-{first.partition}-{first.offset}",
        correlation_id=f"{first.topic}-{first.partition}-{first.offset}",
        consumer=FAKE_CONSUMER,
    )


def _raw_body(message: Any) -> Any:
    return message.raw_message


def _subscribe(
    broker: KafkaBroker,
    settings: MeteringSettings,
    spec: TopicSpec,
    consumer: BatchConsumer,
    *,
    max_records: int,
    fetch_bytes: int,
    description: str,
) -> None:
    subscriber = broker.subscriber(
        spec.topic(settings.topic_prefix),
        group_id=settings.group_id(consumer.name),
        batch=True,
        max_records=max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
        ack_policy=AckPolicy.MANUAL,
        listener=consumer.rebalance_listener(),
        parser=_raw_batch,
        decoder=_raw_body,
        title=f"metering.{consumer.name}",
        description=description,
        **consumer_options(settings, fetch_bytes=fetch_bytes),
    )

    @subscriber
    async def handle(body: Any, message: KafkaMessage) -> None:
        await consumer.handle(message.raw_message, subscriber.consumer)


def register(
    broker: KafkaBroker, settings: MeteringSettings, *, usage: BatchConsumer, grants: BatchConsumer
) -> None:
    _subscribe(
        broker,
        settings,
        AGENT_USAGE,
        usage,
        max_records=settings.batch_max_records,
        fetch_bytes=1024 * 1024,
        description="Debits one ledger entry per usage event, exactly once.",
    )
    _subscribe(
        broker,
        settings,
        CREDIT_GRANT_REQUESTS,
        grants,
        max_records=100,
        fetch_bytes=1024 * 1024,
        description="Applies each grant command once per (organisation, period key).",
    )
