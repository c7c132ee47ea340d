"""Seats: membership events projected by the seat service in its own process, from the first
publish until every member is counted, beside the same rows inserted straight into the same
table in batches of the same size; and the seat check through the HTTP API at a steady rate
over many organisations, beside PostgreSQL alone answering the same query at the same rate."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from services.seats.app import SERVICE
from shared.db import apply_migrations
from shared.kafka import KeyPlacement
from shared.settings import DEV_API_TOKEN
from shared.topics import WORKSPACE_MEMBERS, ensure_topics

from .httpload import latencies, open_loop, paced
from .metering import publish
from .process import ServiceProcess

BATCH = 5000
"""The seat service's `max_records` for the directory."""


def make_members(events: int, organisations: int) -> tuple[list[tuple[bytes, bytes]], list[tuple]]:
    """Joins spread over `organisations`, one per member; every tenth member later deactivated
    (a second event with a higher sequence). Returns the records and the stored rows."""
    now = datetime.now(UTC)
    stamp = now.isoformat()
    records: list[tuple[bytes, bytes]] = []
    rows: list[tuple] = []
    joins = events * 10 // 11
    for n in range(events):
        member = n if n < joins else (n - joins) * 10
        organisation = f"org_seats{member % organisations}"
        deactivated = n >= joins
        body = {
            "event_id": str(uuid.uuid4()),
            "type": "workspace_member.deactivated.v1"
            if deactivated
            else "workspace_member.joined.v1",
            "organisation_id": organisation,
            "occurred_at": stamp,
            "producer": "bench",
            "data": {
                "member_id": f"member_{member}",
                "role": "owner" if member < organisations else "member",
                "status": "deactivated" if deactivated else "active",
                "sequence": 2 if deactivated else 1,
            },
        }
        records.append((organisation.encode(), orjson.dumps(body)))
        rows.append(
            (
                organisation,
                f"member_{member}",
                body["data"]["role"],
                body["data"]["status"],
                body["data"]["sequence"],
            )
        )
    return records, rows


def _expected_seats(rows: list[tuple]) -> int:
    final: dict[tuple[str, str], str] = {}
    for organisation, member, _, status, _ in rows:
        final[(organisation, member)] = status
    return sum(status == "active" for status in final.values())


async def _projected(conn: asyncpg.Connection, seats: int, sequences: int) -> None:
    """Until every member's newest state is stored and counted."""
    while True:
        found = await conn.fetchrow(
            """SELECT (SELECT coalesce(sum(seats), 0) FROM organisations) AS seats,
                      (SELECT coalesce(sum(sequence), 0) FROM directory_members) AS sequences"""
        )
        if (found["seats"], found["sequences"]) == (seats, sequences):
            return
        await asyncio.sleep(0.05)


async def projection(kafka: str, database: str, events: int, organisations: int) -> dict[str, Any]:
    schema, prefix = f"bench_{uuid.uuid4().hex[:8]}", f"bench{uuid.uuid4().hex[:8]}."
    topic = WORKSPACE_MEMBERS.topic(prefix)
    await ensure_topics(kafka, prefix)
    records, rows = make_members(events, organisations)
    placement, every = KeyPlacement(), list(range(WORKSPACE_MEMBERS.partitions))
    placed = [(placement.partition("", key, every), key, value) for key, value in records]
    expected = _expected_seats(rows)
    async with ServiceProcess(
        "services.seats", SERVICE.env_prefix, kafka, database, schema, prefix
    ):
        conn = await asyncpg.connect(database, server_settings={"search_path": schema})
        try:
            started = await publish(kafka, topic, placed)
            published = time.perf_counter()
            wanted = sum(r[4] for r in {(r[0], r[1]): r for r in rows}.values())
            await _projected(conn, expected, wanted)
            finished = time.perf_counter()
            announced = await conn.fetchval("SELECT count(*) FROM outbox")
        finally:
            await conn.close()
    return {
        "events": events,
        "organisations": organisations,
        "seats_counted": expected,
        "seconds": round(finished - started, 3),
        "per_second": round(events / (finished - started)),
        "publish_per_second": round(events / (published - started)),
        "announcements_waiting": announced,
        "schema": schema,
    }


