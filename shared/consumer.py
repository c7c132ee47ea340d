"""A topic consumed in batches with exactly-once effect.

Each batch goes through small steps, in this order:

1. decode: records become typed events, or rejections with a reason (`shared.events.codec`);
2. apply: the service applies the events in its database, idempotently (a unique key per
   effect, in the same transaction), and may refuse some (it returns them as rejections);
3. park: every rejection goes to the topic's dead-letter topic, original bytes and reason;
4. commit: the partition offsets after the batch are committed, only now.

A crash anywhere before 4 redelivers the batch, and step 2's idempotence makes the replay a
no-op; nothing is committed that was not applied or parked. While batch N is in steps 2–3,
batch N+1 is fetched and decoded, which keeps the database busy; and step 4 does not hold up
the next batch: offsets go to the broker in the background, in order, those that pile up
meanwhile merged into one commit. A crash before they arrive only replays applied batches.

Lanes: partitions are split into `lanes` groups (`partition % lanes`), each with one batch in
flight on its own database connection. Topics are keyed by organisation, so two lanes never
touch the same organisation's rows; a partition always maps to the same lane, so its batches are
applied and committed in order, and a lane commits only its own partitions' offsets.

Failures are told apart by what failed (`classify`), never by how many records failed:
- transient (the database or broker unreachable, a serialization conflict, a deadlock): the
  step is retried in place with back-off, a few times;
- poison (the database refused the data: SQLSTATE classes 22 and 23, or a value the driver
  cannot encode): the batch is bisected until each refused record stands alone; it is parked
  with reason `processing_failed` and every other record is applied. Any number of poison
  records, anywhere, in any batch, ends that way;
- systemic (anything else, e.g. a bug or a missing table; or a transient failure that outlasted
  its retries): nothing is parked and nothing committed; the batch is rewound, its partitions
  are paused and resumed after a growing delay. If the batch spans several partitions, each is
  first tried alone (a systemic failure may come from one organisation's records), so only the
  partitions that fail stall. Other partitions keep flowing. A partition that cannot advance
  is reported by `stalled()` (readiness) and logged with its lag.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from shared import metrics
from shared.deadletter import DeadLetters
from shared.events import Event
from shared.events.codec import Rejection, TopicCodec
from shared.failures import Failure, classify, exponential
from shared.logging import get_logger

E = TypeVar("E", bound=Event)

log = get_logger("shared.consumer")


@dataclass(frozen=True, slots=True)
class Decoded(Generic[E]):
    record: ConsumerRecord
    event: E


Apply = Callable[[Sequence[Decoded[E]]], Awaitable[Sequence[tuple[Decoded[E], Rejection]]]]
"""Applies decoded events in one go; returns those it refuses, with the reason."""


@dataclass(frozen=True)
class RetryPolicy:
    first_delay: float = 0.1
    max_delay: float = 5.0
    transient_attempts: int = 6
    """Attempts of one step before a transient failure counts as a stall (about 3 s)."""

    def delay(self, attempt: int) -> float:
        return exponential(attempt, first=self.first_delay, cap=self.max_delay)


@dataclass(frozen=True, slots=True)
class Stalled:
    """A partition that has not advanced since `since` (monotonic seconds)."""

    topic: str
    partition: int
    offset: int
    """The first offset that could not be applied."""
    lag: int | None
    """Records behind the partition's end, as last seen by the consumer."""
    failures: int
    since: float
    error: str


@dataclass
class Parked:
    """What this consumer parked since it started (shown in readiness)."""

    count: int = 0
    last_reason: str | None = None
    last_at: float | None = None
    """Unix time."""


@dataclass
class _PartitionState:
    failures: int = 0
    stalled_since: float | None = None
    offset: int = 0
    error: str = ""


@dataclass
class _Lane:
    inflight: asyncio.Task[None] | None = None
    records: Sequence[ConsumerRecord] = ()
    rewound: dict[TopicPartition, int] = field(default_factory=dict)
    """Partitions the batch in flight rewound on failure, and to which offset."""


