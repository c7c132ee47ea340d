"""Usage events debit the ledger exactly once, against the real broker and database."""

from __future__ import annotations

from shared.events import CreditBalanceChangedV1
from shared.testing import read_topic
from shared.topics import CREDIT_BALANCE
from tests.conftest import MeteringHarness, grant_command, usage_event


async def test_every_event_published_three_times_debits_once(metering: MeteringHarness, db) -> None:
    await metering.publish_grants(grant_command("org_triple", 1_000))
    await metering.wait_for("org_triple", balance=1_000)
    events = [usage_event("org_triple", credits) for credits in (3, 5, 7, 11, 13)]

    # Three deliveries: in one batch, then again in later batches.
    await metering.publish_usage(*events, *events)
    await metering.wait_for("org_triple", balance=1_000 - 39)
    await metering.publish_usage(*events)
    marker = usage_event("org_triple", 1)
    await metering.publish_usage(marker)
    credits = await metering.wait_for("org_triple", balance=1_000 - 40)

    assert credits["used"] == 40
    assert await db.fetchval("SELECT count(*) FROM ledger WHERE kind = 'debit'") == 6
    assert (
        await db.fetchval("SELECT sum(amount) FROM ledger WHERE organisation_id = 'org_triple'")
        == 960
    )


async def test_usage_without_a_wallet_is_recorded_and_goes_negative(
    metering: MeteringHarness,
) -> None:
    await metering.publish_usage(usage_event("org_newcomer", 25), usage_event("org_newcomer", 5))

    credits = await metering.wait_for("org_newcomer", balance=-30)

    assert credits["allotment"] == 0
    assert credits["level"] == "exhausted"
    assert credits["percent_left"] == 0


async def test_balance_changes_are_published_for_dashboards(metering: MeteringHarness) -> None:
    await metering.publish_grants(grant_command("org_dash", 100))
    await metering.wait_for("org_dash", balance=100)
    await metering.publish_usage(usage_event("org_dash", 30))
    await metering.wait_for("org_dash", balance=70)

    records = await read_topic(metering.bootstrap, metering.topic(CREDIT_BALANCE), at_least=2)
    changes = [CreditBalanceChangedV1.model_validate_json(r.value) for r in records]

    assert all(r.key == b"org_dash" for r in records)
    assert [
        (c.data.balance, c.data.used, c.data.percent_left, c.data.level.value) for c in changes
    ] == [
        (100, 0, 100, "normal"),
        (70, 30, 70, "normal"),
    ]
    assert changes[0].data.revision < changes[1].data.revision