async def insert_ceiling(database: str, events: int, organisations: int) -> dict[str, Any]:
    """The joins' rows inserted straight into the members table, `BATCH` per transaction."""
    _, rows = make_members(events, organisations)
    schema = f"ceiling_{uuid.uuid4().hex[:8]}"
    await apply_migrations(database, schema, SERVICE.all_migrations)
    conn = await asyncpg.connect(database, server_settings={"search_path": schema})
    try:
        now = datetime.now(UTC)
        started = time.perf_counter()
        for start in range(0, len(rows), BATCH):
            # A member's newest row of the batch, as the service writes (one upsert may not
            # touch a row twice); only small workloads put a join and its deactivation in one.
            newest = {(r[0], r[1]): r for r in rows[start : start + BATCH]}
            columns = list(zip(*newest.values(), strict=True))
            async with conn.transaction():
                await conn.execute(
                    """INSERT INTO directory_members
                           (organisation_id, member_id, role, status, sequence, updated_at)
                       SELECT o, m, r, s, q, $6
                       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
                           AS n(o, m, r, s, q)
                       ON CONFLICT (organisation_id, member_id) DO UPDATE
                           SET status = excluded.status, sequence = excluded.sequence""",
                    *columns,
                    now,
                )
        seconds = time.perf_counter() - started
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
    return {
        "rows": len(rows),
        "seconds": round(seconds, 3),
        "per_second": round(len(rows) / seconds),
    }


def _check_request(organisation: str) -> bytes:
    return (
        f"GET /v1/organisations/{organisation}/seat-check HTTP/1.1\r\nHost: bench\r\n"
        f"Authorization: Bearer {DEV_API_TOKEN}\r\n\r\n"
    ).encode()


async def seat_checks(
    kafka: str, database: str, schema: str, organisations: int, *, rate: int, seconds: float
) -> dict[str, Any]:
    """The seat check through the API of a seat process on the projected schema."""
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    await ensure_topics(kafka, prefix)
    rng = random.Random(7)
    requests = [
        _check_request(f"org_seats{rng.randrange(organisations)}")
        for _ in range(int(rate * seconds))
    ]
    async with ServiceProcess(
        "services.seats", SERVICE.env_prefix, kafka, database, schema, prefix
    ) as seats:
        await open_loop(
            "127.0.0.1", seats.port, lambda n: requests[n % len(requests)], rate=rate, seconds=1
        )
        outcome = await open_loop(
            "127.0.0.1",
            seats.port,
            lambda n: requests[n],
            rate=rate,
            seconds=seconds,
            connections=32,
        )
    allowed = sum(1 for b in outcome.bodies if b["allowed"])
    return {
        "requests": len(outcome.latencies_ms),
        "errors": outcome.errors,
        "allowed": allowed,
        **latencies(outcome.latencies_ms),
    }


async def postgres_checks(
    database: str, schema: str, organisations: int, *, rate: int, seconds: float
) -> dict[str, Any]:
    """The seat check's query alone, at the same rate, from 32 connections."""
    pool = await asyncpg.create_pool(
        database, min_size=32, max_size=32, server_settings={"search_path": schema}
    )
    rng = random.Random(7)
    query = """SELECT o.seats, o.seat_limit, m.status FROM organisations o
               LEFT JOIN directory_members m
                   ON m.organisation_id = o.organisation_id AND m.member_id = $2
               WHERE o.organisation_id = $1"""
    try:

        async def one(_: int) -> None:
            organisation = f"org_seats{rng.randrange(organisations)}"
            async with pool.acquire() as conn:
                await conn.fetchrow(query, organisation, None)

        waits = await paced(rate, int(rate * seconds), one)
    finally:
        await pool.close()
    return {
        **latencies(waits),
    }
