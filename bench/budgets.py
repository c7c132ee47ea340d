"""Authorization with budgets beside authorization without, in the same metering process and
run, phases alternated (each round in the other order, so that neither side always meets the
larger tables):

- spread: 1,000 organisations at a steady rate (open loop), each request from one of 20
  members to one of 5 agents. The budgeted organisations have a default per member, caps of
  their own for 5 members and caps on 3 agents (high enough that everything is allowed, so both
  sides decide and hold the same messages).
- hot: one organisation, many concurrent callers (closed loop), with budgets and without.

Before measuring, both sides are warmed up (2 s each) and the schema analyzed, as autovacuum
does in a running system: metering plans its statements once per connection (generic plans),
so statistics from a fresh, empty table would make both sides scan tables they look up by key.

Reported: p50 and p99 of each side, and the ratio of the p50s (with / without)."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import asyncpg

from services.metering.settings import DEV_API_TOKEN
from shared.testing import produce
from shared.topics import CREDIT_GRANT_REQUESTS, ensure_topics

from .authorization import PATH, _grant, _quiet
from .httpload import closed_loop, latencies, open_loop, request_bytes
from .metering import MeteringProcess

PLAIN = [f"org_plain{i}" for i in range(1_000)]
BUDGETED = [f"org_budgeted{i}" for i in range(1_000)]
HOT_PLAIN, HOT_BUDGETED = "org_hot_plain", "org_hot_budgeted"
MEMBERS = [f"member_{i}" for i in range(20)]
AGENTS = [f"agent_{i}" for i in range(5)]


def _ask(organisation: str, rng: random.Random) -> bytes:
    return request_bytes(
        PATH,
        DEV_API_TOKEN,
        {
            "organisation_id": organisation,
            "member_id": rng.choice(MEMBERS),
            "message_id": f"msg_{uuid.uuid4().hex}",
            "agent_id": rng.choice(AGENTS),
            "estimate": 1,
        },
    )


async def _set_budgets(conn: asyncpg.Connection, organisations: list[str]) -> None:
    rows = []
    for o in organisations:
        rows.append((o, "member_default", "", 10**9))
        rows += [(o, "member", m, 10**9) for m in MEMBERS[:5]]
        rows += [(o, "agent", a, 10**9) for a in AGENTS[:3]]
    await conn.executemany(
        """INSERT INTO budgets (organisation_id, scope, subject_id, monthly_cap, set_by, set_at)
           VALUES ($1, $2, $3, $4, 'bench', now())""",
        rows,
    )


async def compare(
    kafka: str,
    database: str,
    *,
    rate: int,
    seconds: float,
    hot_requests: int,
    connections: int,
    rounds: int = 3,
) -> dict[str, Any]:
    schema, prefix = f"bench_{uuid.uuid4().hex[:8]}", f"bench{uuid.uuid4().hex[:8]}."
    await ensure_topics(kafka, prefix)
    rng = random.Random(11)
    spread: dict[str, list[float]] = {"without": [], "with": []}
    hot: dict[str, list[float]] = {"without": [], "with": []}
    errors = 0
    async with MeteringProcess(kafka, database, schema, prefix) as metering:
        conn = await asyncpg.connect(database, server_settings={"search_path": schema})
        try:
            everyone = [*PLAIN, *BUDGETED, HOT_PLAIN, HOT_BUDGETED]
            await produce(
                kafka,
                CREDIT_GRANT_REQUESTS.topic(prefix),
                [_grant(o, 10**9) for o in everyone],
            )
            while await conn.fetchval("SELECT count(*) FROM grants") < len(everyone):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            await _set_budgets(conn, [*BUDGETED, HOT_BUDGETED])
            # Warm up both sides, then statistics as autovacuum keeps them in a running system.
            for organisations in (PLAIN, BUDGETED):
                await open_loop(
                    "127.0.0.1",
                    metering.port,
                    lambda _, chosen=organisations: _ask(rng.choice(chosen), rng),
                    rate=rate,
                    seconds=2,
                )
            await _quiet(conn)
            await conn.execute("ANALYZE")
            for n in range(rounds):
                spread_sides = [("without", PLAIN), ("with", BUDGETED)][:: 1 if n % 2 else -1]
                hot_sides = [("without", HOT_PLAIN), ("with", HOT_BUDGETED)][:: 1 if n % 2 else -1]
                for side, organisations in spread_sides:
                    await _quiet(conn)
                    found = await open_loop(
                        "127.0.0.1",
                        metering.port,
                        lambda _, chosen=organisations: _ask(rng.choice(chosen), rng),
                        rate=rate,
                        seconds=seconds,
                    )
                    spread[side] += found.latencies_ms
                    errors += found.errors
                for side, organisation in hot_sides:
                    await _quiet(conn)
                    asks = iter([_ask(organisation, rng) for _ in range(hot_requests)])
                    found = await closed_loop(
                        "127.0.0.1", metering.port, asks, connections=connections
                    )
                    hot[side] += found.latencies_ms
                    errors += found.errors
            denied = await conn.fetchval(
                "SELECT count(*) FROM authorizations WHERE decision = 'denied'"
            )
        finally:
            await conn.close()
    figures: dict[str, Any] = {"errors": errors, "denied": denied}
    for name, sides in (("spread", spread), ("hot", hot)):
        figures[name] = {
            side: latencies(values) | {"requests": len(values)} for side, values in sides.items()
        }
        figures[name]["p50_with_vs_without"] = round(
            figures[name]["with"]["p50_ms"] / figures[name]["without"]["p50_ms"], 3
        )
    return figures
