"""A topic consumed in batches with exactly-once effect.

Each batch goes through small steps, in this order:

1. decode: records become typed events, or rejections with a reason (`shared.events.codec`);
2. apply: the service applies the events in its database, idempotently (a unique key per
   effect, in the same transaction), and may refuse some (it returns them as rejections);
3. park: every rejection goes to the topic's dead-letter topic, original bytes and reason;
4. commit: the partition offsets after the batch are committed, only now.

A crash anywhere before 4 redelivers the batch, and step 2's idempotence makes the replay a
no-op; nothing is committed that was not applied or parked. While batch N is in steps 2–4,
batch N+1 is fetched and decoded, which keeps the database busy.

Lanes: partitions are split into `lanes` groups (`partition % lanes`), each with one batch in
flight on its own database connection. Topics are keyed by organisation, so two lanes never
touch the same organisation's rows; a partition always maps to the same lane, so its batches are
applied and committed in order, and a lane commits only its own partitions' offsets.

Failures: transient ones (database or broker unavailable, serialization conflicts) are retried
with backoff and stall the partition, which is correct: nothing is wrong with the messages.
A message the database refuses (a poison message) is found by bisecting the batch and parked
with reason `processing_failed`. If every message of a batch fails, or too many fail in a row,
the failure is taken as systemic: nothing is parked, the batch is rewound and retried later.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
)

from shared.deadletter import DeadLetters
from shared.events import Event
from shared.events.codec import Rejection, TopicCodec
from shared.logging import get_logger

E = TypeVar("E", bound=Event)

log = get_logger("shared.consumer")

_TRANSIENT_SQLSTATE_CLASSES = {"08", "40", "53", "55", "57", "58"}


@dataclass(frozen=True, slots=True)
class Decoded(Generic[E]):
    record: ConsumerRecord
    event: E


Apply = Callable[[Sequence[Decoded[E]]], Awaitable[Sequence[tuple[Decoded[E], Rejection]]]]
"""Applies decoded events in one go; returns those it refuses, with the reason."""


class SystemicFailure(Exception):
    """Every message fails: the fault is not in the messages. Rewind and retry later."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, asyncio.TimeoutError, asyncpg.InterfaceError)):
        return True
    if isinstance(exc, (KafkaConnectionError, KafkaTimeoutError)):
        return True
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False))
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES


@dataclass(frozen=True)
class RetryPolicy:
    first_delay: float = 0.1
    max_delay: float = 5.0
    max_consecutive_parks: int = 50

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.first_delay * (2 ** min(attempt, 16)))


@dataclass
class _Lane:
    inflight: asyncio.Task[None] | None = None
    records: Sequence[ConsumerRecord] = ()
    failures: int = 0


