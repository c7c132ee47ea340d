"""Usage debits, decision cycles, releases and expiry sweeps running at once over the same
wallets never deadlock: they all lock a wallet before its holds, wallets in ascending order.
PostgreSQL's own deadlock counter is the judge."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import timedelta
from uuid import uuid4

import asyncpg
import pytest

from services.metering.authorizer import Ask, Authorization
from services.metering.settings import MeteringSettings
from shared.clock import FrozenClock
from shared.testing import eventually
from tests.metering.conftest import grant_command, running_metering, usage_event

pytestmark = pytest.mark.slow

ORGANISATIONS = [f"org_lock{n}" for n in range(10)]
SECONDS = 8.0


async def deadlocks(db: asyncpg.Connection) -> int:
    await db.execute("SELECT pg_stat_clear_snapshot()")
    return await db.fetchval(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    )


async def test_debits_decisions_releases_and_sweeps_never_deadlock(
    metering_settings: MeteringSettings, clock: FrozenClock, db: asyncpg.Connection
) -> None:
    settings = metering_settings.model_copy(
        update={"authorization_lanes": 1, "write_lanes": 2, "batch_max_records": 50}
    )
    before = await deadlocks(db)
    rng = random.Random(20261128)
    published: list = []
    async with running_metering(settings, clock) as metering:
        await metering.publish_grants(*(grant_command(o, 10_000_000) for o in ORGANISATIONS))
        for organisation in ORGANISATIONS:
            await metering.wait_for(organisation, balance=10_000_000)
        authorizer = metering.authorizer
        holds: list[Authorization] = []
        deadline = time.monotonic() + SECONDS

        async def decide() -> None:
            while time.monotonic() < deadline:
                asks = [
                    Ask(rng.choice(ORGANISATIONS), "m", f"msg_{uuid4().hex[:16]}", None, 5)
                    for k in range(rng.randint(1, 30))
                ]
                decided = await asyncio.gather(*(authorizer.authorize(a) for a in asks))
                holds.extend(d for d in decided if d.decision == "allowed")

        async def debit() -> None:
            while time.monotonic() < deadline:
                batch = []
                for _ in range(rng.randint(1, 80)):
                    if holds and rng.random() < 0.6:
                        hold = holds[rng.randrange(len(holds))]
                        event = usage_event(hold.organisation_id, 3, message_id=hold.message_id)
                    else:
                        event = usage_event(rng.choice(ORGANISATIONS), 2)
                    batch.append(event)
                published.extend(batch)
                await metering.publish_usage(*batch)
                await asyncio.sleep(0.02)

        async def release() -> None:
            while time.monotonic() < deadline:
                if holds:
                    hold = holds[rng.randrange(len(holds))]
                    try:
                        await authorizer.release(hold.authorization_id)
                    except Exception as exc:  # settled or expired meanwhile: 409 in the API
                        assert type(exc).__name__ == "HoldClosed", exc
                await asyncio.sleep(0.001)

        async def sweep() -> None:
            while time.monotonic() < deadline:
                clock.advance(timedelta(seconds=60))  # holds lapse after five of these
                await authorizer.sweep(limit=3)
                await asyncio.sleep(0.01)

        await asyncio.gather(decide(), decide(), debit(), release(), release(), sweep(), sweep())

        distinct = {(e.organisation_id, e.data.message_id) for e in published}

        async def all_debited() -> bool:
            count = await db.fetchval("SELECT count(*) FROM ledger WHERE kind = 'debit'")
            return count == len(distinct)

        await eventually(all_debited, timeout=60, what="every usage event applied")
        inconsistent = await db.fetch(
            """SELECT w.organisation_id FROM wallets w
               WHERE w.held <> (SELECT coalesce(sum(estimate), 0) FROM authorizations a
                                WHERE a.organisation_id = w.organisation_id AND a.status = 'held')
                  OR w.balance <> (SELECT sum(amount) FROM ledger l
                                   WHERE l.organisation_id = w.organisation_id)"""
        )
        assert inconsistent == []
        assert len(holds) > 100
    # The service's connections are closed now, so their statistics have been reported.
    await asyncio.sleep(0.5)
    assert await deadlocks(db) - before == 0