@dataclass
class BatchConsumer(Generic[E]):
    """Drives steps 1–4 for one topic. Call `handle` from a FastStream batch subscriber
    declared with `AckPolicy.MANUAL` (`shared.subscriber` does); pass `rebalance_listener()`
    as its listener."""

    name: str
    codec: TopicCodec
    apply: Apply[E]
    dead_letters: DeadLetters
    dead_letter_topic: str
    lanes: int = 1
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rebalance_flush_seconds: float = 5.0
    """How long a rebalance waits for batches in flight before it abandons them (rolled back;
    the partitions' next owner applies them again)."""
    _lanes: list[_Lane] = field(init=False)
    _partitions: dict[TopicPartition, _PartitionState] = field(init=False, default_factory=dict)
    _consumer: AIOKafkaConsumer | None = field(init=False, default=None)
    _offsets: dict[TopicPartition, int] = field(init=False, default_factory=dict)
    """Offsets of applied batches not yet sent to the broker."""
    _committing: asyncio.Task[None] | None = field(init=False, default=None)
    parked: Parked = field(init=False, default_factory=Parked)
    positions: dict[TopicPartition, int] = field(init=False, default_factory=dict)
    """Per partition, the next offset to take: every record before it is applied or parked."""

    def __post_init__(self) -> None:
        self._lanes = [_Lane() for _ in range(self.lanes)]

    async def handle(self, records: Sequence[ConsumerRecord], consumer: AIOKafkaConsumer) -> None:
        if not records:
            return
        self._consumer = consumer
        outcomes = self.codec.decode_batch(records)
        by_lane: dict[int, list[tuple[ConsumerRecord, E | Rejection]]] = {}
        lanes = len(self._lanes)
        for record, outcome in zip(records, outcomes, strict=True):
            by_lane.setdefault(record.partition % lanes, []).append((record, outcome))  # type: ignore[arg-type]
        for index, items in sorted(by_lane.items()):
            lane = self._lanes[index]
            failed = await self._settle(lane)
            if failed:
                fetched = _first_offsets([r for r, _ in items])
                stale = {tp for tp, first in failed.items() if fetched.get(tp, first) != first}
                items = [
                    (r, o) for r, o in items if TopicPartition(r.topic, r.partition) not in stale
                ]
                if not items:
                    continue
            lane_records = [r for r, _ in items]
            decoded = [Decoded(r, o) for r, o in items if not isinstance(o, Rejection)]
            rejected = [(r, o) for r, o in items if isinstance(o, Rejection)]
            lane.records = lane_records
            lane.rewound = {}
            lane.inflight = asyncio.create_task(
                self._complete(lane, lane_records, decoded, rejected, consumer),  # type: ignore[arg-type]
                name=f"{self.name}-lane-{index}",
            )

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait for the batches in flight to be applied, parked and committed. After `timeout`
        seconds, cancel those still running (their transactions roll back; offsets on their way
        to the broker keep going) and return False."""
        deadline = None if timeout is None else time.monotonic() + timeout
        tasks = [lane.inflight for lane in self._lanes if lane.inflight is not None]
        if not tasks:
            return await self._commits_sent(deadline)
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in done:  # a failure is handled by the next `handle`; mark it seen here
            if not task.cancelled():
                task.exception()
        if not pending:
            return await self._commits_sent(deadline)
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=5)
        log.warning(
            "batches in flight abandoned", consumer=self.name, batches=len(pending), after=timeout
        )
        await self._commits_sent(deadline)
        return False

    async def _commits_sent(self, deadline: float | None) -> bool:
        """Wait until the offsets of every applied batch are sent (or refused after a
        rebalance); a commit that fails is tried twice more."""
        for _ in range(3):
            if self._committing is None:
                if not self._offsets:
                    return True
                self._start_committing()
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait([self._committing], timeout=left)  # type: ignore[list-item]
            if not done:
                return False
        return not self._offsets

    def rebalance_listener(self) -> ConsumerRebalanceListener:
        consumer = self

        class _Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
                await consumer.flush(consumer.rebalance_flush_seconds)
                for tp in revoked:
                    consumer._partitions.pop(tp, None)
                    consumer._offsets.pop(tp, None)  # not sent in time: the next owner replays

            async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
                return None

        return _Listener()

    async def caught_up(self) -> bool:
        """No batch in flight or stalled, no offset waiting to be committed, and every assigned
        partition fetched up to its end (as far as the broker's last answer says)."""
        if any(lane.inflight is not None and not lane.inflight.done() for lane in self._lanes):
            return False
        if self._offsets or any(s.stalled_since is not None for s in self._partitions.values()):
            return False
        consumer = self._consumer
        if consumer is None:
            return True
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is not None and highwater > await consumer.position(tp):
                return False
        return True

    def stalled(self) -> list[Stalled]:
        """Partitions that cannot advance: their last batch failed, not as poison."""
        found = []
        for tp, state in self._partitions.items():
            if state.stalled_since is None:
                continue
            found.append(
                Stalled(
                    tp.topic,
                    tp.partition,
                    state.offset,
                    self._lag(tp, state.offset),
                    state.failures,
                    state.stalled_since,
                    state.error,
                )
            )
        return sorted(found, key=lambda s: (s.topic, s.partition))

    def _measure(
        self, records: Sequence[ConsumerRecord], parked: list[tuple[Any, Rejection]], took: float
    ) -> None:
        metrics.BATCH_SECONDS.labels(self.name).observe(took)
        topic = records[0].topic if records else ""
        for record, rejection in parked:
            metrics.PARKED.labels(self.name, record.topic, rejection.reason).inc()
        metrics.RECORDS.labels(self.name, topic, "parked").inc(len(parked))
        metrics.RECORDS.labels(self.name, topic, "applied").inc(len(records) - len(parked))
        ends: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            ends[tp] = max(ends.get(tp, 0), record.offset + 1)
        for tp, offset in ends.items():
            lag = self._lag(tp, offset)
            if lag is not None:
                metrics.LAG.labels(self.name, tp.topic, str(tp.partition)).set(lag)

    def _lag(self, tp: TopicPartition, offset: int) -> int | None:
        consumer = self._consumer
        if consumer is None or tp not in consumer.assignment():
            return None
        highwater = consumer.highwater(tp)
        return None if highwater is None else max(0, highwater - offset)

    async def _settle(self, lane: _Lane) -> dict[TopicPartition, int]:
        """Wait for the lane's previous batch. Return the partitions it rewound (on failure),
        with the offset rewound to: records of those partitions fetched before the rewind start
        later, and are dropped; they will be fetched again, in order."""
        task, lane.inflight = lane.inflight, None
        if task is None:
            return {}
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
        except Exception:
            pass
        if task.cancelled():  # abandoned at a rebalance: fetch it again if still ours
            lane.rewound = _rewind(self._consumer, lane.records)  # type: ignore[arg-type]
        return lane.rewound

    async def _complete(
        self,
        lane: _Lane,
        records: Sequence[ConsumerRecord],
        decoded: list[Decoded[E]],
        rejected: list[tuple[Any, Rejection]],
        consumer: AIOKafkaConsumer,
    ) -> None:
        try:
            await self._apply_and_park(records, decoded, rejected)
        except Exception as exc:
            partitions = sorted(_first_offsets(records))
            if classify(exc) is not Failure.SYSTEMIC or len(partitions) == 1:
                lane.rewound = self._stall(consumer, records, exc)
                raise
            failure = exc
        else:
            self._advance(consumer, records)
            return
        # A systemic failure may belong to one partition's records (one organisation's):
        # try each partition alone, so that only those that fail stall.
        failed: list[ConsumerRecord] = []
        for tp in partitions:
            mine = [r for r in records if (r.topic, r.partition) == tp]
            try:
                await self._apply_and_park(
                    mine,
                    [d for d in decoded if (d.record.topic, d.record.partition) == tp],
                    [(r, j) for r, j in rejected if (r.topic, r.partition) == tp],
                )
            except Exception as exc:
                failed += mine
                failure = exc
                continue
            self._advance(consumer, mine)
        if failed:
            lane.rewound = self._stall(consumer, failed, failure)
            raise failure

    async def _apply_and_park(
        self,
        records: Sequence[ConsumerRecord],
        decoded: list[Decoded[E]],
        rejected: list[tuple[Any, Rejection]],
    ) -> None:
        started = time.perf_counter()
        refused = await self._apply_isolating(decoded)
        parked = [*rejected, *((d.record, r) for d, r in refused)]
        await self._with_retries(
            "park", lambda: self.dead_letters.park(self.dead_letter_topic, parked)
        )
        if parked:
            self.parked.count += len(parked)
            self.parked.last_reason = parked[-1][1].reason
            self.parked.last_at = time.time()
        self._measure(records, parked, time.perf_counter() - started)
        log.debug(
            "batch applied",
            consumer=self.name,
            records=len(records),
            applied=len(decoded) - len(refused),
            parked=len(parked),
        )

    async def _apply_isolating(self, items: list[Decoded[E]]) -> list[tuple[Decoded[E], Rejection]]:
        if not items:
            return []
        try:
            return list(await self._with_retries("apply", lambda: self.apply(items)))
        except Exception as exc:
            if classify(exc) is not Failure.POISON:
                raise
            if len(items) == 1:
                return [(items[0], Rejection("processing_failed", repr(exc)[:500]))]
            middle = len(items) // 2
            refused = await self._apply_isolating(items[:middle])
            return refused + await self._apply_isolating(items[middle:])

    async def _with_retries(self, step: str, action: Callable[[], Awaitable[Any]]) -> Any:
        attempt = 0
        while True:
            try:
                return await action()
            except Exception as exc:
                attempt += 1
                if (
                    classify(exc) is not Failure.TRANSIENT
                    or attempt >= self.retry.transient_attempts
                ):
                    raise
                delay = self.retry.delay(attempt)
                log.warning(
                    "transient failure; retrying",
                    consumer=self.name,
                    step=step,
                    attempt=attempt,
                    retry_in=delay,
                    error=repr(exc),
                )
                await asyncio.sleep(delay)

    def _stall(
        self, consumer: AIOKafkaConsumer, records: Sequence[ConsumerRecord], exc: BaseException
    ) -> dict[TopicPartition, int]:
        """Rewind the batch, pause its partitions and resume them after a growing delay.
        Returns the partitions rewound, with their offsets."""
        rewound = _rewind(consumer, records)
        now = time.monotonic()
        for tp in rewound:
            metrics.FAILED_BATCHES.labels(self.name, tp.topic).inc()
        for tp, offset in rewound.items():
            state = self._partitions.setdefault(tp, _PartitionState())
            state.failures += 1
            state.stalled_since = state.stalled_since or now
            state.offset = offset
            state.error = repr(exc)[:500]
            delay = self.retry.delay(state.failures)
            log.error(
                "partition stalled; batch rewound",
                consumer=self.name,
                topic=tp.topic,
                partition=tp.partition,
                offset=offset,
                lag=self._lag(tp, offset),
                failures=state.failures,
                stalled_for=round(now - state.stalled_since, 1),
                failure=classify(exc).value,
                error=state.error,
                retry_in=delay,
            )
            consumer.pause(tp)
            asyncio.get_running_loop().call_later(delay, _resume, consumer, tp)
        return rewound

    def _advance(self, consumer: AIOKafkaConsumer, records: Sequence[ConsumerRecord]) -> None:
        """`records` are applied: their partitions advance, and their offsets join those to
        send to the broker (in the background; see the module)."""
        offsets = self._offsets
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
            self.positions[tp] = max(self.positions.get(tp, 0), record.offset + 1)
            state = self._partitions.pop(tp, None)
            if state is not None and state.stalled_since is not None:
                log.info(
                    "partition advancing again",
                    consumer=self.name,
                    topic=tp.topic,
                    partition=tp.partition,
                    after_failures=state.failures,
                )
        self._consumer = consumer
        if self._committing is None:
            self._start_committing()

    def _start_committing(self) -> None:
        self._committing = asyncio.create_task(self._send_offsets(), name=f"{self.name}-commit")

    async def _send_offsets(self) -> None:
        """Send the pending offsets, merged, one commit at a time, until none are left. A
        commit that fails for another reason than a rebalance leaves its offsets pending for
        the next one (meanwhile a restart would only replay applied batches)."""
        consumer = self._consumer
        assert consumer is not None
        try:
            while self._offsets:
                offsets, self._offsets = self._offsets, {}
                assigned = consumer.assignment()  # never for a partition no longer ours
                offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
                if not offsets:
                    continue
                try:
                    await consumer.commit(offsets)
                except (CommitFailedError, IllegalStateError) as exc:
                    # The partitions moved to another member during a rebalance. The batches
                    # are applied; the new owner replays them from the last commit, as no-ops.
                    log.warning(
                        "offset commit refused after rebalance",
                        consumer=self.name,
                        error=repr(exc),
                    )
                except Exception as exc:
                    for tp, offset in offsets.items():
                        self._offsets[tp] = max(self._offsets.get(tp, 0), offset)
                    log.warning("offset commit failed", consumer=self.name, error=repr(exc))
                    return
        finally:
            if self._committing is asyncio.current_task():
                self._committing = None


def _resume(consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
    if tp in consumer.assignment() and tp in consumer.paused():
        consumer.resume(tp)


def _first_offsets(records: Sequence[ConsumerRecord]) -> dict[TopicPartition, int]:
    first: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        first[tp] = min(first.get(tp, record.offset), record.offset)
    return first


def _rewind(
    consumer: AIOKafkaConsumer, records: Sequence[ConsumerRecord]
) -> dict[TopicPartition, int]:
    """Seek each partition of `records` that is still assigned back to its first record."""
    assigned = consumer.assignment()
    rewound = {tp: o for tp, o in _first_offsets(records).items() if tp in assigned}
    for tp, offset in rewound.items():
        consumer.seek(tp, offset)
    return rewound
