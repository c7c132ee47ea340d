"""Receipts for single messages and the usage drill-down (day → agent → conversation →
message), against the real database and broker: every level adds up to the ledger."""

from __future__ import annotations

import random
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
    AgentMessageProcessedV2,
)
from shared.testing import eventually
from shared.testing.plugin import Infrastructure, Isolation
from tests.metering.conftest import (
    MeteringHarness,
    grant_command,
    module_metering,
    raw_usage,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

NOW = datetime(2026, 12, 10, 12, tzinfo=UTC)
SINCE = datetime(2026, 12, 1, tzinfo=UTC)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def metering(
    infrastructure: Infrastructure, module_isolation: Isolation
) -> AsyncIterator[MeteringHarness]:
    async with module_metering(infrastructure, module_isolation, FrozenClock(NOW)) as harness:
        yield harness


@pytest.fixture(scope="module")
def db(module_db: asyncpg.Connection) -> asyncpg.Connection:
    return module_db


def usage(
    organisation: str,
    at: datetime,
    agent: str,
    conversation: str,
    message: str,
    *,
    credits: int | None = None,
    tokens: tuple[int, int, int] = (50_000, 8_000, 1),
) -> AgentMessageProcessedV1 | AgentMessageProcessedV2:
    ids = {
        "member_id": "member_1",
        "agent_id": agent,
        "conversation_id": conversation,
        "message_id": message,
    }
    if credits is not None:
        return AgentMessageProcessedV1.new(
            organisation_id=organisation,
            producer="agent-runtime",
            occurred_at=at,
            data=AgentMessageProcessed(**ids, credits=credits),
        )
    return raw_usage(
        organisation,
        at,
        tokens=tokens,
        agent=agent,
        conversation=conversation,
        message=message,
    )


async def test_a_receipt_shows_the_reservation_the_priced_debit_its_buckets_and_the_release(
    metering: MeteringHarness,
) -> None:
    org = "org_receipt"
    await metering.publish_grants(grant_command(org, 500))
    await metering.wait_for(org, balance=500)
    ask = {"organisation_id": org, "member_id": "member_1", "agent_id": "agent_1"}
    held = await metering.http.post(
        "/v1/authorizations", json=ask | {"message_id": "m_done", "estimate": 200}
    )
    assert held.json()["decision"] == "allowed"
    await metering.publish_usage(usage(org, NOW, "agent_1", "conv_1", "m_done"))
    price = RateCard.load().price(RawUsage("claude-sonnet", 50_000, 8_000, 1), NOW)
    await metering.wait_for(org, balance=500 - price.credits, held=0)
    found = (await metering.http.get(f"/v1/organisations/{org}/messages/m_done/receipt")).json()
    assert found["reserved"]["estimate"] == 200 and found["reserved"]["status"] == "settled"
    assert found["settled"]["credits"] == price.credits == 60 + 48 + 1
    assert found["settled"]["priced"] | {"line": None} == {
        "version": "2026-12",
        "model": "claude-sonnet",
        "input_tokens": 50_000,
        "output_tokens": 8_000,
        "tool_calls": 1,
        "line": None,
    }
    assert found["settled"]["priced"]["line"]["output_per_million"] == 6000
    assert [(b["source"], b["credits"]) for b in found["buckets"]] == [("plan", price.credits)]
    assert found["released"] == 200 - price.credits
    hold = await metering.http.post(
        "/v1/authorizations", json=ask | {"message_id": "m_unsent", "estimate": 30}
    )
    await metering.http.post(f"/v1/authorizations/{hold.json()['authorization_id']}/release")
    unsent = (await metering.http.get(f"/v1/organisations/{org}/messages/m_unsent/receipt")).json()
    assert (unsent["settled"], unsent["released"], unsent["buckets"]) == (None, 30, [])
    missing = await metering.http.get(f"/v1/organisations/{org}/messages/m_never/receipt")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


async def test_the_drill_down_adds_up_to_the_ledger_at_every_level(
    metering: MeteringHarness, db: asyncpg.Connection
) -> None:
    org = "org_drill"
    await metering.publish_grants(grant_command(org, 100_000))
    await metering.wait_for(org, balance=100_000)
    rng = random.Random(21)
    events = [
        usage(
            org,
            SINCE + timedelta(days=rng.randint(0, 3), seconds=rng.randint(0, 86_399)),
            rng.choice(["agent_a", "agent_b", "agent_c"]),
            rng.choice(["conv_1", "conv_2", "conv_3", "conv_4"]),
            f"msg_{uuid4().hex[:10]}",
            credits=rng.choice([None, rng.randint(1, 90)]),
            tokens=(rng.randint(0, 200_000), rng.randint(0, 20_000), rng.randint(0, 4)),
        )
        for _ in range(150)
    ]
    await metering.publish_usage(*events)

    async def all_debited() -> bool:
        n = await db.fetchval(
            "SELECT count(*) FROM ledger WHERE organisation_id = $1 AND kind = 'debit'", org
        )
        return n == 150

    await eventually(all_debited, what="every message debited")
    ledger = await db.fetchval(
        "SELECT -sum(amount) FROM ledger WHERE organisation_id = $1 AND kind = 'debit'", org
    )

    async def level(**given: str) -> dict:
        params = {"since": SINCE.isoformat(), "until": NOW.isoformat(), **given}
        answer = await metering.http.get(f"/v1/organisations/{org}/usage/breakdown", params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    days = await level()
    assert days["level"] == "day" and days["total"] == ledger and days["messages"] == 150
    assert sum(r["credits"] for r in days["rows"]) == ledger
    seen = 0
    for d in days["rows"]:
        agents = await level(day=d["key"])
        assert agents["total"] == d["credits"] == sum(r["credits"] for r in agents["rows"])
        for a in agents["rows"]:
            conversations = await level(day=d["key"], agent_id=a["key"])
            assert conversations["total"] == a["credits"]
            assert sum(r["credits"] for r in conversations["rows"]) == a["credits"]
            for c in conversations["rows"]:
                messages = await level(day=d["key"], agent_id=a["key"], conversation_id=c["key"])
                assert messages["level"] == "message"
                assert sum(r["credits"] for r in messages["rows"]) == c["credits"]
                for m in messages["rows"]:
                    seen += 1
                    receipt = await metering.http.get(
                        f"/v1/organisations/{org}/messages/{m['key']}/receipt"
                    )
                    assert receipt.json()["settled"]["credits"] == m["credits"]
    assert seen == 150
    refused = await metering.http.get(
        f"/v1/organisations/{org}/usage/breakdown",
        params={"since": SINCE.isoformat(), "until": NOW.isoformat(), "agent_id": "agent_a"},
    )
    assert (refused.status_code, refused.json()["type"].rsplit("/", 1)[-1]) == (
        400,
        "invalid-drill-down",
    )
