"""Usage priced by metering with the rate card, side by side with usage that carries its
credits, against the real broker and database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import asyncpg
import pytest
import pytest_asyncio

from services.metering.domain.pricing import RateCard, RawUsage
from shared.clock import FrozenClock
from shared.events import (
    AgentMessageProcessed,
    AgentMessageProcessedV1,
)
from shared.testing import eventually
from shared.testing.plugin import Infrastructure, Isolation
from shared.topics import AGENT_USAGE
from tests.metering.conftest import (
    MeteringHarness,
    grant_command,
    module_metering,
    raw_usage,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

NOVEMBER = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
DECEMBER = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
CARD = RateCard.load()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def metering(
    infrastructure: Infrastructure, module_isolation: Isolation
) -> AsyncIterator[MeteringHarness]:
    async with module_metering(
        infrastructure, module_isolation, FrozenClock(DECEMBER + timedelta(hours=1))
    ) as harness:
        yield harness


@pytest.fixture(scope="module")
def db(module_db: asyncpg.Connection) -> asyncpg.Connection:
    return module_db


def carried(organisation: str, at: datetime, credits: int) -> AgentMessageProcessedV1:
    return AgentMessageProcessedV1.new(
        organisation_id=organisation,
        producer="agent-runtime",
        occurred_at=at,
        data=AgentMessageProcessed(
            member_id="member_1",
            agent_id="agent_1",
            conversation_id="conv_1",
            message_id=f"msg_{uuid4().hex[:8]}",
            credits=credits,
        ),
    )


async def test_old_and_new_usage_events_are_debited_side_by_side(
    metering: MeteringHarness, db: asyncpg.Connection
) -> None:
    """Version 1 debits the credits it carries; version 2 is priced with the rate card in force
    when it occurred (a price change at midnight applies to what happened after it, whenever
    it is processed), and its entry names the version and what was priced. A version 1 event
    carrying the same price debits the same."""
    org = "org_rates"
    await metering.publish_grants(grant_command(org, 10_000))
    await metering.wait_for(org, balance=10_000)
    usage = RawUsage("claude-sonnet", 120_000, 30_000, 3)
    old_price = CARD.price(usage, NOVEMBER).credits
    new_price = CARD.price(usage, DECEMBER).credits
    assert (old_price, new_price) == (180 + 225 + 3, 144 + 180 + 3)
    before, after = raw_usage(org, NOVEMBER), raw_usage(org, DECEMBER)
    events = [carried(org, NOVEMBER, 37), after, before, carried(org, DECEMBER, old_price)]
    await metering.publish_usage(*events, before)  # a redelivery prices the same: ignored
    spent = 37 + new_price + old_price + old_price
    await metering.wait_for(org, balance=10_000 - spent)
    rows = await db.fetch(
        """SELECT source_event_id, -amount AS credits, rate_card, model, input_tokens,
                  output_tokens, tool_calls
           FROM ledger WHERE organisation_id = $1 AND kind = 'debit' ORDER BY seq""",
        org,
    )
    assert [tuple(r.values()) for r in rows] == [
        (events[0].event_id, 37, None, None, None, None, None),
        (after.event_id, new_price, "2026-12", "claude-sonnet", 120_000, 30_000, 3),
        (before.event_id, old_price, "2026-01", "claude-sonnet", 120_000, 30_000, 3),
        (events[3].event_id, old_price, None, None, None, None, None),
    ]
    page = (await metering.http.get(f"/v1/organisations/{org}/ledger")).json()
    newest_priced = next(e for e in page["entries"] if e["rate_card"])
    assert newest_priced["model"] == "claude-sonnet" and newest_priced["rate_card"] == "2026-01"
    answer = await metering.http.post("/v1/ledger-checks", json={"organisation_id": org})
    assert answer.json()["mismatches"] == []


async def test_usage_the_rate_card_cannot_price_is_parked_with_its_reason(
    metering: MeteringHarness, db: asyncpg.Connection
) -> None:
    org = "org_unpriced"
    await metering.publish_grants(grant_command(org, 1_000))
    await metering.wait_for(org, balance=1_000)
    fine = raw_usage(org, DECEMBER, model="claude-haiku", tokens=(1000, 1000, 0))
    await metering.publish_usage(
        raw_usage(org, DECEMBER, model="gpt-unknown"),
        raw_usage(org, datetime(2025, 6, 1, tzinfo=UTC)),
        raw_usage(org, DECEMBER, model="claude-opus", tokens=(0, 10**9, 0)),
        fine,
    )
    price = CARD.price(RawUsage("claude-haiku", 1000, 1000, 0), DECEMBER).credits
    assert price == 3  # 0.4 + 2.0 credits of tokens, rounded up once
    await metering.wait_for(org, balance=1_000 - price)
    parked = await metering.parked(AGENT_USAGE, at_least=3)
    reasons = [reason for reason, _ in parked]
    assert reasons == ["unpriced_usage", "unpriced_usage", "invalid_amount"]

    async def one_debit() -> bool:
        return (
            await db.fetchval(
                "SELECT count(*) FROM ledger WHERE organisation_id = $1 AND kind = 'debit'", org
            )
            == 1
        )

    await eventually(one_debit, what="only the priceable usage debited")


async def test_an_authorization_may_take_its_estimate_from_the_rate_card(
    metering: MeteringHarness,
) -> None:
    org = "org_rates_estimate"
    await metering.publish_grants(grant_command(org, 1_000))
    await metering.wait_for(org, balance=1_000)
    ask = {"organisation_id": org, "member_id": "member_1", "model": "claude-opus"}
    answer = await metering.http.post("/v1/authorizations", json=ask | {"message_id": "m1"})
    assert answer.json()["estimate"] == CARD.estimate("claude-opus", DECEMBER) == 30
    told = ask | {"message_id": "m2", "estimate": 3}
    assert (await metering.http.post("/v1/authorizations", json=told)).json()["estimate"] == 3
    card = (await metering.http.get("/v1/rate-card")).json()
    assert card["in_force"] == "2026-12" and len(card["versions"]) == 2
