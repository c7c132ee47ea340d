"""Credits as buckets against the real database and broker: the spending order in SQL against
the reference model, expiry on the clock, packs surviving a renewal, rollover, clawback, debt,
and a storm of authorizations and usage across a bucket's expiry."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from uuid import UUID, uuid4

import asyncpg
import orjson
import pytest
import pytest_asyncio

from services.metering.store.grants import buckets_of
from shared.clock import FrozenClock
from shared.consumer import Decoded
from shared.events import CreditGrantRequestedV2, CreditGrantV2, GrantReasonV2
from shared.testing import eventually, produce, read_topic
from shared.testing.plugin import Infrastructure, Isolation
from shared.topics import CREDIT_BALANCE, CREDIT_GRANT_REQUESTS
from tests.metering.conftest import (
    T0,
    MeteringHarness,
    module_metering,
    usage_event,
)
from tests.metering.test_buckets_domain import reference_burn

pytestmark = pytest.mark.asyncio(loop_scope="module")

START = T0 + timedelta(days=3)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)


@pytest.fixture(scope="module")
def clock() -> FrozenClock:
    """One clock for the module; tests move it forward only."""
    return FrozenClock(START)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def metering(
    infrastructure: Infrastructure, module_isolation: Isolation, clock: FrozenClock
) -> AsyncIterator[MeteringHarness]:
    async with module_metering(
        infrastructure, module_isolation, clock, bucket_sweep_seconds=0.2, hold_sweep_seconds=0.2
    ) as harness:
        yield harness


@pytest.fixture(scope="module")
def db(module_db: asyncpg.Connection) -> asyncpg.Connection:
    return module_db


def grant(
    organisation: str,
    reason: GrantReasonV2,
    amount: int,
    key: str | None = None,
    *,
    at: datetime,
    **fields: object,
) -> CreditGrantRequestedV2:
    return CreditGrantRequestedV2.new(
        organisation_id=organisation,
        producer="subscriptions",
        occurred_at=at,
        data=CreditGrantV2(
            period_key=key or f"{reason.value}:{uuid4().hex[:10]}",
            amount=amount,
            reason=reason,
            **fields,
        ),
    )


def period(organisation: str, amount: int, start: datetime, **fields: object):
    return grant(
        organisation,
        GrantReasonV2.RENEWAL_RESET,
        amount,
        f"period:{start.isoformat()}",
        at=start,
        period_start=start,
        period_end=start + timedelta(days=30),
        **fields,
    )


async def publish(metering: MeteringHarness, *commands: CreditGrantRequestedV2) -> None:
    await produce(
        metering.bootstrap,
        metering.topic(CREDIT_GRANT_REQUESTS),
        [(c.key, c.to_bytes()) for c in commands],
    )


async def buckets(db: asyncpg.Connection, organisation: str) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT grant_key, source, remaining FROM buckets WHERE organisation_id = $1",
        organisation,
    )
    return {f"{r['source']}:{r['grant_key']}": r["remaining"] for r in rows}


async def check_ledger(metering: MeteringHarness, organisation: str) -> None:
    answer = await metering.http.post("/v1/ledger-checks", json={"organisation_id": organisation})
    assert answer.json() == {"wallets": 1, "mismatches": []}


async def test_sql_burns_buckets_down_as_the_reference_model(
    metering: MeteringHarness, db: asyncpg.Connection, clock: FrozenClock
) -> None:
    """Random buckets and batches of debits, seeded: every debit's share of every bucket, as
    written by the one SQL statement of a usage batch, is what the reference model takes."""
    seed = int(os.environ.get("BUCKETS_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    service = metering.parts.metering
    for case in range(40):
        organisation = f"org_ref{case}"
        now = clock.now()
        commands = [
            grant(
                organisation,
                rng.choice([GrantReasonV2.PACK_PURCHASE, GrantReasonV2.PROMOTION]),
                rng.randint(1, 60),
                at=now,
                expires_at=rng.choice([None, now + rng.randint(1, 4) * HOUR]),
                priority=rng.choice([None, rng.randint(0, 3)]),
            )
            for _ in range(rng.randint(0, 5))
        ]
        if rng.random() < 0.5:
            commands.append(period(organisation, rng.randint(0, 80), now - HOUR))
        assert await service.grant(commands) == []
        stored = (await buckets_of(db, [organisation])).get(organisation, [])
        debits = [usage_event(organisation, rng.randint(1, 40)) for _ in range(rng.randint(1, 8))]
        assert await service.record_usage([Decoded(None, e) for e in debits]) == []  # type: ignore[arg-type]

        expected = []
        left = list(stored)
        for event in debits:
            taken, _ = reference_burn(left, event.data.credits, now)
            expected += [(event.event_id, b, c) for b, c in taken.items()]
            left = [replace(b, remaining=b.remaining - taken.get(b.bucket_id, 0)) for b in left]
        written = await db.fetch(
            """SELECT entry_id, bucket_id, -amount AS credits FROM ledger_buckets
               WHERE entry_id = ANY($1::uuid[])""",
            [e.event_id for e in debits],
        )
        assert sorted((r[0], r[1], r[2]) for r in written) == sorted(expected), (
            f"BUCKETS_SEED={seed} case {case}"
        )
        await check_ledger(metering, organisation)


async def test_a_bucket_expires_on_the_clock_and_the_change_is_announced(
    metering: MeteringHarness, db: asyncpg.Connection, clock: FrozenClock
) -> None:
    now = clock.now()
    await publish(
        metering,
        grant("org_exp", GrantReasonV2.PROMOTION, 100, "promo", at=now, expires_at=now + HOUR),
        grant("org_exp", GrantReasonV2.PACK_PURCHASE, 50, "pack", at=now),
    )
    await metering.wait_for("org_exp", balance=150)
    await metering.publish_usage(usage_event("org_exp", 30))
    credits = await metering.wait_for("org_exp", balance=120)
    assert [(b["source"], b["remaining"]) for b in credits["buckets"]] == [
        ("promotion", 70),
        ("pack", 50),
    ]

    clock.advance(2 * HOUR)
    credits = await metering.wait_for("org_exp", balance=50)
    assert [(b["source"], b["remaining"]) for b in credits["buckets"]] == [("pack", 50)]
    entries = (await metering.http.get("/v1/organisations/org_exp/ledger")).json()["entries"]
    expiry = entries[0]
    assert (expiry["kind"], expiry["amount"], expiry["reason"]) == (
        "expiry",
        -70,
        "bucket_expired",
    )
    assert [b["credits"] for b in expiry["buckets"]] == [70]
    records = await read_topic(metering.bootstrap, metering.topic(CREDIT_BALANCE), at_least=1)
    announced = [orjson.loads(r.value)["data"]["balance"] for r in records if r.key == b"org_exp"]
    assert announced[-1] == 50
    await check_ledger(metering, "org_exp")


async def test_packs_survive_a_renewal_and_plan_credits_roll_over_up_to_the_cap(
    metering: MeteringHarness, db: asyncpg.Connection, clock: FrozenClock
) -> None:
    now = clock.now()
    await publish(
        metering,
        period("org_roll", 1000, now, rollover_cap=200),
        grant(
            "org_roll",
            GrantReasonV2.PACK_PURCHASE,
            500,
            "pack1",
            at=now,
            expires_at=now + 365 * 24 * HOUR,
        ),
    )
    await metering.wait_for("org_roll", balance=1500)
    await metering.publish_usage(usage_event("org_roll", 300))
    await metering.wait_for("org_roll", balance=1200)
    assert (await buckets(db, "org_roll"))["pack:pack1"] == 500

    await publish(metering, period("org_roll", 1000, now + HOUR, rollover_cap=200))
    credits = await metering.wait_for("org_roll", balance=1700)
    assert (credits["allotment"], credits["used"]) == (1200, 0)
    assert [(b["source"], b["remaining"]) for b in credits["buckets"]] == [
        ("rollover", 200),
        ("plan", 1000),
        ("pack", 500),
    ]
    entries = (await metering.http.get("/v1/organisations/org_roll/ledger")).json()["entries"]
    assert [(e["kind"], e["amount"], e["reason"]) for e in entries[:3]][::-1] == [
        ("expiry", -700, "period_ended"),
        ("grant", 200, "rollover"),
        ("grant", 1000, "renewal_reset"),
    ]
    await metering.publish_usage(usage_event("org_roll", 250))
    credits = await metering.wait_for("org_roll", balance=1450)
    assert [(b["source"], b["remaining"]) for b in credits["buckets"]] == [
        ("plan", 950),
        ("pack", 500),
    ]
    await check_ledger(metering, "org_roll")


async def test_a_refund_claws_back_what_is_left_of_the_pack_once(
    metering: MeteringHarness, clock: FrozenClock
) -> None:
    now = clock.now()
    await publish(metering, grant("org_claw", GrantReasonV2.PACK_PURCHASE, 500, "pk", at=now))
    await metering.wait_for("org_claw", balance=500)
    await metering.publish_usage(usage_event("org_claw", 450))
    await metering.wait_for("org_claw", balance=50)
    claw = grant(
        "org_claw", GrantReasonV2.REFUND_CLAWBACK, 500, "refund:pk", at=now, clawback_of="pk"
    )
    await publish(
        metering,
        claw,
        claw,
        grant(
            "org_claw", GrantReasonV2.REFUND_CLAWBACK, 10, "refund:nope", at=now, clawback_of="nope"
        ),
    )
    credits = await metering.wait_for("org_claw", balance=0)
    assert credits["buckets"] == []
    parked = await metering.parked(CREDIT_GRANT_REQUESTS)
    assert [reason for reason, _ in parked] == ["unknown_bucket"]
    entries = (await metering.http.get("/v1/organisations/org_claw/ledger")).json()["entries"]
    assert [(e["kind"], e["amount"], e["reason"]) for e in entries if e["kind"] != "debit"] == [
        ("adjustment", -50, "refund_clawback"),
        ("grant", 500, "pack_purchase"),
    ]
    await check_ledger(metering, "org_claw")


async def test_usage_beyond_every_bucket_is_debt_the_next_pack_pays_first(
    metering: MeteringHarness, db: asyncpg.Connection, clock: FrozenClock
) -> None:
    await metering.publish_usage(usage_event("org_debt", 100))
    credits = await metering.wait_for("org_debt", balance=-100)
    assert credits["debt"] == 100
    await publish(
        metering, grant("org_debt", GrantReasonV2.PACK_PURCHASE, 300, "p", at=clock.now())
    )
    credits = await metering.wait_for("org_debt", balance=200)
    assert credits["debt"] == 0
    assert [(b["granted"], b["remaining"]) for b in credits["buckets"]] == [(300, 200)]
    await check_ledger(metering, "org_debt")


async def test_a_storm_across_a_bucket_expiry_never_overspends(
    metering: MeteringHarness, db: asyncpg.Connection, clock: FrozenClock
) -> None:
    """Concurrent authorizations and usage on five organisations, each with a promotion that
    expires and a pack that does not, while the clock passes the promotion's expiry (in steps
    shorter than a hold's life, as real time does): every allowed message is paid from a live
    bucket, no wallet goes into debt, and every balance equals its ledger and its buckets."""
    organisations = [f"org_storm{n}" for n in range(5)]
    expires = clock.now() + 20 * MINUTE
    clock.set(expires - 6 * MINUTE)
    await publish(
        metering,
        *[
            command
            for o in organisations
            for command in (
                grant(o, GrantReasonV2.PROMOTION, 1000, "soon", at=clock.now(), expires_at=expires),
                grant(o, GrantReasonV2.PACK_PURCHASE, 100, "later", at=clock.now()),
            )
        ],
    )
    for o in organisations:
        await metering.wait_for(o, balance=1100)
    cost = 7
    allowed: dict[str, list[UUID]] = {o: [] for o in organisations}
    running: list = []

    async def member(organisation: str, n: int, phase: int, messages: int, run: bool) -> None:
        for i in range(messages):
            message = f"m{phase}_{n}_{i}"
            answer = await metering.http.post(
                "/v1/authorizations",
                json={
                    "organisation_id": organisation,
                    "member_id": f"member_{n}",
                    "message_id": message,
                    "estimate": cost,
                },
            )
            assert answer.status_code == 200, answer.text
            if answer.json()["decision"] == "allowed":
                event = usage_event(organisation, cost, message_id=message)
                allowed[organisation].append(event.event_id)
                if run:
                    await metering.publish_usage(event)
                else:
                    running.append(event)

    async def debited() -> bool:
        count = await db.fetchval(
            """SELECT count(*) FROM ledger
               WHERE kind = 'debit' AND organisation_id LIKE 'org_storm%'"""
        )
        return count == sum(len(v) for v in allowed.values())

    # The promotion outlives a hold taken now: it backs holds.
    await asyncio.gather(*(member(o, n, 1, 6, True) for o in organisations for n in range(4)))
    await eventually(debited, what="the first phase debited")
    # Two minutes before it expires it no longer backs holds: messages sent now are still
    # running (their usage not reported) when the clock passes the promotion's expiry.
    clock.set(expires - 2 * MINUTE)
    await asyncio.gather(*(member(o, n, 2, 5, False) for o in organisations for n in range(4)))
    clock.set(expires + timedelta(seconds=1))
    # Their usage arrives while more messages are authorized, until the pack runs out.
    await asyncio.gather(
        metering.publish_usage(*running),
        *(member(o, n, 3, 10, True) for o in organisations for n in range(4)),
    )

    async def settled() -> bool:
        swept = await db.fetchval(
            """SELECT count(*) FROM buckets WHERE organisation_id LIKE 'org_storm%'
               AND grant_key = 'soon' AND remaining > 0"""
        )
        return await debited() and swept == 0

    await eventually(settled, what="every allowed message debited, the expired bucket swept")
    for o in organisations:
        credits = (await metering.http.get(f"/v1/organisations/{o}/credits")).json()
        assert credits["debt"] == 0 and credits["balance"] >= 0, credits
        late = await db.fetchval(
            """SELECT count(*) FROM ledger_buckets a JOIN ledger l USING (entry_id)
               JOIN buckets b USING (bucket_id)
               WHERE b.organisation_id = $1 AND b.grant_key = 'soon' AND l.kind = 'debit'
                 AND l.recorded_at >= b.expires_at""",
            o,
        )
        assert late == 0
        spent = cost * len(allowed[o])
        from_promotion = await db.fetchval(
            """SELECT coalesce(-sum(a.amount), 0) FROM ledger_buckets a
               JOIN ledger l USING (entry_id) JOIN buckets b USING (bucket_id)
               WHERE b.organisation_id = $1 AND b.grant_key = 'soon' AND l.kind = 'debit'""",
            o,
        )
        assert from_promotion == 24 * cost
        assert credits["balance"] == 100 - (spent - from_promotion) < cost
        await check_ledger(metering, o)
