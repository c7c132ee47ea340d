"""Usage events debit the ledger exactly once, against the real broker and database."""

from __future__ import annotations

import asyncpg

from shared.events import CreditBalanceChangedV1
from shared.testing import read_topic
from shared.topics import AGENT_USAGE, CREDIT_BALANCE
from tests.metering.conftest import MeteringHarness, grant_command, usage_event


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


async def test_a_message_is_debited_once_whatever_its_event_ids(
    metering: MeteringHarness, db: asyncpg.Connection
) -> None:
    await metering.publish_grants(grant_command("org_retrying", 100))
    await metering.wait_for("org_retrying", balance=100)
    hold = await metering.http.post(
        "/v1/authorizations",
        json={
            "organisation_id": "org_retrying",
            "member_id": "m",
            "message_id": "msg_x",
            "estimate": 10,
        },
    )
    first = usage_event("org_retrying", 7, message_id="msg_x")
    await metering.publish_usage(first)
    await metering.wait_for("org_retrying", balance=93, held=0)

    # The agent runtime retries the processed message under new event ids, later and in a batch.
    retried = usage_event("org_retrying", 9, message_id="msg_x")
    twins = [usage_event("org_retrying", n, message_id="msg_y") for n in (2, 3)]
    marker = usage_event("org_retrying", 1)
    await metering.publish_usage(retried, *twins, first)
    await metering.publish_usage(marker)
    await metering.wait_for("org_retrying", balance=90)

    parked = await metering.parked(AGENT_USAGE, at_least=2)
    assert sorted(parked) == sorted(
        [("duplicate_message", retried.to_bytes()), ("duplicate_message", twins[1].to_bytes())]
    )
    debits = await db.fetch(
        "SELECT message_id, amount FROM ledger WHERE kind = 'debit' ORDER BY seq"
    )
    assert [tuple(r.values()) for r in debits] == [
        ("msg_x", -7),
        ("msg_y", -2),
        (marker.data.message_id, -1),
    ]
    settled = await metering.http.get(f"/v1/authorizations/{hold.json()['authorization_id']}")
    assert (settled.json()["status"], settled.json()["settled_credits"]) == ("settled", 7)


async def test_a_refused_usage_event_creates_no_wallet(metering: MeteringHarness) -> None:
    first = usage_event("org_owner", 5)
    await metering.publish_usage(first)
    await metering.wait_for("org_owner", balance=-5)
    reused = usage_event("org_stranger", 5, event_id=first.event_id)

    await metering.publish_usage(reused)

    parked = await metering.parked(AGENT_USAGE, at_least=1)
    assert parked == [("event_id_conflict", reused.to_bytes())]
    assert await metering.credits("org_stranger") is None
