"""The ledger API, the append-only ledger, alerts once per crossing, and the published example
payloads applied by the real consumers."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import orjson
import pytest

from shared.clock import FrozenClock
from shared.events import CreditsExhaustedV1, CreditsLowV1, GrantReason
from shared.events.examples import example
from shared.testing import produce, read_topic
from shared.topics import AGENT_USAGE, BILLING_OPERATIONS, CREDIT_ALERTS, CREDIT_GRANT_REQUESTS
from tests.metering.conftest import MeteringHarness, grant_command, usage_event


async def test_low_and_exhausted_are_announced_once_per_crossing(metering: MeteringHarness) -> None:
    await metering.publish_grants(grant_command("org_alert", 100))
    await metering.wait_for("org_alert", balance=100)
    for credits, balance in ((70, 30), (5, 25), (5, 20), (5, 15), (15, 0), (4, -4)):
        await metering.publish_usage(usage_event("org_alert", credits))
        await metering.wait_for("org_alert", balance=balance)
    await metering.publish_grants(
        grant_command("org_alert", 50, reason=GrantReason.MANUAL_ADJUSTMENT, period_key="goodwill")
    )
    await metering.wait_for("org_alert", balance=46)
    await metering.publish_usage(usage_event("org_alert", 46))
    await metering.wait_for("org_alert", balance=0)

    records = await read_topic(metering.bootstrap, metering.topic(CREDIT_ALERTS), at_least=3)
    alerts = [
        (
            CreditsLowV1 if b"low" in dict(r.headers)["event-type"] else CreditsExhaustedV1
        ).model_validate_json(r.value)
        for r in records
    ]
    assert [(type(a).__name__, a.data.balance) for a in alerts] == [
        ("CreditsLowV1", 30),  # 70 used on the first day: at that pace, gone long before renewal
        ("CreditsExhaustedV1", 0),
        ("CreditsExhaustedV1", 0),
    ]


async def test_the_ledger_pages_newest_first(metering: MeteringHarness) -> None:
    await metering.publish_grants(grant_command("org_pages", 100))
    await metering.wait_for("org_pages", balance=100)
    await metering.publish_usage(
        *(usage_event("org_pages", n, message_id=f"m{n}") for n in range(1, 6))
    )
    await metering.wait_for("org_pages", balance=85)

    pages, before = [], None
    while True:
        params = {"limit": 2, **({"before": before} if before else {})}
        page = (await metering.http.get("/v1/organisations/org_pages/ledger", params=params)).json()
        pages.append([(e["kind"], e["amount"]) for e in page["entries"]])
        before = page["next_before"]
        if before is None:
            break

    assert pages == [
        [("debit", -5), ("debit", -4)],
        [("debit", -3), ("debit", -2)],
        [("debit", -1), ("grant", 100)],
    ]


async def test_the_ledger_is_append_only(metering: MeteringHarness, db: asyncpg.Connection) -> None:
    await metering.publish_usage(usage_event("org_locked", 3))
    await metering.wait_for("org_locked", balance=-3)
    for statement in ("UPDATE ledger SET amount = -1", "DELETE FROM ledger", "TRUNCATE ledger"):
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="append-only"):
            await db.execute(statement)
    assert await db.fetchval("SELECT amount FROM ledger WHERE organisation_id = 'org_locked'") == -3


async def test_the_published_examples_are_applied(
    metering: MeteringHarness, clock: FrozenClock
) -> None:
    clock.set(datetime(2026, 12, 1, 0, 0, 3, tzinfo=UTC))  # when the example renewal is sent
    await produce(
        metering.bootstrap,
        metering.topic(CREDIT_GRANT_REQUESTS),
        [(b"org_acme", example("credit_grant.requested.v1"))],
    )
    await metering.wait_for("org_acme", balance=20_000)
    await produce(
        metering.bootstrap,
        metering.topic(AGENT_USAGE),
        [(b"org_acme", example("agent_message.processed.v1"))],
    )
    credits = await metering.wait_for("org_acme", balance=20_000 - 37)
    assert credits["renews_at"] == "2027-01-01T00:00:00Z"


async def test_the_ledger_check_reports_a_wallet_that_differs_and_never_fixes_it(
    metering: MeteringHarness, db: asyncpg.Connection
) -> None:
    await metering.publish_grants(grant_command("org_check", 100), grant_command("org_fine", 50))
    await metering.wait_for("org_check", balance=100)
    await metering.wait_for("org_fine", balance=50)
    await metering.publish_usage(usage_event("org_check", 30))
    await metering.wait_for("org_check", balance=70)

    clean = (await metering.http.post("/v1/ledger-checks", json={})).json()
    assert clean == {"wallets": 2, "mismatches": []}

    # A ledger entry written behind the service's back (the ledger only takes inserts).
    await db.execute(
        """INSERT INTO ledger (entry_id, organisation_id, kind, amount, source_event_id,
                               occurred_at, recorded_at)
           VALUES (gen_random_uuid(), 'org_check', 'adjustment', -5, gen_random_uuid(),
                   now(), now())"""
    )
    found = (await metering.http.post("/v1/ledger-checks", json={})).json()
    one = (
        await metering.http.post("/v1/ledger-checks", json={"organisation_id": "org_fine"})
    ).json()

    assert found == {
        "wallets": 2,
        "mismatches": [
            {"organisation_id": "org_check", "balance": 70, "ledger": 65, "buckets": 70}
        ],
    }
    assert one == {"wallets": 1, "mismatches": []}
    assert (await metering.wait_for("org_check"))["balance"] == 70  # reported, not fixed
    records = await read_topic(metering.bootstrap, metering.topic(BILLING_OPERATIONS), at_least=1)
    (alert,) = [orjson.loads(r.value)["data"] for r in records]
    assert (alert["kind"], alert["reason"], alert["subject_id"]) == (
        "ledger_mismatch",
        "ledger_mismatch",
        "org_check",
    )