class BatchConsumer(Generic[E]):
    """Drives steps 1–4 for one topic. Call `handle` from a FastStream batch subscriber
    declared with `AckPolicy.MANUAL`; pass `rebalance_listener()` as its listener."""

    def __init__(
        self,
        *,
        name: str,
        codec: TopicCodec,
        apply: Apply[E],
        dead_letters: DeadLetters,
        dead_letter_topic: str,
        lanes: int = 1,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self.name = name
        self._codec = codec
        self._apply = apply
        self._dead_letters = dead_letters
        self._dead_letter_topic = dead_letter_topic
        self._retry = retry
        self._lanes = [_Lane() for _ in range(lanes)]
        self._consecutive_parks = 0

    async def handle(self, records: Sequence[ConsumerRecord], consumer: AIOKafkaConsumer) -> None:
        if not records:
            return
        outcomes = self._codec.decode_batch(records)
        split: dict[int, tuple[list[ConsumerRecord], list[Decoded[E]], list[tuple[Any, Rejection]]]]
        split = {}
        lanes = len(self._lanes)
        for record, outcome in zip(records, outcomes, strict=True):
            lane_records, decoded, rejected = split.setdefault(
                record.partition % lanes, ([], [], [])
            )
            lane_records.append(record)
            if isinstance(outcome, Rejection):
                rejected.append((record, outcome))
            else:
                decoded.append(Decoded(record, outcome))  # type: ignore[arg-type]
        for index, (lane_records, decoded, rejected) in sorted(split.items()):
            lane = self._lanes[index]
            if not await self._settle(lane, consumer, lane_records):
                continue
            lane.records = lane_records
            lane.inflight = asyncio.create_task(
                self._complete(lane_records, decoded, rejected, consumer)
            )

    async def flush(self) -> None:
        """Wait for the batches in flight to be applied, parked and committed."""
        for lane in self._lanes:
            if lane.inflight is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(lane.inflight)

    def rebalance_listener(self) -> ConsumerRebalanceListener:
        consumer = self

        class _Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
                await consumer.flush()

            async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
                return None

        return _Listener()

    async def _settle(
        self, lane: _Lane, consumer: AIOKafkaConsumer, next_records: Sequence[ConsumerRecord]
    ) -> bool:
        """Wait for the lane's previous batch. If it failed, rewind it and the batch just
        fetched for this lane, and back off."""
        task, lane.inflight = lane.inflight, None
        if task is None:
            return True
        try:
            await task
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            lane.failures += 1
            delay = self._retry.delay(lane.failures)
            log.error(
                "batch failed; rewinding", consumer=self.name, error=repr(exc), retry_in=delay
            )
            _rewind(consumer, [*lane.records, *next_records])
            await asyncio.sleep(delay)
            return False
        lane.failures = 0
        return True

    async def _complete(
        self,
        records: Sequence[ConsumerRecord],
        decoded: list[Decoded[E]],
        rejected: list[tuple[Any, Rejection]],
        consumer: AIOKafkaConsumer,
    ) -> None:
        try:
            refused = await self._apply_isolating(decoded)
            parked = [*rejected, *((d.record, r) for d, r in refused)]
            await self._with_retries(
                "park", lambda: self._dead_letters.park(self._dead_letter_topic, parked)
            )
        except Exception:
            # Fetch the batch again even if nothing else arrives; `handle` backs off.
            _rewind(consumer, records)
            raise
        await self._commit(consumer, records)
        log.debug(
            "batch committed",
            consumer=self.name,
            records=len(records),
            applied=len(decoded) - len(refused),
            parked=len(parked),
        )

    async def _apply_isolating(self, items: list[Decoded[E]]) -> list[tuple[Decoded[E], Rejection]]:
        if not items:
            return []
        try:
            refused = list(await self._with_retries("apply", lambda: self._apply(items)))
        except SystemicFailure:
            raise
        except Exception as exc:
            if len(items) == 1:
                self._consecutive_parks += 1
                if self._consecutive_parks > self._retry.max_consecutive_parks:
                    raise SystemicFailure(
                        f"{self._consecutive_parks} messages failed in a row"
                    ) from exc
                return [(items[0], Rejection("processing_failed", repr(exc)[:500]))]
            middle = len(items) // 2
            refused = await self._apply_isolating(items[:middle])
            refused += await self._apply_isolating(items[middle:])
            if len(refused) == len(items) and all(
                r.reason == "processing_failed" for _, r in refused
            ):
                raise SystemicFailure(f"all {len(items)} messages failed: {exc!r}") from exc
            return refused
        self._consecutive_parks = 0
        return refused

    async def _with_retries(self, step: str, action: Callable[[], Awaitable[Any]]) -> Any:
        attempt = 0
        while True:
            try:
                return await action()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                attempt += 1
                delay = self._retry.delay(attempt)
                log.warning(
                    "transient failure; retrying",
                    consumer=self.name,
                    step=step,
                    attempt=attempt,
                    retry_in=delay,
                    error=repr(exc),
                )
                await asyncio.sleep(delay)

    async def _commit(self, consumer: AIOKafkaConsumer, records: Sequence[ConsumerRecord]) -> None:
        offsets: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The partitions moved to another member during a rebalance. The batch is applied;
            # the new owner replays it from the last commit and the replay is a no-op.
            log.warning(
                "offset commit refused after rebalance", consumer=self.name, error=repr(exc)
            )


def _rewind(consumer: AIOKafkaConsumer, records: Sequence[ConsumerRecord]) -> None:
    earliest: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        earliest[tp] = min(earliest.get(tp, record.offset), record.offset)
    assigned = consumer.assignment()
    for tp, offset in earliest.items():
        if tp in assigned:
            consumer.seek(tp, offset)
