"""Scaling out metering: the same usage workload drained by one metering process, then by two
sharing its consumer group (each owning part of the topic's partitions), on the same broker
and database, runs alternated. Reported as the ratio of the two throughputs.

Both instances run on the same two-core machine as the broker, the database and the load
generator: the ratio says what a second instance adds while PostgreSQL (one primary) is shared,
not what two machines would give.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import httpx

from shared.topics import AGENT_USAGE, ensure_topics

from .metering import MeteringProcess, Workload, make_workload, publish

_APPLIED = re.compile(r'^billing_records_total\{[^}]*consumer="usage"[^}]*\} (\S+)$', re.M)


async def _applied(client: httpx.AsyncClient, port: int) -> float:
    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return sum(float(v) for v in _APPLIED.findall(text))


def _apart(workload: Workload) -> Workload:
    """The same events for other organisations and messages (the warm-up's own)."""
    events = [
        (key.replace(b"org_bench", b"org_warm"), value.replace(b"org_bench", b"org_warm"))
        for key, value in workload.events
    ]
    events = [(k, v.replace(b'"msg_', b'"warm_')) for k, v in events]
    return Workload(events, workload.rows, workload.credits)


async def drain(
    bootstrap: str, database_url: str, workload: Workload, *, instances: int
) -> dict[str, Any]:
    """`instances` metering processes in one consumer group; a warm-up until every instance
    has applied usage (each owns partitions: the group has settled), then the workload, timed
    from the first publish to the last debit committed."""
    schema, prefix = f"scale_{uuid.uuid4().hex[:8]}", f"scale{uuid.uuid4().hex[:8]}."
    topic = AGENT_USAGE.topic(prefix)
    await ensure_topics(bootstrap, prefix)
    async with AsyncExitStack() as stack:
        processes = [
            await stack.enter_async_context(
                MeteringProcess(bootstrap, database_url, schema, prefix)
            )
            for _ in range(instances)
        ]
        conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
        stack.push_async_callback(conn.close)
        warm = _apart(make_workload(2_000, 600, seed=instances * 101 + 7))
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        await publish(bootstrap, topic, warm.partitioned(AGENT_USAGE.partitions))
        used = "SELECT coalesce(sum(used), 0)::bigint FROM wallets"
        deadline = time.monotonic() + 120
        while (
            await conn.fetchval(used) < warm.credits
            or min([await _applied(client, p.port) for p in processes]) == 0
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the consumer group did not settle with every instance")
            await asyncio.sleep(0.1)
        before = await conn.fetchval(used)
        started = await publish(bootstrap, topic, workload.partitioned(AGENT_USAGE.partitions))
        while await conn.fetchval(used) < before + workload.credits:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        finished = time.perf_counter()
        shares = [await _applied(client, p.port) for p in processes]
        counted = await conn.fetchval("SELECT count(*) FROM ledger WHERE kind = 'debit'")
    assert counted == len(workload.events) + len(warm.events), counted
    return {
        "instances": instances,
        "events": len(workload.events),
        "seconds": round(finished - started, 3),
        "per_second": round(len(workload.events) / (finished - started)),
        "records_applied_per_instance": [int(s) for s in shares],
    }


async def compare(bootstrap: str, database_url: str, events: int, organisations: int) -> dict:
    workload = make_workload(events, organisations, seed=11)
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for instances in (1, 2, 1, 2, 1, 2):
        found = await drain(bootstrap, database_url, workload, instances=instances)
        runs[instances].append(found)
        print(
            f"  {instances} metering instance(s): {found['per_second']:>9,} events/s "
            f"(records applied per instance: {found['records_applied_per_instance']})"
        )
    median = {n: sorted(r["per_second"] for r in found)[1] for n, found in runs.items()}
    return {
        "runs": {str(n): found for n, found in runs.items()},
        "median_per_second": {str(n): v for n, v in median.items()},
        "two_vs_one": round(median[2] / median[1], 3),
    }
