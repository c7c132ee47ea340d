"""The transactional outbox.

`enqueue` writes events in the caller's transaction, next to the state change they announce;
they exist if and only if that change committed. The `OutboxRelay` publishes them in id order
and deletes them once the broker has acknowledged them: delivery is at-least-once (a crash
between publish and delete publishes again), and consumers dedupe by event id.

One relay per schema is active at a time (a PostgreSQL advisory lock held on a dedicated
connection), so events leave in the order they were written. A NOTIFY at commit wakes it at
once (at most every `min_interval_seconds`, so that a burst of commits is published in one
drain); otherwise it polls.

It publishes with its own producer, in record batches per partition (`shared.kafka`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaProducer

from shared import metrics
from shared.clock import Clock
from shared.db import Migrations
from shared.events import Event
from shared.failures import Backoff
from shared.kafka import KeyPlacement, send_batched
from shared.logging import get_logger
from shared.topics import spec_for

log = get_logger("shared.outbox")

MIGRATIONS = Migrations("outbox", Path(__file__).parent / "migrations" / "outbox")


def channel(schema: str) -> str:
    return f"outbox_{schema}"


def columns(
    events: Sequence[Event], *, prefix: str
) -> tuple[list[str], list[bytes], list[str], list[bytes]]:
    """Outbox columns (topic, key, event type, payload) of `events`, for statements that write
    the outbox themselves, next to the change they announce."""
    return (
        [spec_for(type(event)).topic(prefix) for event in events],
        [event.key for event in events],
        [event.type for event in events],
        [event.to_bytes() for event in events],
    )


async def enqueue(
    conn: asyncpg.Connection, events: Sequence[Event], *, prefix: str, clock: Clock
) -> None:
    """Write `events` to the outbox in the current transaction. A trigger wakes the relay at
    commit (migration outbox/002)."""
    if not events:
        return
    await conn.execute(
        """INSERT INTO outbox (topic, key, event_type, payload, created_at)
           SELECT t, k, e, p, $5 FROM unnest($1::text[], $2::bytea[], $3::text[], $4::bytea[])
                AS o(t, k, e, p)""",
        *columns(events, prefix=prefix),
        clock.now(),
    )


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        bootstrap_servers: str,
        dsn: str,
        schema: str,
        batch_size: int = 1000,
        idle_poll_seconds: float = 1.0,
        min_interval_seconds: float = 0.01,
    ) -> None:
        self._pool = pool
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=f"outbox-relay-{schema}",
            acks="all",
            linger_ms=2,
            enable_idempotence=False,
        )
        self._placement = KeyPlacement()
        self._partitions: dict[str, list[int]] = {}
        self._dsn = dsn
        self._schema = schema
        self._batch_size = batch_size
        self._idle_poll = idle_poll_seconds
        self._min_interval = min_interval_seconds
        self._wake = asyncio.Event()
        self._sleep = asyncio.sleep
        self.backoff = Backoff(first=0.2, cap=5.0)
        self.is_leader = False

    async def run(self) -> None:
        """Publish forever; after a failure, start again after a delay that grows with each
        failure in a row and resets once a drain succeeds. Cancel to stop."""
        started = False
        try:
            while True:
                try:
                    if not started:
                        await self._producer.start()
                        started = True
                    await self._lead()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    delay = self.backoff.next_delay()
                    log.error("outbox relay failed; restarting", error=repr(exc), retry_in=delay)
                    self._partitions.clear()
                    self._placement.forget()
                    await self._sleep(delay)
        finally:
            if started:
                await asyncio.shield(self._producer.stop())

    async def _lead(self) -> None:
        conn = await asyncpg.connect(self._dsn, server_settings={"search_path": self._schema})
        try:
            while not await conn.fetchval(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", f"outbox:{self._schema}"
            ):
                self.is_leader = False
                await asyncio.sleep(self._idle_poll)
            self.is_leader = True
            await conn.add_listener(channel(self._schema), lambda *_: self._wake.set())
            while True:
                self._wake.clear()
                if await self.drain_once() >= self._batch_size:
                    continue
                # Commits that arrive meanwhile are published together by the next drain,
                # rather than one drain per committed transaction.
                await asyncio.sleep(self._min_interval)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._idle_poll)
                if conn.is_closed():
                    raise ConnectionError("outbox leadership connection lost")
        finally:
            self.is_leader = False
            with contextlib.suppress(Exception):
                await asyncio.shield(conn.close())

    async def drain_once(self) -> int:
        """Publish one batch in id order; delete what the broker acknowledged."""
        rows = await self._pool.fetch(
            """SELECT id, topic, key, event_type, payload, created_at FROM outbox
               ORDER BY id LIMIT $1""",
            self._batch_size,
        )
        oldest = metrics.OUTBOX_OLDEST_SECONDS.labels(self._schema)
        if not rows:
            oldest.set(0)
            self.backoff.reset()
            return 0
        oldest.set(max(0.0, time.time() - rows[0]["created_at"].timestamp()))
        await send_batched(
            self._producer,
            [
                (
                    row["topic"],
                    await self._partition(row["topic"], row["key"]),
                    row["key"],
                    row["payload"],
                    [
                        ("content-type", b"application/json"),
                        ("event-type", row["event_type"].encode()),
                    ],
                )
                for row in rows
            ],
        )
        await self._pool.execute(
            "DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
        )
        for event_type, count in Counter(r["event_type"] for r in rows).items():
            metrics.OUTBOX_PUBLISHED.labels(self._schema, event_type).inc(count)
        left = 0
        if len(rows) == self._batch_size:
            left = await self._pool.fetchval("SELECT count(*) FROM outbox")
        metrics.OUTBOX_BACKLOG.labels(self._schema).set(left)
        self.backoff.reset()
        return len(rows)

    async def _partition(self, topic: str, key: bytes) -> int:
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = self._partitions[topic] = sorted(
                await self._producer.partitions_for(topic)
            )
        return self._placement.partition(topic, key, partitions)
