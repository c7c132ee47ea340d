"""The transactional outbox.

`enqueue` writes events in the caller's transaction, next to the state change they announce;
they exist if and only if that change committed. The `OutboxRelay` publishes them in id order
and deletes them once the broker has acknowledged them: delivery is at-least-once (a crash
between publish and delete publishes again), and consumers dedupe by event id.

One relay per schema is active at a time (a PostgreSQL advisory lock held on a dedicated
connection), so events leave in the order they were written. A NOTIFY at commit wakes it at
once; otherwise it polls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path

import asyncpg
from faststream.kafka import KafkaBroker

from shared.clock import Clock
from shared.db import Migrations
from shared.events import Event
from shared.logging import get_logger
from shared.topics import spec_for

log = get_logger("shared.outbox")

MIGRATIONS = Migrations("outbox", Path(__file__).parent / "migrations" / "outbox")


def channel(schema: str) -> str:
    return f"outbox_{schema}"


async def enqueue(
    conn: asyncpg.Connection, events: Sequence[Event], *, prefix: str, schema: str, clock: Clock
) -> None:
    """Write `events` to the outbox in the current transaction."""
    if not events:
        return
    await conn.execute(
        """INSERT INTO outbox (topic, key, event_type, payload, created_at)
           SELECT t, k, e, p, $5 FROM unnest($1::text[], $2::bytea[], $3::text[], $4::bytea[])
                AS o(t, k, e, p)""",
        [spec_for(type(event)).topic(prefix) for event in events],
        [event.key for event in events],
        [event.type for event in events],
        [event.to_bytes() for event in events],
        clock.now(),
    )
    await conn.execute("SELECT pg_notify($1, '')", channel(schema))


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        broker: KafkaBroker,
        *,
        dsn: str,
        schema: str,
        batch_size: int = 1000,
        idle_poll_seconds: float = 1.0,
    ) -> None:
        self._pool = pool
        self._broker = broker
        self._dsn = dsn
        self._schema = schema
        self._batch_size = batch_size
        self._idle_poll = idle_poll_seconds
        self._wake = asyncio.Event()
        self.is_leader = False

    async def run(self) -> None:
        """Publish forever. Cancel to stop."""
        failures = 0
        while True:
            try:
                await self._lead()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = min(5.0, 0.2 * 2**failures)
                log.error("outbox relay failed; restarting", error=repr(exc), retry_in=delay)
                await asyncio.sleep(delay)

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
            "SELECT id, topic, key, event_type, payload FROM outbox ORDER BY id LIMIT $1",
            self._batch_size,
        )
        if not rows:
            return 0
        sends = [
            await self._broker.publish(
                row["payload"],
                row["topic"],
                key=row["key"],
                headers={"content-type": "application/json", "event-type": row["event_type"]},
                no_confirm=True,
            )
            for row in rows
        ]
        await asyncio.gather(*sends)
        await self._pool.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
        return len(rows)
