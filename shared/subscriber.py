"""FastStream plumbing for `BatchConsumer`: a batch subscriber that hands the raw records
through untouched. Offsets are committed by the `BatchConsumer`, never by FastStream
(`AckPolicy.MANUAL`)."""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.message import FAKE_CONSUMER, KafkaAckableMessage

from shared.consumer import BatchConsumer
from shared.kafka import consumer_options
from shared.settings import ServiceSettings


async def _raw_batch(records: tuple[ConsumerRecord, ...]) -> KafkaAckableMessage:
    """`BatchConsumer` decodes the whole batch itself, so FastStream's per-record copying of
    bodies and headers is skipped."""
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


def subscribe(
    broker: KafkaBroker,
    settings: ServiceSettings,
    topic: str,
    consumer: BatchConsumer,
    *,
    max_records: int,
    fetch_bytes: int = 1024 * 1024,
    title: str,
    description: str,
) -> None:
    """Subscribe `consumer` to `topic` in its own consumer group (`settings.group_id`)."""
    subscriber = broker.subscriber(
        topic,
        group_id=settings.group_id(consumer.name),
        batch=True,
        max_records=max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
        ack_policy=AckPolicy.MANUAL,
        listener=consumer.rebalance_listener(),
        parser=_raw_batch,
        decoder=_raw_body,
        title=title,
        description=description,
        **consumer_options(settings, fetch_bytes=fetch_bytes),
    )

    @subscriber
    async def handle(body: Any, message: KafkaMessage) -> None:
        await consumer.handle(message.raw_message, subscriber.consumer)
