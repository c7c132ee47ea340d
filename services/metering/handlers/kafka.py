"""FastStream subscribers. Each hands the raw batch to its `BatchConsumer`, which applies,
parks and commits; offsets are committed by it, never by FastStream (AckPolicy.MANUAL)."""

from __future__ import annotations

from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from shared.consumer import BatchConsumer
from shared.kafka import consumer_options
from shared.topics import AGENT_USAGE, CREDIT_GRANT_REQUESTS

from ..settings import MeteringSettings


def _raw(message: Any) -> Any:
    """Skip FastStream's body decoding: the consumer decodes the whole batch at once."""
    return message.raw_message


def register(
    broker: KafkaBroker,
    settings: MeteringSettings,
    *,
    usage: BatchConsumer,
    grants: BatchConsumer,
) -> None:
    prefix = settings.topic_prefix

    @broker.subscriber(
        AGENT_USAGE.topic(prefix),
        group_id=settings.group_id(usage.name),
        batch=True,
        max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
        ack_policy=AckPolicy.MANUAL,
        listener=usage.rebalance_listener(),
        decoder=_raw,
        title="metering.usage",
        description="Debits one ledger entry per usage event, exactly once.",
        **consumer_options(settings),
    )
    async def on_usage(body: Any, message: KafkaMessage) -> None:
        await usage.handle(message.raw_message, message.consumer)

    @broker.subscriber(
        CREDIT_GRANT_REQUESTS.topic(prefix),
        group_id=settings.group_id(grants.name),
        batch=True,
        max_records=100,
        batch_timeout_ms=settings.batch_timeout_ms,
        ack_policy=AckPolicy.MANUAL,
        listener=grants.rebalance_listener(),
        decoder=_raw,
        title="metering.grants",
        description="Applies each grant command once per (organisation, period key).",
        **consumer_options(settings, fetch_bytes=1024 * 1024),
    )
    async def on_grant(body: Any, message: KafkaMessage) -> None:
        await grants.handle(message.raw_message, message.consumer)
