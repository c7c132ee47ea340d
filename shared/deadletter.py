"""Parking refused messages in a topic's dead-letter topic: the original bytes, the original key
and headers, and why. Nothing a consumer refuses is lost; it can be inspected and replayed.

Headers added (all strings): dlq.reason, dlq.detail, dlq.original_topic,
dlq.original_partition, dlq.original_offset, dlq.original_timestamp, dlq.consumer_group,
dlq.parked_at. If the broker refuses the original size, the value is cut and dlq.truncated,
dlq.original_size and dlq.original_sha256 say so.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError
from faststream.kafka import KafkaBroker

from shared.clock import Clock
from shared.events.codec import Rejection
from shared.logging import get_logger

log = get_logger("shared.deadletter")

_TRUNCATE_TO = 256 * 1024


class DeadLetters:
    def __init__(self, broker: KafkaBroker, *, group: str, clock: Clock) -> None:
        self._broker = broker
        self._group = group
        self._clock = clock

    async def park(self, dead_letter_topic: str, items: Sequence[tuple[Any, Rejection]]) -> None:
        """Publish every (record, rejection) and wait until the broker has them all."""
        if not items:
            return
        parked_at = self._clock.now().isoformat()
        sends = []
        for record, rejection in items:
            log.warning(
                "message parked in dead-letter topic",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                reason=rejection.reason,
                detail=rejection.detail,
                dead_letter_topic=dead_letter_topic,
            )
            headers = {k: v.decode("utf-8", "replace") for k, v in (record.headers or ())}
            headers.update(
                {
                    "dlq.reason": rejection.reason,
                    "dlq.detail": rejection.detail,
                    "dlq.original_topic": record.topic,
                    "dlq.original_partition": str(record.partition),
                    "dlq.original_offset": str(record.offset),
                    "dlq.original_timestamp": str(record.timestamp),
                    "dlq.consumer_group": self._group,
                    "dlq.parked_at": parked_at,
                }
            )
            sends.append(self._send(dead_letter_topic, record.value or b"", record.key, headers))
        await asyncio.gather(*sends)

    async def _send(
        self, topic: str, value: bytes, key: bytes | None, headers: dict[str, str]
    ) -> None:
        try:
            await self._broker.publish(value, topic, key=key, headers=headers)
        except MessageSizeTooLargeError:
            headers = {
                **headers,
                "dlq.truncated": "true",
                "dlq.original_size": str(len(value)),
                "dlq.original_sha256": hashlib.sha256(value).hexdigest(),
            }
            await self._broker.publish(value[:_TRUNCATE_TO], topic, key=key, headers=headers)
